"""Detection output (SSD-Caffe DetectionOutput): decode, per-class top-k and NMS, fixed-size padded results."""

from __future__ import annotations

import tensorflow as tf

from scratchdet_tf.boxes import box_ops


def nms_mask(boxes, valid, iou_threshold):
    """Greedy NMS over score-sorted boxes, batched: which boxes survive.

    Box j is kept iff it is valid and no kept box i < j has IoU(i, j) > ``iou_threshold``
    (Caffe's ApplyNMSFast with eta 1). That rule has a unique solution, computed here as a
    fixed point: iteration t settles at least box t, and real cases settle in a few
    iterations, each one batched matrix product.

    Args:
      boxes: float32 [..., K, 4] yxyx, sorted by descending score.
      valid: bool [..., K] boxes that take part (e.g. score above threshold).
      iou_threshold: suppress when IoU is strictly greater.

    Returns:
      bool [..., K] kept boxes.
    """
    k = tf.shape(boxes)[-2]
    overlaps = box_ops.iou(boxes, boxes)  # [..., K, K]
    earlier = tf.range(k)[:, None] < tf.range(k)[None, :]  # [K, K]: i suppresses only j > i
    suppresses = tf.cast((overlaps > iou_threshold) & earlier, tf.float32)
    valid_f = tf.cast(valid, tf.float32)

    def step(keep, _):
        # keep_j = valid_j and no kept i < j suppresses j.
        hits = tf.squeeze(tf.matmul(keep[..., None, :], suppresses), -2)  # [..., K]
        new_keep = valid_f * tf.cast(hits < 0.5, tf.float32)
        return new_keep, tf.reduce_any(tf.not_equal(new_keep, keep))

    keep, _ = tf.while_loop(
        lambda keep, changed: changed, step, (valid_f, tf.constant(True)), maximum_iterations=k + 1)
    return keep > 0.5


def detect(cls_logits, box_deltas, anchors, *, score_threshold=0.01, pre_nms_top_k=400,
           nms_iou_threshold=0.45, max_detections=200, variances=box_ops.VARIANCES):
    """Final detections of a batch: softmax, decode, per class threshold/top-k/NMS, keep the best.

    Per image and per object class, as Caffe's DetectionOutput: keep scores > ``score_threshold``,
    the ``pre_nms_top_k`` best of them, greedy NMS at ``nms_iou_threshold`` (on unclipped boxes),
    then the ``max_detections`` best over all classes. Static shapes throughout.

    Args:
      cls_logits: float [B, A, C+1]; column 0 is background.
      box_deltas: float [B, A, 4] (dy, dx, dh, dw).
      anchors: float32 [A, 4] yxyx priors.
      score_threshold: class probabilities must exceed this.
      pre_nms_top_k: boxes per class entering NMS.
      nms_iou_threshold: NMS IoU threshold.
      max_detections: N, detections kept per image.
      variances: (vy, vx, vh, vw) of the box coder.

    Returns:
      dict: ``boxes`` float32 [B, N, 4] normalized yxyx clipped to [0, 1]; ``scores`` float32
      [B, N] descending; ``classes`` int32 [B, N] data labels (model class - 1);
      ``num_detections`` int32 [B]. Entries past num_detections are zero.
    """
    cls_logits = tf.cast(cls_logits, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    num_classes = cls_logits.shape[-1] - 1  # object classes, static

    boxes = box_ops.decode(box_deltas, anchors, variances)  # [B, A, 4]
    probs = tf.nn.softmax(cls_logits, axis=-1)[..., 1:]  # [B, A, C]
    k = tf.minimum(pre_nms_top_k, tf.shape(probs)[1])
    scores, index = tf.math.top_k(tf.transpose(probs, [0, 2, 1]), k=k)  # [B, C, K]
    # Boxes under the threshold sit at the end of each row; drop the columns no class needs,
    # which makes NMS cheap for a trained network (few boxes pass 0.01).
    k = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(scores > score_threshold, tf.int32), axis=-1)), 1)
    scores, index = scores[..., :k], index[..., :k]
    class_boxes = tf.gather(boxes, index, axis=1, batch_dims=1)  # [B, C, K, 4]
    keep = nms_mask(class_boxes, scores > score_threshold, nms_iou_threshold)  # [B, C, K]

    # Per class, kept boxes move to the front (still by score); no class can place more than
    # N boxes in the final top N, so the first `per_class` of each class are all candidates.
    per_class = tf.minimum(k, max_detections)
    kept_scores = tf.where(keep, scores, -1.0)
    kept_scores, order = tf.math.top_k(kept_scores, k=per_class)  # [B, C, K']
    class_boxes = tf.gather(class_boxes, order, axis=2, batch_dims=2)  # [B, C, K', 4]

    batch = tf.shape(cls_logits)[0]
    flat_scores = tf.reshape(kept_scores, [batch, -1])  # [B, C*K']
    flat_boxes = tf.reshape(class_boxes, [batch, -1, 4])
    n = tf.minimum(max_detections, num_classes * per_class)
    out_scores, flat_index = tf.math.top_k(flat_scores, k=n)  # [B, n]
    out_boxes = tf.gather(flat_boxes, flat_index, axis=1, batch_dims=1)
    out_classes = flat_index // per_class

    is_det = out_scores >= 0.0  # dropped boxes score -1
    pad = [[0, 0], [0, max_detections - n]]
    out_scores = tf.pad(tf.where(is_det, out_scores, 0.0), pad)
    out_classes = tf.pad(tf.where(is_det, out_classes, 0), pad)
    out_boxes = tf.pad(tf.where(is_det[..., None], box_ops.clip(out_boxes), 0.0), pad + [[0, 0]])
    return {
        "boxes": tf.ensure_shape(out_boxes, [None, max_detections, 4]),
        "scores": tf.ensure_shape(out_scores, [None, max_detections]),
        "classes": tf.ensure_shape(tf.cast(out_classes, tf.int32), [None, max_detections]),
        "num_detections": tf.reduce_sum(tf.cast(is_det, tf.int32), axis=1),
    }
