"""report: the VOC and COCO tables and the metrics JSON."""

import json
import math

import numpy as np
import pytest

from scratchdet_tf.evaluation import coco_metric, report


def test_voc_table_shows_map_then_classes_times_100():
    result = {"mAP_07": 0.8042, "mAP_area": 0.81,
              "per_class": {"aeroplane": {"ap_07": 0.85149, "ap_area": 0.9}, "cat": {"ap_07": math.nan, "ap_area": 0}}}
    header, row = report.format_voc_table(result, use_07_metric=True, method="ScratchDet300").splitlines()
    assert header.split() == ["Method", "mAP", "aeroplane", "cat"]
    assert row.split() == ["ScratchDet300", "80.4", "85.1", "-"]
    area_row = report.format_voc_table(result, use_07_metric=False).splitlines()[1]
    assert area_row.split()[1:] == ["81.0", "90.0", "0.0"]


def test_coco_table_and_metrics_json(tmp_path):
    stats = dict(zip(coco_metric.COCO_STAT_NAMES, [0.327, 0.52, 0.349, 0.13, 0.356, 0.49, 0.293, 0.439, 0.457,
                                                  0.206, 0.508, 0.653]))
    header, row = report.format_coco_table(stats).splitlines()
    assert header.split()[1:] == list(coco_metric.COCO_STAT_NAMES)
    assert row.split()[1:4] == ["32.7", "52.0", "34.9"]
    path = report.write_metrics_json(str(tmp_path / "run" / "metrics.json"), {"mAP": math.nan, "x": np.float32(1)})
    with open(path) as f:
        assert json.load(f) == {"mAP": None, "x": 1.0}
    assert report.metrics_to_json({"a": [math.inf, 2]}) == '{"a": [null, 2]}'


def test_per_class_table_voc_one_row_per_class():
    result = {"mAP_07": 0.8042, "mAP_area": 0.81,
              "per_class": {"aeroplane": {"ap_07": 0.85149, "ap_area": 0.9, "num_gt": 285},
                            "cat": {"ap_07": math.nan, "ap_area": math.nan, "num_gt": 0}}}
    lines = report.format_per_class_table(result, metric="voc07").splitlines()
    assert lines[0].split() == ["class", "num_gt", "AP", "(11-point)", "AP", "(area)"]
    assert [line.split() for line in lines[1:]] == [["aeroplane", "285", "85.1", "90.0"], ["cat", "0", "-", "-"],
                                                    ["mean", "285", "80.4", "81.0"]]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    assert report.format_per_class_table(result) == "\n".join(lines)  # VOC recognized by its keys


def test_per_class_table_coco_uses_ap_ap50_ap75():
    stats = dict(zip(coco_metric.COCO_STAT_NAMES, [0.3, 0.5, 0.25] + [0.1] * 9))
    stats["per_class"] = {"person": {"AP": 0.4, "AP50": 0.6, "AP75": 0.35, "num_gt": 10},
                          "traffic light": {"AP": 0.2, "AP50": 0.4, "AP75": 0.15, "num_gt": 3}}
    lines = report.format_per_class_table(stats).splitlines()
    assert lines[0].split() == ["class", "num_gt", "AP", "AP50", "AP75"]
    assert lines[1].split() == ["person", "10", "40.0", "60.0", "35.0"]
    assert lines[2].startswith("traffic light ") and lines[2].split()[2:] == ["3", "20.0", "40.0", "15.0"]
    assert lines[3].split() == ["mean", "13", "30.0", "50.0", "25.0"]
    with pytest.raises(ValueError, match="no per-class results"):
        report.format_per_class_table({"AP": 0.3})
