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


def format_per_class_table(metrics, metric=None):
    """Formats the per-class results as a table, one row per class, then a "mean" row; APs x100, nan as "-".

    VOC (``voc_evaluate``'s dict): columns class, num_gt, AP (11-point), AP (area); the mean row holds
    mAP_07 and mAP_area. COCO (``CocoEvaluator.result`` with class names): columns class, num_gt, AP, AP50,
    AP75 (area all, 100 detections); the mean row holds the overall AP, AP50 and AP75.

    Args:
      metrics: a VOC or COCO metrics dict with ``"per_class"``.
      metric: "voc07" | "voc12" | "coco"; None: COCO when the dict has the COCO stats, else VOC.

    Returns:
      The table as lines joined by newlines.

    Raises:
      ValueError: ``metrics`` has no ``"per_class"``.
    """
    if "per_class" not in metrics:
        raise ValueError("these metrics have no per-class results (COCO: give CocoEvaluator the class names)")
    coco = metric == "coco" if metric else "AP" in metrics
    keys = ("AP", "AP50", "AP75") if coco else ("ap_07", "ap_area")
    titles = ("AP", "AP50", "AP75") if coco else ("AP (11-point)", "AP (area)")
    means = [metrics[k] for k in (keys if coco else ("mAP_07", "mAP_area"))]
    rows = [[name, str(v.get("num_gt", "")), *(_cell(v[k]) for k in keys)] for name, v in metrics["per_class"].items()]
    num_gt = [v.get("num_gt") for v in metrics["per_class"].values()]
    total = str(sum(num_gt)) if None not in num_gt else ""
    rows.append(["mean", total, *(_cell(v) for v in means)])
    header = ["class", "num_gt", *titles]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = [" ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    return "\n".join(lines)


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


def _cell(value):
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _format_row(method, names, values):
    cells = [_cell(v) for v in values]
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
