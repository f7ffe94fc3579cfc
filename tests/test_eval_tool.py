"""tools/eval.py run as a subprocess on a tiny VOC devkit folder and a tiny COCO json."""

import json
import os

import pytest
from conftest import run_tool, tiny_config
from pycocotools import coco as coco_api
from pycocotools import cocoeval

from scratchdet_tf.data import annotations
from scratchdet_tf.evaluation import coco_metric, devkit


def _run(*args):
    return run_tool("eval", *args, timeout=120)


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
    dog: TP FP TP of 2 -> 11-point 28/33, area 5/6 (test_voc_metric's duplicate case).
    cat: ignored, TP of 1 -> 1 and 1.  The other 18 classes have no ground truth: null, out of the mean.
    """
    devkit_dir, results = tmp_path / "VOCdevkit" / "VOC2007", tmp_path / "results"
    a, b, c, hard = [1, 1, 10, 10], [31, 1, 40, 10], [61, 1, 70, 10], [100, 100, 150, 150]
    _write(str(devkit_dir / "Annotations" / "000001.xml"), _xml([("dog", a, 0), ("dog", b, 0), ("cat", hard, 1)]))
    _write(str(devkit_dir / "Annotations" / "000002.xml"), _xml([("cat", c, 0)]))
    _write(str(devkit_dir / "ImageSets" / "Main" / "test.txt"), "000001\n000002\n")
    for name in annotations.VOC_CLASS_NAMES:
        _write(devkit.comp4_path(str(results), "test", name), "")
    _write(devkit.comp4_path(str(results), "test", "dog"),
           "000001 0.9 1 1 10 10\n000001 0.8 1 1 10 10\n000001 0.7 31 1 40 10\n")
    _write(devkit.comp4_path(str(results), "test", "cat"), "000001 0.95 100 100 150 150\n000002 0.6 61 1 70 10\n")
    return str(devkit_dir), str(results)


def test_voc_results_last_line_is_the_metrics_json(voc_folders):
    devkit_dir, results = voc_folders
    proc = _run(f"--voc_devkit={devkit_dir}", "--image_set=test", f"--voc_results={results}", "--use_07_metric")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    metrics = json.loads(lines[-1])
    assert metrics["per_class"]["dog"]["ap_07"] == pytest.approx(28 / 33, abs=1e-12)
    assert metrics["per_class"]["dog"]["ap_area"] == pytest.approx(5 / 6, abs=1e-12)
    assert metrics["per_class"]["cat"]["ap_area"] == 1.0
    assert metrics["per_class"]["bus"] == {"ap_07": None, "ap_area": None, "num_gt": 0}
    assert metrics["mAP_07"] == pytest.approx((28 / 33 + 1) / 2, abs=1e-12)
    assert metrics["mAP_area"] == pytest.approx((5 / 6 + 1) / 2, abs=1e-12)
    at = lines.index(next(line for line in lines if line.startswith("Method")))
    assert lines[at].split()[:4] == ["Method", "mAP", "aeroplane", "bicycle"]
    assert lines[at + 1].split()[:2] == ["results", f"{100 * (28 / 33 + 1) / 2:.1f}"]  # the 11-point table
    table = [line.split() for line in lines[at + 2:-1]]  # then one row per class, and the mean
    assert len(table) == 1 + len(annotations.VOC_CLASS_NAMES) + 1
    assert table[1 + annotations.VOC_CLASS_NAMES.index("dog")] == ["dog", "2", f"{2800 / 33:.1f}", f"{500 / 6:.1f}"]


def test_voc_errors_name_the_file(voc_folders, tmp_path):
    devkit_dir, results = voc_folders
    proc = _run(f"--voc_devkit={devkit_dir}", f"--voc_results={tmp_path / 'nowhere'}")
    assert proc.returncode != 0 and "nowhere" in proc.stderr
    bad = devkit.comp4_path(results, "test", "cat")
    _write(bad, "000001 0.95 100 100 150\n")
    proc = _run(f"--voc_devkit={devkit_dir}", f"--voc_results={results}")
    assert proc.returncode != 0 and f"{bad}:1:" in proc.stderr
    proc = _run(f"--voc_devkit={devkit_dir}", "--image_set=val", f"--voc_results={results}")
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
    lines = proc.stdout.strip().splitlines()
    stats = json.loads(lines[-1])
    assert list(stats) == [*coco_metric.COCO_STAT_NAMES, "per_class"]
    assert [stats[name] for name in coco_metric.COCO_STAT_NAMES] == coco_eval.stats.tolist()
    assert list(stats["per_class"]) == ["a", "b"] and stats["per_class"]["b"]["num_gt"] == 1
    assert [line.split()[0] for line in lines[-5:-1]] == ["class", "a", "b", "mean"]

    proc = _run(f"--coco_gt={tmp_path / 'missing.json'}", f"--coco_results={res_path}")
    assert proc.returncode != 0 and "missing.json" in proc.stderr


def test_no_mode_is_a_usage_error():
    proc = _run()
    assert proc.returncode != 0 and "--voc_results" in proc.stderr


@pytest.fixture(scope="module")
def model_dir(make_shapes, tmp_path_factory):
    """A training run folder: config.json of a tiny model on a 3-image shapes split, checkpoints 1 and 2."""
    import tensorflow as tf

    from scratchdet_tf import run_dir
    from scratchdet_tf.models import ssd

    root = tmp_path_factory.mktemp("run")
    source = f"shapes:{make_shapes(0, 3)}:val"
    cfg = tiny_config(data__train_source=source, data__val_source=source, train__max_steps=2, eval__batch_size=2)
    run = str(root / "model")
    run_dir.write_config(cfg, run)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=ssd.build_model(cfg.model, cfg.anchors)), run, 2)
    manager.save(checkpoint_number=1)
    manager.save(checkpoint_number=2)
    return run


def test_model_dir_evaluates_a_checkpoint_with_the_run_config_and_overrides(model_dir):
    proc = _run(f"--model_dir={model_dir}", f"--checkpoint={model_dir}/ckpt-1", "--eval.num_images=2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    metrics = json.loads(lines[-1])
    assert set(metrics) == {"mAP_07", "mAP_area", "per_class", "step", "num_images", "plots", "per_class_table"}
    assert metrics["step"] == 1 and metrics["num_images"] == 2  # the override; the rest is config.json's model
    assert lines[-10].split() == ["Method", "mAP", "circle", "square", "triangle", "cross", "ring"]
    assert [line.split()[0] for line in lines[-8:-1]] == ["class", "circle", "square", "triangle", "cross", "ring",
                                                          "mean"]
    eval_dir = os.path.join(model_dir, "eval")
    with open(os.path.join(eval_dir, "metrics.json")) as f:
        assert json.load(f)["step"] == 1
    assert metrics["plots"] == [os.path.join(eval_dir, "pr_curves.png"), os.path.join(eval_dir, "confusion_matrix.png")]
    assert all(os.path.getsize(path) > 10_000 for path in metrics["plots"])
    assert metrics["per_class_table"] == os.path.join(eval_dir, "per_class.txt")


def test_continuous_evaluates_the_newest_checkpoint_and_stops_at_max_steps(model_dir):
    proc = _run(f"--model_dir={model_dir}", "--continuous", "--timeout=20")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["step"] == 2 and metrics["num_images"] == 3
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(model_dir, "eval")))


def test_model_errors_name_the_path(model_dir, tmp_path):
    proc = _run(f"--model_dir={tmp_path / 'missing_run'}")
    assert proc.returncode == 1 and "missing_run" in proc.stderr
    empty = tmp_path / "no_checkpoints"
    empty.mkdir()
    with open(os.path.join(model_dir, "config.json")) as f:
        _write(str(empty / "config.json"), f.read())
    proc = _run(f"--model_dir={empty}")
    assert proc.returncode == 1 and "no checkpoint" in proc.stderr and "no_checkpoints" in proc.stderr
    proc = _run(f"--model_dir={model_dir}", f"--checkpoint={model_dir}/ckpt-99")
    assert proc.returncode == 1 and "ckpt-99" in proc.stderr


def test_saved_model_is_evaluated_through_its_serving_signature(model_dir, tmp_path):
    import tensorflow as tf

    class Exported(tf.Module):  # the export contract: one fixed "circle" box on every image
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        def serve(self, images):
            b = tf.shape(images)[0]
            return {"detection_boxes": tf.tile([[[0.1, 0.1, 0.9, 0.9]]], [b, 1, 1]),
                    "detection_scores": tf.fill([b, 1], 0.5), "detection_classes": tf.fill([b, 1], 1.0),
                    "num_detections": tf.fill([b], 1.0)}

    module = Exported()
    saved = str(tmp_path / "saved_model")
    tf.saved_model.save(module, saved, signatures={"serving_default": module.serve})
    with open(os.path.join(model_dir, "config.json")) as f:
        source = json.load(f)["data"]["val_source"]
    proc = _run(f"--saved_model={saved}", f"--source={source}", "--eval.metric=voc12")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert metrics["num_images"] == 3 and "step" not in metrics
    assert all(v["ap_07"] in (0.0, None) for name, v in metrics["per_class"].items() if name != "circle")
    assert os.path.isfile(saved + "_eval/metrics.json")
