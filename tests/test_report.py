"""report: the VOC and COCO tables and the metrics JSON."""

import json
import math

import numpy as np

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
