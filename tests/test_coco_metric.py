"""coco_metric: COCO stats equal pycocotools' on the same json; results files; bad files are named."""

import json

import numpy as np
import pytest
from pycocotools import coco as coco_api
from pycocotools import cocoeval

from scratchdet_tf.evaluation import coco_metric


def _coco_case(tmp_path):
    """Images 256x128 and 128x128 (exact in float32), category ids 1, 3, 7, small/medium/large and crowd boxes."""
    rng = np.random.default_rng(0)
    images = [{"id": 11, "height": 128, "width": 256}, {"id": 22, "height": 128, "width": 128}]
    anns = []
    for image in images:
        for k in range(12):
            w, h = (int(v) for v in rng.choice([8, 16, 40, 64, 100], 2))
            x, y = int(rng.integers(0, image["width"] - w)), int(rng.integers(0, image["height"] - h))
            anns.append({"id": len(anns) + 1, "image_id": image["id"], "category_id": int(rng.choice([1, 3, 7])),
                         "bbox": [x, y, w, h], "area": float(w * h) * 0.9, "iscrowd": int(k == 0)})
    instances = {"images": images, "annotations": anns,
                 "categories": [{"id": i, "name": f"c{i}"} for i in (1, 3, 7)]}
    results = []
    for ann in anns:
        for shift in (0, 2, 6):
            x, y, w, h = ann["bbox"]
            results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                            "bbox": [x + shift, y + shift // 2, w, h + shift], "score": float(rng.random())})
    gt_path, res_path = str(tmp_path / "instances.json"), str(tmp_path / "results.json")
    with open(gt_path, "w") as f:
        json.dump(instances, f)
    with open(res_path, "w") as f:
        json.dump(results, f)
    return instances, results, gt_path, res_path


def _pycocotools_stats(gt_path, res_path):
    coco_gt = coco_api.COCO(gt_path)
    coco_eval = cocoeval.COCOeval(coco_gt, coco_gt.loadRes(res_path), "bbox")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return dict(zip(coco_metric.COCO_STAT_NAMES, coco_eval.stats.tolist()))


def _add_coco_results(evaluator, instances, results, with_gt):
    sizes = {image["id"]: (image["height"], image["width"]) for image in instances["images"]}
    label_of = {1: 0, 3: 1, 7: 2}

    def norm(xywh, size):
        x, y, w, h = np.asarray(xywh, np.float64).reshape(-1, 4).T
        return np.stack([y / size[0], x / size[1], (y + h) / size[0], (x + w) / size[1]], 1).astype(np.float32)

    for image_id, size in sizes.items():
        mine = [r for r in results if r["image_id"] == image_id]
        gt = [a for a in instances["annotations"] if a["image_id"] == image_id]
        kwargs = {"gt_boxes": norm([a["bbox"] for a in gt], size),
                  "gt_labels": [label_of[a["category_id"]] for a in gt]} if with_gt else {}
        evaluator.add(image_id, norm([r["bbox"] for r in mine], size), [r["score"] for r in mine],
                      [label_of[r["category_id"]] for r in mine], size, **kwargs)


def test_coco_stats_equal_pycocotools_on_the_same_json(tmp_path):
    instances, results, gt_path, res_path = _coco_case(tmp_path)
    expected = _pycocotools_stats(gt_path, res_path)
    assert expected["AP"] > 0.1 and expected["APs"] != expected["APl"]  # a case that exercises the ranges
    assert coco_metric.coco_evaluate_json(gt_path, res_path) == expected

    evaluator = coco_metric.CocoEvaluator(instances_json=gt_path)  # category ids 1, 3, 7 -> labels 0, 1, 2
    _add_coco_results(evaluator, instances, results, with_gt=False)
    assert evaluator.result() == expected
    out = coco_metric.write_coco_results(str(tmp_path / "out" / "mine.json"), evaluator.records)
    assert _pycocotools_stats(gt_path, out) == expected


def test_coco_evaluator_with_ground_truth_from_arrays(tmp_path):
    instances, results, _, res_path = _coco_case(tmp_path)
    for ann in instances["annotations"]:  # what in-memory ground truth means: box area, no crowd
        ann["area"], ann["iscrowd"] = float(ann["bbox"][2] * ann["bbox"][3]), 0
    gt_path = str(tmp_path / "plain.json")
    with open(gt_path, "w") as f:
        json.dump(instances, f)
    evaluator = coco_metric.CocoEvaluator(category_ids=[1, 3, 7])
    _add_coco_results(evaluator, instances, results, with_gt=True)
    assert evaluator.result() == _pycocotools_stats(gt_path, res_path)


def test_coco_evaluator_without_ground_truth_only_collects_records(tmp_path):
    evaluator = coco_metric.CocoEvaluator(category_ids=[1, 3, 7])  # test-dev: no annotations
    evaluator.add(np.int64(5), [[0.5, 0.25, 1.0, 0.75]], [0.9], [2], (100, 200))
    assert evaluator.records == [{"image_id": 5, "category_id": 7, "bbox": [50.0, 50.0, 100.0, 50.0], "score": 0.9}]
    path = coco_metric.write_coco_results(str(tmp_path / "detections_test-dev2017_ours_results.json"),
                                          evaluator.records)
    with open(path) as f:
        assert json.load(f) == evaluator.records
    with pytest.raises(ValueError, match="without gt_boxes"):
        evaluator.result()
    with pytest.raises(ValueError, match=r"labels must be in 0..2, got \[3\]"):
        evaluator.add(6, [[0, 0, 1, 1]], [0.9], [3], (100, 200))


def test_coco_without_detections_scores_zero(tmp_path):
    _, _, gt_path, res_path = _coco_case(tmp_path)
    with open(res_path, "w") as f:
        json.dump([], f)
    stats = coco_metric.coco_evaluate_json(gt_path, res_path)
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0


def test_coco_bad_files_are_named(tmp_path):
    _, _, gt_path, res_path = _coco_case(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        coco_metric.coco_evaluate_json(gt_path, str(tmp_path / "nope.json"))
    with open(res_path, "w") as f:
        f.write("[{")
    with pytest.raises(ValueError, match="results.json: not valid JSON"):
        coco_metric.coco_evaluate_json(gt_path, res_path)
    with open(res_path, "w") as f:
        json.dump([{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}], f)
    with pytest.raises(ValueError, match="image_id 99"):
        coco_metric.coco_evaluate_json(gt_path, res_path)


def test_normalized_to_coco_xywh():
    xywh = coco_metric.normalized_to_coco_xywh([[0.25, 0.5, 0.75, 1.0]], (100, 200))
    np.testing.assert_array_equal(xywh, [[100.0, 25.0, 100.0, 50.0]])


def _pycocotools_category_ap(gt_path, res_path, category_id):
    """pycocotools' own AP, AP50, AP75 of one category: the official summary with params.catIds = [k]."""
    coco_gt = coco_api.COCO(gt_path)
    coco_eval = cocoeval.COCOeval(coco_gt, coco_gt.loadRes(res_path), "bbox")
    coco_eval.params.catIds = [category_id]
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return {"AP": coco_eval.stats[0], "AP50": coco_eval.stats[1], "AP75": coco_eval.stats[2]}


def test_per_class_ap_equals_pycocotools_restricted_to_the_category(tmp_path):
    instances, results, gt_path, res_path = _coco_case(tmp_path)
    evaluator = coco_metric.CocoEvaluator(instances_json=gt_path, class_names=["one", "three", "seven"])
    _add_coco_results(evaluator, instances, results, with_gt=False)
    result = evaluator.result()
    assert list(result["per_class"]) == ["one", "three", "seven"]
    for name, category_id in (("one", 1), ("three", 3), ("seven", 7)):
        expected = _pycocotools_category_ap(gt_path, res_path, category_id)
        got = result["per_class"][name]
        for key in ("AP", "AP50", "AP75"):
            assert got[key] == pytest.approx(expected[key], abs=1e-12), (name, key)
        assert got["num_gt"] == sum(1 for a in instances["annotations"]
                                    if a["category_id"] == category_id and not a["iscrowd"])
    assert len({v["AP"] for v in result["per_class"].values()}) == 3  # a case where the classes differ
    # The overall AP averages the classes (each has T x R valid entries).
    assert np.mean([v["AP"] for v in result["per_class"].values()]) == pytest.approx(result["AP"], abs=1e-12)
    json_result = coco_metric.coco_evaluate_json(gt_path, res_path, per_class=True)
    assert list(json_result["per_class"]) == ["c1", "c3", "c7"]  # the instances file's names
    assert [v["AP"] for v in json_result["per_class"].values()] == [v["AP"] for v in result["per_class"].values()]


def test_single_class_per_class_ap_is_the_overall_ap(tmp_path):
    instances, results, _, _ = _coco_case(tmp_path)
    keep = [a for a in instances["annotations"] if a["category_id"] == 3]
    evaluator = coco_metric.CocoEvaluator(category_ids=[3], class_names=["only"])
    sizes = {image["id"]: (image["height"], image["width"]) for image in instances["images"]}
    for image_id, (h, w) in sizes.items():
        gt = [a["bbox"] for a in keep if a["image_id"] == image_id]
        det = [r for r in results if r["image_id"] == image_id and r["category_id"] == 3]
        to_yxyx = [[y / h, x / w, (y + bh) / h, (x + bw) / w] for x, y, bw, bh in gt + [r["bbox"] for r in det]]
        evaluator.add(image_id, to_yxyx[len(gt):], [r["score"] for r in det], [0] * len(det), (h, w),
                      gt_boxes=to_yxyx[:len(gt)], gt_labels=[0] * len(gt))
    result = evaluator.result()
    assert result["AP"] > 0.1
    only = result["per_class"]["only"]
    assert (only["AP"], only["AP50"], only["AP75"]) == pytest.approx((result["AP"], result["AP50"], result["AP75"]),
                                                                     abs=1e-12)
    assert only["num_gt"] == len(keep)


def test_per_class_without_ground_truth_is_nan(tmp_path):
    evaluator = coco_metric.CocoEvaluator(category_ids=[1, 2], class_names=["a", "b"])
    evaluator.add(1, [[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]], [0.9, 0.8], [0, 1], (100, 100),
                  gt_boxes=[[0.1, 0.1, 0.5, 0.5]], gt_labels=[0])
    per_class = evaluator.result()["per_class"]
    assert per_class["a"] == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "num_gt": 1}, abs=1e-12)
    assert np.isnan(per_class["b"]["AP"]) and per_class["b"]["num_gt"] == 0
    with pytest.raises(ValueError, match="3 class names for 2 category ids"):
        coco_metric.CocoEvaluator(category_ids=[1, 2], class_names=["a", "b", "c"])
