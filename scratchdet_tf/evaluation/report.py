"""Reporting evaluation results: the paper-style tables, ``metrics.json``, TensorBoard summaries."""

import json
import math
import os

import numpy as np

from scratchdet_tf.evaluation import coco_metric


def format_voc_table(result, use_07_metric=True, method="ours"):
    """Formats a voc_evaluate result like the paper's Table 6: two lines, mAP then classes, x100, nan as "-"."""
    key = "07" if use_07_metric else "area"
    names = ["mAP"] + list(result["per_class"])
    values = [result[f"mAP_{key}"]] + [v[f"ap_{key}"] for v in result["per_class"].values()]
    return _format_row(method, names, values)


def format_coco_table(stats, method="ours"):
    """Formats the 12 COCO stats like the paper's Table 8: one row, x100, 1 decimal."""
    return _format_row(method, list(coco_metric.COCO_STAT_NAMES), [stats[name] for name in coco_metric.COCO_STAT_NAMES])


def metrics_to_json(metrics):
    """One-line JSON of a metrics dict, with nan/inf written as null (strict JSON)."""
    return json.dumps(_json_safe(metrics))


def write_metrics_json(path, metrics):
    """Writes a metrics dict to `path` (e.g. <model_dir>/metrics.json), nan as null; returns path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(_json_safe(metrics), f, indent=2)
        f.write("\n")
    return path


def _format_row(method, names, values):
    cells = ["-" if v is None or math.isnan(v) else f"{100 * v:.1f}" for v in values]
    widths = [max(len(n), len(c), 4) for n, c in zip(names, cells)]
    first = max(len(method), len("Method"))
    header = "Method".ljust(first) + "".join(f" {n:>{w}}" for n, w in zip(names, widths))
    return header + "\n" + method.ljust(first) + "".join(f" {c:>{w}}" for c, w in zip(cells, widths))


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj
