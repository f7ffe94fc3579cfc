"""SSD-Caffe prior matching (bipartite, then per-prediction) and target encoding, for tf.data."""

from __future__ import annotations

import tensorflow as tf

from scratchdet_tf.boxes import box_ops

# Caffe's MatchBBox only records overlaps above this; smaller ones never match.
_MIN_OVERLAP = 1e-6


def match(gt_boxes, anchors, iou_threshold=0.5):
    """Assigns a ground-truth index to every prior, exactly as Caffe's MatchBBox (PER_PREDICTION).

    1. Bipartite: repeatedly take the globally best (prior, GT) pair among unmatched priors
       and unmatched GTs and match it, until every GT is matched or no pair overlaps. Ties
       go to the lowest prior index, then the lowest GT index (Caffe's loop order).
    2. Per-prediction: every prior still unmatched whose best IoU is >= ``iou_threshold``
       is matched to its best GT (lowest index on ties).

    Only overlaps > 1e-6 count, as in Caffe.

    Step 1: when the GTs' best priors are all distinct, each GT simply takes its best prior.
    Otherwise a tf.while_loop runs one iteration per GT over a [N, N] candidate table: GT j's
    bipartite prior is its best prior not taken by the other N - 1 GTs, so it is among j's N
    best priors (``top_k`` keeps the lowest index on ties, like Caffe).

    Args:
      gt_boxes: float32 [N, 4] yxyx, all valid (no padding); N may be 0 or dynamic.
      anchors: float32 [A, 4] yxyx priors.
      iou_threshold: per-prediction matching threshold.

    Returns:
      int32 [A]: the matched GT index, or -1 for an unmatched prior (background).
    """
    return _match(gt_boxes, anchors, iou_threshold)[0]


def _match(gt_boxes, anchors, iou_threshold):
    """``match``, plus each prior's best IoU with any GT (float32 [A], 0 without GTs)."""
    gt_boxes = tf.reshape(tf.convert_to_tensor(gt_boxes, tf.float32), [-1, 4])
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    num_gt = tf.shape(gt_boxes)[0]
    num_anchors = tf.shape(anchors)[0]

    # A zero-area dummy GT at index N keeps reductions defined when N == 0; it overlaps nothing.
    overlaps = box_ops.iou(tf.concat([gt_boxes, tf.zeros([1, 4])], 0), anchors)  # [N+1, A]

    # --- 1. bipartite ---
    gt_prior = _bipartite(overlaps[:num_gt])  # [N]

    # Scatter into [A + 1]; unmatched GTs write to the spare last slot.
    slots = tf.where(gt_prior >= 0, gt_prior, num_anchors)
    bipartite = tf.tensor_scatter_nd_update(
        -tf.ones([num_anchors + 1], tf.int32), slots[:, None], tf.range(num_gt))[:num_anchors]

    # --- 2. per-prediction ---
    best_gt = tf.argmax(overlaps, axis=0, output_type=tf.int32)  # [A]; first index on ties
    best_iou = tf.reduce_max(overlaps, axis=0)
    per_prediction = tf.where((best_iou >= iou_threshold) & (best_iou > _MIN_OVERLAP), best_gt, -1)
    return tf.where(bipartite >= 0, bipartite, per_prediction), best_iou


def _bipartite(overlaps):
    """Caffe's bipartite step: the prior each GT gets, -1 for none.

    Args:
      overlaps: float32 [N, A] IoU of each GT with each prior.

    Returns:
      int32 [N].
    """
    num_gt = tf.shape(overlaps)[0]
    num_anchors = tf.shape(overlaps)[1]
    best_prior = tf.argmax(overlaps, axis=1, output_type=tf.int32)  # [N]; lowest index on ties
    has_prior = tf.reduce_max(overlaps, axis=1) > _MIN_OVERLAP  # [N]

    def without_conflict():
        # Distinct best priors: each GT's best prior is still free when its turn comes.
        return tf.where(has_prior, best_prior, -1)

    def greedy():
        k = tf.minimum(num_gt, num_anchors)
        cand_iou, cand_prior = tf.math.top_k(overlaps, k=k)  # [N, k] each, best first
        cand_gt = tf.broadcast_to(tf.range(num_gt)[:, None], tf.shape(cand_prior))  # [N, k]

        def step(i, cand_iou, gt_prior, found):
            del found
            best = tf.reduce_max(cand_iou)
            at_best = tf.equal(cand_iou, best)
            prior = tf.reduce_min(tf.where(at_best, cand_prior, num_anchors))
            gt = tf.reduce_min(tf.where(at_best & tf.equal(cand_prior, prior), cand_gt, num_gt))
            found = best > _MIN_OVERLAP  # else Caffe stops: no remaining pair overlaps
            gt_prior = tf.where(found & tf.equal(tf.range(num_gt), gt), prior, gt_prior)
            # The prior and the GT leave the pool.
            cand_iou = tf.where(tf.equal(cand_prior, prior) | tf.equal(cand_gt, gt), -1.0, cand_iou)
            return i + 1, cand_iou, gt_prior, found

        _, _, gt_prior, _ = tf.while_loop(
            lambda i, cand_iou, gt_prior, found: (i < num_gt) & found,
            step,
            (tf.constant(0), cand_iou, -tf.ones([num_gt], tf.int32), tf.constant(True)),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None]), tf.TensorShape([None]),
                              tf.TensorShape([])),
            parallel_iterations=1)
        return gt_prior

    shared = tf.equal(best_prior[:, None], best_prior[None, :]) & has_prior[:, None] & has_prior[None, :]
    conflict = tf.reduce_sum(tf.cast(shared, tf.int32)) > tf.reduce_sum(tf.cast(has_prior, tf.int32))
    return tf.cond(conflict, greedy, without_conflict)


def encode(gt_boxes, gt_labels, anchors, iou_threshold=0.5, variances=box_ops.VARIANCES, neg_overlap=None):
    """Classification and regression targets of one image, for use inside ``tf.data.Dataset.map``.

    Args:
      gt_boxes: float32 [G, 4] normalized yxyx, possibly padded.
      gt_labels: int32 [G] data labels 0..C-1; entries < 0 are padding and ignored.
      anchors: float32 [A, 4] normalized yxyx priors.
      iou_threshold: per-prediction matching threshold (Caffe's overlap_threshold).
      variances: (vy, vx, vh, vw) of the box coder.
      neg_overlap: Caffe's ``neg_overlap``: an unmatched prior is a negative only when its best
        IoU with the image's boxes is below this; one in [neg_overlap, iou_threshold) is ignored
        (-1). ``None`` means ``iou_threshold`` (every unmatched prior is a negative, SSD's 0.5/0.5).

    Returns:
      cls_targets: int32 [A]; 0 is background, data label k is class k + 1, -1 ignored.
      box_targets: float32 [A, 4] (dy, dx, dh, dw) offsets (see ``box_ops.encode``);
        zeros for background priors.
    """
    gt_boxes = tf.reshape(tf.convert_to_tensor(gt_boxes, tf.float32), [-1, 4])
    gt_labels = tf.reshape(tf.cast(gt_labels, tf.int32), [-1])
    anchors = tf.convert_to_tensor(anchors, tf.float32)

    valid = gt_labels >= 0
    gt_boxes = tf.boolean_mask(gt_boxes, valid)  # [N, 4]
    gt_labels = tf.boolean_mask(gt_labels, valid)  # [N]
    matches, best_iou = _match(gt_boxes, anchors, iou_threshold)  # [A] each

    positive = matches >= 0
    # Background priors gather a dummy unit box (index N) so that encode stays finite.
    index = tf.where(positive, matches, tf.shape(gt_boxes)[0])
    matched_boxes = tf.gather(tf.concat([gt_boxes, [[0.0, 0.0, 1.0, 1.0]]], 0), index)  # [A, 4]
    box_targets = box_ops.encode(matched_boxes, anchors, variances)
    box_targets = tf.where(positive[:, None], box_targets, 0.0)
    cls_targets = tf.where(positive, tf.gather(tf.concat([gt_labels, [-1]], 0), index) + 1, 0)
    if neg_overlap is not None and neg_overlap < iou_threshold:
        cls_targets = tf.where(~positive & (best_iou >= neg_overlap), -1, cls_targets)

    num_anchors = anchors.shape[0]
    cls_targets = tf.ensure_shape(cls_targets, [num_anchors])
    box_targets = tf.ensure_shape(box_targets, [num_anchors, 4])
    return cls_targets, box_targets
