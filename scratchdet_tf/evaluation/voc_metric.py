"""PASCAL VOC AP with the devkit's rules, vectorized: per-class AP (VOC07 11-point and area), mAP.

Box format at this edge (everything else in the library is normalized [ymin, xmin, ymax, xmax]): VOC pixel
[xmin, ymin, xmax, ymax] in the devkit's 1-based inclusive convention, as written in Annotations/*.xml and
comp4 files; a box's width is xmax - xmin + 1. A normalized box maps back with pixel = normalized * size
(x by the width, y by the height): the exact inverse of the tfds `voc` reader (normalized = pixel / size),
so ground truth round-trips through the data pipeline unchanged.
"""

import math
import os

import numpy as np

from scratchdet_tf.evaluation import coco_metric

# Shared argument checks (defined in coco_metric).
_as_array = coco_metric.checked_array
_image_size = coco_metric.image_height_width


# The VOC2007 devkit loops `for t=0:0.1:1`. MATLAB builds a colon range symmetrically (a + k*d for the
# first half, b - k*d for the second), so t(4) = 3*0.1 = 0.30000000000000004 but t(7) = 1 - 4*0.1 = 0.6 and
# t(8) = 1 - 3*0.1 = 0.7 exactly. py-faster-rcnn's np.arange(0, 1.1, 0.1) has 0.6000000000000001 and
# 0.7000000000000001 there, so it drops a recall of exactly 0.6 or 0.7; we follow the devkit.
_VOC07_RECALL_THRESHOLDS = tuple([k * 0.1 for k in range(5)] + [0.5] + [1.0 - k * 0.1 for k in range(4, -1, -1)])


def voc_ap(recall, precision, use_07_metric):
    """Average precision from a precision/recall curve, as the VOC devkit computes it.

    Args:
      recall: float [K], non-decreasing (detections sorted by descending score).
      precision: float [K].
      use_07_metric: True for VOC2007's 11-point interpolated AP (mean over t in 0, 0.1, ..., 1 of the
        best precision at recall >= t); False for VOC2010+'s area under the monotone precision envelope.

    Returns:
      The AP as a Python float.
    """
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if recall.ndim != 1 or recall.shape != precision.shape:
        raise ValueError(f"recall {recall.shape} and precision {precision.shape} must be 1-D of equal length")
    if use_07_metric:
        ap = 0.0
        for t in _VOC07_RECALL_THRESHOLDS:
            ap += np.max(precision[recall >= t], initial=0.0) / 11.0  # summed in the devkit's order
        return float(ap)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def normalized_to_voc_pixels(boxes, image_size):
    """Normalized [ymin, xmin, ymax, xmax] [N, 4] + (height, width) -> float64 [N, 4] VOC pixel xyxy.

    The inverse of the ``voc:`` reader: a VOC box covers the 1-based pixels xmin..xmax, i.e. the
    continuous span [xmin - 1, xmax], so xmin = x0 * W + 1 and xmax = x1 * W (same for y).
    """
    boxes = _as_array(boxes, np.float64, (None, 4), "boxes")
    height, width = _image_size(image_size)
    return np.stack([boxes[:, 1] * width + 1, boxes[:, 0] * height + 1, boxes[:, 3] * width, boxes[:, 2] * height],
                    1)


def voc_evaluate(detections, ground_truths, class_names, iou_threshold=0.5):
    """Scores detections with the VOC devkit rules (VOCevaldet.m), both AP variants at once.

    Per class, detections are ranked by descending score. Each one takes the ground truth box of its
    image and class with the highest IoU (pixel IoU, widths xmax - xmin + 1). With IoU >= iou_threshold it
    is a true positive if that box is not difficult and not yet taken, a false positive (duplicate) if it
    is taken, and neither if it is difficult; otherwise it is a false positive. Difficult boxes do not
    count as positives. Equal scores rank by image (ground_truths order), then by position in the image's
    arrays: for comp4 files written in image-set order (ours, py-faster-rcnn's, SSD-Caffe's) that is the
    devkit's file order, so ties give the devkit's numbers too. py-faster-rcnn's voc_eval.py differs from
    the devkit in two places, where we follow the devkit: it needs IoU > 0.5, and its 11-point thresholds
    miss a recall of exactly 0.6 or 0.7 (see _VOC07_RECALL_THRESHOLDS).

    Args:
      detections: {image_id: {"boxes": float [M, 4] VOC pixel xyxy, "scores": float [M],
        "labels": int [M] in 0..C-1}}; images without detections may be left out.
      ground_truths: {image_id: {"boxes": float [N, 4] VOC pixel xyxy, "labels": int [N] in 0..C-1,
        "difficult": bool [N] (optional, default all False)}}; every evaluated image, boxes or not.
      class_names: C names, in label order.
      iou_threshold: minimum IoU of a true positive.

    Returns:
      {"mAP_07": float, "mAP_area": float, "per_class": {name: {"ap_07", "ap_area", "num_gt"}}}. A class
      without non-difficult ground truth has recall 0/0: its APs are nan and it is left out of the means
      (the devkit would report 0 or nan); mAP is nan when no class has ground truth. A class whose
      detections all lie on difficult boxes gets AP 0, as in voc_eval.py (MATLAB's 0/0 would make it nan).

    Raises:
      ValueError: on detections for an image not in ground_truths, bad shapes, labels outside 0..C-1 or
        non-finite scores.
    """
    num_gt, tp_fp = _class_tp_fp(detections, ground_truths, class_names, iou_threshold)
    per_class = {}
    for c, name in enumerate(class_names):
        if num_gt[c] == 0:
            aps = (math.nan, math.nan)
        else:
            recall, precision = _recall_precision(*tp_fp[c], num_gt[c])
            aps = (voc_ap(recall, precision, True), voc_ap(recall, precision, False))
        per_class[name] = {"ap_07": aps[0], "ap_area": aps[1], "num_gt": int(num_gt[c])}
    return {"mAP_07": _nanmean([v["ap_07"] for v in per_class.values()]),
            "mAP_area": _nanmean([v["ap_area"] for v in per_class.values()]),
            "per_class": per_class}


def voc_curves(detections, ground_truths, class_names, iou_threshold=0.5):
    """Per-class precision/recall curves under `voc_evaluate`'s rules (same arguments).

    Returns:
      {name: (recall, precision)}, float64 [K] each, one point per counted detection of the class by
      descending score (detections on difficult boxes left out, as they change neither AP); `voc_ap` of a
      curve is the class's AP. A class without non-difficult ground truth gets two empty arrays.
    """
    num_gt, tp_fp = _class_tp_fp(detections, ground_truths, class_names, iou_threshold)
    empty = (np.zeros(0), np.zeros(0))
    return {name: _recall_precision(*tp_fp[c], num_gt[c]) if num_gt[c] else empty
            for c, name in enumerate(class_names)}


def _recall_precision(tp, fp, num_gt):
    """Cumulative TP and FP counts [K] of one class and its positives -> (recall, precision) [K]."""
    return tp / num_gt, tp / (tp + fp)


def _class_tp_fp(detections, ground_truths, class_names, iou_threshold):
    """Checks the inputs, matches the detections (see `voc_evaluate`) and counts per class.

    Returns:
      (num_gt, tp_fp): int [C] non-difficult ground truth boxes per class; per class c, tp_fp[c] is
      (cumulative TPs, cumulative FPs), float64 [K_c] over the class's counted detections by descending score.
    """
    num_classes = len(class_names)
    image_index = {image_id: i for i, image_id in enumerate(ground_truths)}
    unknown = [image_id for image_id in detections if image_id not in image_index]
    if unknown:
        raise ValueError(f"detections for {len(unknown)} image ids not in the ground truth, e.g. {unknown[:3]}")
    gt_image, gt_boxes, gt_labels, gt_difficult = _flatten(
        ground_truths, image_index, "ground_truths", [("labels", np.int64), ("difficult", bool)])
    det_image, det_boxes, det_labels, det_scores = _flatten(
        detections, image_index, "detections", [("labels", np.int64), ("scores", np.float64)])
    for name, labels in (("ground truth", gt_labels), ("detection", det_labels)):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise ValueError(f"{name} labels must be in 0..{num_classes - 1}, got {np.unique(bad)[:5]}")
    if not np.all(np.isfinite(det_scores)):
        raise ValueError(f"non-finite detection scores, e.g. {det_scores[~np.isfinite(det_scores)][:3]}")

    # Per class, by descending score, ties in input order (np.lexsort is stable).
    order = np.lexsort((-det_scores, det_labels))
    is_tp, is_fp = _match(det_image * num_classes + det_labels, det_boxes, order,
                          gt_image * num_classes + gt_labels, gt_boxes, gt_difficult, iou_threshold)
    # Ignored detections (on difficult boxes) only repeat the previous curve point (or give 0/0 before the
    # first TP/FP, which MATLAB's max skips); dropping them changes neither AP.
    order = order[(is_tp | is_fp)[order]]
    bounds = np.searchsorted(det_labels[order], np.arange(num_classes + 1))
    num_gt = np.bincount(gt_labels[~gt_difficult], minlength=num_classes)
    tp_fp = [(np.cumsum(is_tp[order[bounds[c]:bounds[c + 1]]], dtype=np.float64),
              np.cumsum(is_fp[order[bounds[c]:bounds[c + 1]]], dtype=np.float64)) for c in range(num_classes)]
    return num_gt, tp_fp


def _match(det_key, det_boxes, order, gt_key, gt_boxes, gt_difficult, iou_threshold):
    """VOCevaldet's greedy matching, vectorized over all detections.

    A detection's best box (max IoU, first one on ties) does not depend on earlier matches, so it is
    computed for all (detection, same image-and-class box) pairs at once; the sequential part reduces to
    "the first detection in `order` that claims a non-difficult box is its true positive".

    Args: det_key int [M] (image index * C + label), det_boxes float [M, 4] pixel xyxy, order int [M]
    (per class by descending score), gt_key int [G], gt_boxes float [G, 4], gt_difficult bool [G].

    Returns:
      (is_tp, is_fp): bool [M] each; detections on difficult boxes are neither.
    """
    num_dets = len(det_key)
    gt_order = np.argsort(gt_key, kind="stable")  # keeps annotation order inside an image-class
    sorted_keys = gt_key[gt_order]
    starts = np.searchsorted(sorted_keys, det_key, "left")
    counts = np.searchsorted(sorted_keys, det_key, "right") - starts
    run_start = np.cumsum(counts) - counts  # first pair of each detection
    num_pairs = int(counts.sum())
    pair_det = np.repeat(np.arange(num_dets), counts)  # [P]
    pair_gt = gt_order[np.repeat(starts - run_start, counts) + np.arange(num_pairs)]  # [P]
    iou = _pixel_iou(det_boxes[pair_det], gt_boxes[pair_gt])  # [P], -inf without overlap

    best_iou = np.full(num_dets, -np.inf)
    best_gt = np.zeros(num_dets, np.int64)
    has_pairs = counts > 0
    if num_pairs:
        seg = run_start[has_pairs]
        best_iou[has_pairs] = np.maximum.reduceat(iou, seg)
        pos = np.where(iou == best_iou[pair_det], np.arange(num_pairs), num_pairs)
        best_gt[has_pairs] = pair_gt[np.minimum.reduceat(pos, seg)]
    hit = best_iou >= iou_threshold
    ignored = hit & gt_difficult[best_gt]
    claims = order[(hit & ~ignored)[order]]
    _, first = np.unique(best_gt[claims], return_index=True)  # first claim per box, in score order
    is_tp = np.zeros(num_dets, bool)
    is_tp[claims[first]] = True
    return is_tp, ~is_tp & ~ignored


def _pixel_iou(a, b):
    """Elementwise IoU of pixel xyxy boxes a, b [P, 4] (inclusive, +1), in VOCevaldet's arithmetic order."""
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1.0
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1.0
    inter = iw * ih
    union = (a[:, 2] - a[:, 0] + 1.0) * (a[:, 3] - a[:, 1] + 1.0) + (b[:, 2] - b[:, 0] + 1.0) * (
        b[:, 3] - b[:, 1] + 1.0) - inter
    overlaps = (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlaps, inter / np.where(overlaps, union, 1.0), -np.inf)


class VocEvaluator:
    """Collects per-image results during model evaluation and scores them with `voc_evaluate`."""

    def __init__(self, class_names, iou_threshold=0.5):
        """Args: class_names: C names in label order; iou_threshold: minimum IoU of a true positive."""
        self.class_names = tuple(class_names)
        self.iou_threshold = iou_threshold
        self.ground_truths = {}  # image_id -> voc_evaluate ground truth (pixels), in add() order
        self.detections = {}  # image_id -> voc_evaluate detections (pixels)

    def add(self, image_id, gt_boxes, gt_labels, gt_difficult, det_boxes, det_scores, det_labels, image_size):
        """Adds one image (unpadded arrays: slice padded outputs by their counts first); an id only once.

        Args:
          image_id: hashable id; written as-is into comp4 files.
          gt_boxes: float [N, 4] normalized yxyx.  gt_labels: int [N] 0..C-1.  gt_difficult: bool [N].
          det_boxes: float [M, 4] normalized yxyx.  det_scores: float [M].  det_labels: int [M] 0..C-1.
          image_size: (height, width) of the original image in pixels.
        """
        if image_id in self.ground_truths:
            raise ValueError(f"image {image_id!r} added twice")
        self.ground_truths[image_id] = {"boxes": normalized_to_voc_pixels(gt_boxes, image_size),
                                        "labels": np.asarray(gt_labels, np.int64),
                                        "difficult": np.asarray(gt_difficult, bool)}
        self.detections[image_id] = {"boxes": normalized_to_voc_pixels(det_boxes, image_size),
                                     "scores": np.asarray(det_scores, np.float64),
                                     "labels": np.asarray(det_labels, np.int64)}

    def result(self):
        """Returns voc_evaluate's dict: {"mAP_07", "mAP_area", "per_class": {name: {"ap_07", "ap_area", ...}}}."""
        return voc_evaluate(self.detections, self.ground_truths, self.class_names, self.iou_threshold)

    def curves(self):
        """Returns `voc_curves`: {name: (recall, precision)} float64 [K] arrays (empty without ground truth)."""
        return voc_curves(self.detections, self.ground_truths, self.class_names, self.iou_threshold)


def _nanmean(values):
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _flatten(per_image, image_index, what, fields):
    """Concatenates per-image "boxes" [N, 4] and fields [N], ordered by image_index (ties' order).

    Returns:
      image index int [K], boxes float64 [K, 4], then one [K] array per (key, dtype) in fields; a missing
      "difficult" is all False.
    """
    image_ids = sorted(per_image, key=image_index.__getitem__)
    columns = [[], []] + [[] for _ in fields]
    for image_id in image_ids:
        boxes = _as_array(per_image[image_id]["boxes"], np.float64, (None, 4), f"{what}[{image_id!r}]['boxes']")
        columns[0].append(np.full(len(boxes), image_index[image_id]))
        columns[1].append(boxes)
        for column, (key, dtype) in zip(columns[2:], fields):
            value = per_image[image_id].get(key, np.zeros(len(boxes), bool) if key == "difficult" else None)
            column.append(_as_array(value, dtype, (len(boxes),), f"{what}[{image_id!r}][{key!r}]"))
    empty = [np.zeros(0, np.int64), np.zeros((0, 4))] + [np.zeros(0, dtype) for _, dtype in fields]
    return [np.concatenate(c) if c else e for c, e in zip(columns, empty)]


def _make_parent(path):
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
