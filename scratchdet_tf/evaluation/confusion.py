"""Detection confusion matrix: which class the confident detections give each ground truth box, with a
background row and column for missed boxes and false positives.

Orientation: ``matrix[predicted, true]`` of shape [C + 1, C + 1] with labels 0..C-1 and index C for
background. Row C (predicted background) counts ground truth boxes no detection matched (missed); column C
(true background) counts detections that matched no ground truth box (false positives, duplicates
included); ``matrix[C, C]`` is always 0. Boxes are normalized [ymin, xmin, ymax, xmax].
"""

import numpy as np

from scratchdet_tf.evaluation import coco_metric

_IMAGE_KEYS = ("gt_boxes", "gt_labels", "gt_difficult", "det_boxes", "det_scores", "det_labels")


def confusion_matrix(images, num_classes, *, score_threshold=0.25, iou_threshold=0.5):
    """Sums `image_confusion` over images.

    Args:
      images: iterable of mappings (or objects with these attributes) ``gt_boxes`` float [N, 4],
        ``gt_labels`` int [N], ``gt_difficult`` bool [N] (optional), ``det_boxes`` float [M, 4],
        ``det_scores`` float [M], ``det_labels`` int [M]; unpadded, normalized yxyx.
      num_classes: C.
      score_threshold: detections scoring below it are left out.
      iou_threshold: minimum IoU of a match.

    Returns:
      int64 [C + 1, C + 1], ``matrix[predicted, true]`` (see the module docstring).
    """
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for image in images:
        fields = {k: _field(image, k) for k in _IMAGE_KEYS}
        matrix += image_confusion(**fields, num_classes=num_classes, score_threshold=score_threshold,
                                  iou_threshold=iou_threshold)
    return matrix


def image_confusion(gt_boxes, gt_labels, gt_difficult, det_boxes, det_scores, det_labels, *, num_classes,
                    score_threshold=0.25, iou_threshold=0.5):
    """The confusion matrix of one image (``matrix[predicted, true]``, background last).

    Greedy matching regardless of class: the detections scoring >= score_threshold, highest score first
    (ties in input order), each take the not yet matched ground truth box of highest IoU (first on ties),
    if that IoU is >= iou_threshold, so each box is matched at most once. A detection matched to a box
    counts at [its label, the box's label], one that matches none at [its label, C]; a box left unmatched
    counts at [C, its label]. A detection matched to a difficult (or crowd) box is not counted, nor is
    an unmatched difficult box.

    Args:
      gt_boxes: float [N, 4].  gt_labels: int [N] in 0..C-1.  gt_difficult: bool [N], or None (all False).
      det_boxes: float [M, 4].  det_scores: float [M].  det_labels: int [M] in 0..C-1.
      num_classes: C.
      score_threshold: detections scoring below it are left out.
      iou_threshold: minimum IoU of a match.

    Returns:
      int64 [C + 1, C + 1].

    Raises:
      ValueError: on bad shapes or labels outside 0..C-1.
    """
    gt_boxes = coco_metric.checked_array(gt_boxes, np.float64, (None, 4), "gt_boxes")
    gt_labels = _labels(gt_labels, len(gt_boxes), num_classes, "gt_labels")
    gt_difficult = coco_metric.checked_array(np.zeros(len(gt_boxes), bool) if gt_difficult is None else gt_difficult,
                                             bool, (len(gt_boxes),), "gt_difficult")
    det_boxes = coco_metric.checked_array(det_boxes, np.float64, (None, 4), "det_boxes")
    det_scores = coco_metric.checked_array(det_scores, np.float64, (len(det_boxes),), "det_scores")
    det_labels = _labels(det_labels, len(det_boxes), num_classes, "det_labels")

    keep = np.flatnonzero(det_scores >= score_threshold)
    keep = keep[np.argsort(-det_scores[keep], kind="stable")]
    iou = pairwise_iou(det_boxes[keep], gt_boxes)  # [K, N]
    matched = np.zeros(len(gt_boxes), bool)
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for row, d in enumerate(keep):
        candidates = np.where(matched, -1.0, iou[row])
        g = int(np.argmax(candidates)) if len(gt_boxes) else -1
        if g < 0 or candidates[g] < iou_threshold:
            matrix[det_labels[d], num_classes] += 1
            continue
        matched[g] = True
        if not gt_difficult[g]:
            matrix[det_labels[d], gt_labels[g]] += 1
    np.add.at(matrix[num_classes], gt_labels[~matched & ~gt_difficult], 1)
    return matrix


def pairwise_iou(a, b):
    """IoU of every pair of normalized yxyx boxes a [K, 4] and b [N, 4] -> float64 [K, N] (0 for empty boxes)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _labels(labels, num_boxes, num_classes, what):
    labels = coco_metric.checked_array(labels, np.int64, (num_boxes,), what)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what} must be in 0..{num_classes - 1}, got {np.unique(labels)[:5]}")
    return labels


def _field(image, key):
    if isinstance(image, dict):
        return image.get(key)
    return getattr(image, key, None)
