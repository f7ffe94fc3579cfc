"""Box math on THE box format: normalized [ymin, xmin, ymax, xmax] float32; IoU, encode/decode.

Offsets follow SSD-Caffe's CENTER_SIZE coder with ``variance_encoded_in_target=False``, but in
this project's y-first order: ``deltas = [dy, dx, dh, dw]`` with

    dy = (gy - py) / ph / vy          dh = log(gh / ph) / vh
    dx = (gx - px) / pw / vx          dw = log(gw / pw) / vw

for ground-truth centre (gy, gx) and size (gh, gw), prior centre (py, px) and size (ph, pw),
variances ``(vy, vx, vh, vw) = (0.1, 0.1, 0.2, 0.2)``. Caffe stores the same numbers in
(dx, dy, dw, dh) order; TFLite_Detection_PostProcess expects ours (y, x, h, w, scales 10/10/5/5).

Foreign formats (pixel xyxy / xywh) are converted only where data enters (``data/annotations.py``)
or leaves (``evaluation/voc_metric.py``, ``evaluation/coco_metric.py``).
"""

from __future__ import annotations

import math

import tensorflow as tf

VARIANCES = (0.1, 0.1, 0.2, 0.2)

# Decoded log-size offsets are capped here (as torchvision does) so that an untrained
# network cannot produce inf boxes: exp(4.135) = 62.5 times the prior's side.
_MAX_LOG_SCALE = math.log(1000.0 / 16.0)


def to_center_size(boxes):
    """[ymin, xmin, ymax, xmax] -> [cy, cx, h, w].

    Args:
      boxes: float32 [..., 4] yxyx.

    Returns:
      float32 [..., 4] (cy, cx, h, w).
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    size = boxes[..., 2:] - boxes[..., :2]
    return tf.concat([boxes[..., :2] + 0.5 * size, size], axis=-1)


def from_center_size(boxes):
    """[cy, cx, h, w] -> [ymin, xmin, ymax, xmax].

    Args:
      boxes: float32 [..., 4] (cy, cx, h, w).

    Returns:
      float32 [..., 4] yxyx.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    half = 0.5 * boxes[..., 2:]
    return tf.concat([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)


def area(boxes):
    """Box areas; inverted boxes (ymax < ymin or xmax < xmin) have area 0, as in Caffe's BBoxSize.

    Args:
      boxes: float32 [..., 4] yxyx.

    Returns:
      float32 [...].
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, 4, axis=-1)
    return tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)


def iou(boxes1, boxes2):
    """Pairwise intersection over union (Caffe's JaccardOverlap; no +1 on normalized boxes).

    Leading dimensions broadcast, so ``iou(a [B, N, 4], b [B, M, 4])`` gives [B, N, M].

    Args:
      boxes1: float32 [..., N, 4] yxyx.
      boxes2: float32 [..., M, 4] yxyx.

    Returns:
      float32 [..., N, M]; 0 where the union is empty.
    """
    boxes1 = tf.convert_to_tensor(boxes1, tf.float32)
    boxes2 = tf.convert_to_tensor(boxes2, tf.float32)
    a = tf.expand_dims(boxes1, -2)  # [..., N, 1, 4]
    b = tf.expand_dims(boxes2, -3)  # [..., 1, M, 4]
    ymin = tf.maximum(a[..., 0], b[..., 0])
    xmin = tf.maximum(a[..., 1], b[..., 1])
    ymax = tf.minimum(a[..., 2], b[..., 2])
    xmax = tf.minimum(a[..., 3], b[..., 3])
    inter = tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)  # [..., N, M]
    union = tf.expand_dims(area(boxes1), -1) + tf.expand_dims(area(boxes2), -2) - inter
    return tf.math.divide_no_nan(inter, union)


def encode(boxes, anchors, variances=VARIANCES):
    """Regression targets of ``boxes`` relative to ``anchors`` (CENTER_SIZE with variances).

    Args:
      boxes: float32 [..., 4] yxyx ground truth; boxes must have positive height and width.
      anchors: float32 [..., 4] yxyx priors, broadcastable against ``boxes``.
      variances: (vy, vx, vh, vw).

    Returns:
      float32 [..., 4] deltas (dy, dx, dh, dw) as described in the module docstring.
    """
    # Halves ([..., :2] corners/centres, [..., 2:] sizes) keep this to a few ops on [A, 4]
    # tensors, which matters inside tf.data.
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    v = tf.constant(variances, tf.float32)
    g_size = boxes[..., 2:] - boxes[..., :2]
    p_size = anchors[..., 2:] - anchors[..., :2]
    centre_offset = (boxes[..., :2] + 0.5 * g_size) - (anchors[..., :2] + 0.5 * p_size)
    return tf.concat([centre_offset / (p_size * v[:2]), tf.math.log(g_size / p_size) / v[2:]], axis=-1)


def decode(deltas, anchors, variances=VARIANCES):
    """Inverse of ``encode``: boxes from predicted offsets (not clipped).

    Args:
      deltas: float [..., 4] (dy, dx, dh, dw); any float dtype, computed in float32.
      anchors: float32 [..., 4] yxyx priors, broadcastable against ``deltas``.
      variances: (vy, vx, vh, vw).

    Returns:
      float32 [..., 4] yxyx. Size offsets are capped at exp(4.135) = 62.5x the prior side.
    """
    deltas = tf.cast(deltas, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    v = tf.constant(variances, tf.float32)
    p_size = anchors[..., 2:] - anchors[..., :2]
    centre = deltas[..., :2] * v[:2] * p_size + (anchors[..., :2] + 0.5 * p_size)
    half = 0.5 * tf.exp(tf.minimum(deltas[..., 2:] * v[2:], _MAX_LOG_SCALE)) * p_size
    return tf.concat([centre - half, centre + half], axis=-1)


def clip(boxes):
    """Clips normalized boxes to the image, [0, 1].

    Args:
      boxes: float32 [..., 4] yxyx.

    Returns:
      float32 [..., 4].
    """
    return tf.clip_by_value(tf.convert_to_tensor(boxes, tf.float32), 0.0, 1.0)
