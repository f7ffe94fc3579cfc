"""tools/eval.py run as a subprocess on a tiny VOC devkit folder and a tiny COCO json."""

import json
import os
import subprocess
import sys

import pytest
from pycocotools import coco as coco_api
from pycocotools import cocoeval

from scratchdet_tf import evaluation, voc_io

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "eval.py")


def _run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=120)


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _xml(objects):
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    return f"<annotation><size><width>500</width><height>375</height></size>{objs}</annotation>"


@pytest.fixture
def voc_folders(tmp_path):
    """Image 000001: dogs A and B, a difficult cat. Image 000002: cat C.

    Detections: dog on A (.9), again on A (.8, duplicate), on B (.7); cat on the difficult cat (.95), on C (.6).
    dog: TP FP TP of 2 -> 11-point 28/33, area 5/6 (test_evaluation's duplicate case).
    cat: ignored, TP of 1 -> 1 and 1.  The other 18 classes have no ground truth: null, out of the mean.
    """
    devkit, results = tmp_path / "VOCdevkit" / "VOC2007", tmp_path / "results"
    a, b, c, hard = [1, 1, 10, 10], [31, 1, 40, 10], [61, 1, 70, 10], [100, 100, 150, 150]
    _write(str(devkit / "Annotations" / "000001.xml"), _xml([("dog", a, 0), ("dog", b, 0), ("cat", hard, 1)]))
    _write(str(devkit / "Annotations" / "000002.xml"), _xml([("cat", c, 0)]))
    _write(str(devkit / "ImageSets" / "Main" / "test.txt"), "000001\n000002\n")
    for name in voc_io.VOC_CLASS_NAMES:
        _write(voc_io.comp4_path(str(results), "test", name), "")
    _write(voc_io.comp4_path(str(results), "test", "dog"),
           "000001 0.9 1 1 10 10\n000001 0.8 1 1 10 10\n000001 0.7 31 1 40 10\n")
    _write(voc_io.comp4_path(str(results), "test", "cat"), "000001 0.95 100 100 150 150\n000002 0.6 61 1 70 10\n")
    return str(devkit), str(results)


def test_voc_results_last_line_is_the_metrics_json(voc_folders):
    devkit, results = voc_folders
    proc = _run(f"--voc_devkit={devkit}", "--image_set=test", f"--voc_results={results}", "--use_07_metric")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    metrics = json.loads(lines[-1])
    assert metrics["per_class"]["dog"]["ap_07"] == pytest.approx(28 / 33, abs=1e-12)
    assert metrics["per_class"]["dog"]["ap_area"] == pytest.approx(5 / 6, abs=1e-12)
    assert metrics["per_class"]["cat"]["ap_area"] == 1.0
    assert metrics["per_class"]["bus"] == {"ap_07": None, "ap_area": None, "num_gt": 0}
    assert metrics["mAP_07"] == pytest.approx((28 / 33 + 1) / 2, abs=1e-12)
    assert metrics["mAP_area"] == pytest.approx((5 / 6 + 1) / 2, abs=1e-12)
    assert lines[-3].split()[:4] == ["Method", "mAP", "aeroplane", "bicycle"]
    assert lines[-2].split()[:2] == ["results", f"{100 * (28 / 33 + 1) / 2:.1f}"]  # the 11-point table


def test_voc_errors_name_the_file(voc_folders, tmp_path):
    devkit, results = voc_folders
    proc = _run(f"--voc_devkit={devkit}", f"--voc_results={tmp_path / 'nowhere'}")
    assert proc.returncode != 0 and "nowhere" in proc.stderr
    bad = voc_io.comp4_path(results, "test", "cat")
    _write(bad, "000001 0.95 100 100 150\n")
    proc = _run(f"--voc_devkit={devkit}", f"--voc_results={results}")
    assert proc.returncode != 0 and f"{bad}:1:" in proc.stderr
    proc = _run(f"--voc_devkit={devkit}", "--image_set=val", f"--voc_results={results}")
    assert proc.returncode != 0 and "val.txt" in proc.stderr


def test_coco_results_last_line_equals_pycocotools(tmp_path):
    instances = {"images": [{"id": 1, "height": 100, "width": 200}, {"id": 2, "height": 100, "width": 100}],
                 "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}],
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 40], "area": 2000,
                                  "iscrowd": 0},
                                 {"id": 2, "image_id": 1, "category_id": 9, "bbox": [100, 20, 20, 20], "area": 400,
                                  "iscrowd": 0},
                                 {"id": 3, "image_id": 2, "category_id": 5, "bbox": [0, 0, 99, 99], "area": 9801,
                                  "iscrowd": 0}]}
    results = [{"image_id": 1, "category_id": 5, "bbox": [12, 10, 50, 40], "score": 0.9},
               {"image_id": 1, "category_id": 9, "bbox": [90, 20, 20, 20], "score": 0.8},
               {"image_id": 2, "category_id": 5, "bbox": [0, 0, 90, 99], "score": 0.7},
               {"image_id": 2, "category_id": 9, "bbox": [0, 0, 10, 10], "score": 0.6}]
    gt_path, res_path = str(tmp_path / "instances.json"), str(tmp_path / "results.json")
    _write(gt_path, json.dumps(instances))
    _write(res_path, json.dumps(results))
    coco_gt = coco_api.COCO(gt_path)
    coco_eval = cocoeval.COCOeval(coco_gt, coco_gt.loadRes(res_path), "bbox")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()

    proc = _run(f"--coco_gt={gt_path}", f"--coco_results={res_path}")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(stats) == list(evaluation.COCO_STAT_NAMES)
    assert list(stats.values()) == coco_eval.stats.tolist()

    proc = _run(f"--coco_gt={tmp_path / 'missing.json'}", f"--coco_results={res_path}")
    assert proc.returncode != 0 and "missing.json" in proc.stderr


def test_no_mode_is_a_usage_error():
    proc = _run()
    assert proc.returncode != 0 and "--voc_results" in proc.stderr
