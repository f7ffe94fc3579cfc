"""MultiBox loss (SSD-Caffe): softmax CE with 3:1 per-image hard-negative mining + smooth L1; returns sums.

Also the loss level of a classifier that ignores the image (``constant_classifier_loss``).
"""

from __future__ import annotations

import math

import tensorflow as tf


def hard_negatives(neg_scores, candidates, num_positives, neg_pos_ratio=3.0):
    """Selects each image's highest-scoring negatives, Caffe's MAX_NEGATIVE mining.

    Image i keeps ``min(int(neg_pos_ratio * num_positives[i]), candidates in image i)``
    negatives (so none when it has no positives); among equal scores the lower prior index
    wins. Static shapes and no sort (a full sort of [B, A] is the slowest op on CPU, XLA
    included): the k-th largest score is found by bisection on its float bits.

    Args:
      neg_scores: float32 [B, A] ranking score, >= 0 (the background loss); no gradient.
      candidates: bool [B, A] priors that may be mined (unmatched priors).
      num_positives: int32 [B] positives per image.
      neg_pos_ratio: negatives per positive.

    Returns:
      bool [B, A] mined negatives.
    """
    num_candidates = tf.reduce_sum(tf.cast(candidates, tf.int32), axis=1)  # [B]
    num_neg = tf.cast(tf.cast(num_positives, tf.float32) * neg_pos_ratio, tf.int32)  # truncates, as Caffe
    num_neg = tf.minimum(num_neg, num_candidates)[:, None]  # [B, 1]

    # Non-negative floats order like their int32 bit patterns; non-candidates get -1.
    bits = tf.bitcast(tf.cast(neg_scores, tf.float32), tf.int32)
    bits = tf.where(candidates, tf.maximum(bits, 0), -1)  # [B, A]
    # kth = the largest t with count(bits >= t) >= num_neg, built bit by bit from the top.
    kth = tf.zeros_like(num_neg)  # [B, 1]
    for bit in range(30, -1, -1):
        trial = kth | (1 << bit)
        count = tf.reduce_sum(tf.cast(bits >= trial, tf.int32), axis=1, keepdims=True)
        kth = tf.where(count >= num_neg, trial, kth)

    above = bits > kth
    # Exactly num_neg: the remainder comes from the scores equal to the k-th, lowest index first.
    tied = tf.equal(bits, kth)
    tie_rank = tf.cumsum(tf.cast(tied, tf.int32), axis=1, exclusive=True)
    remainder = num_neg - tf.reduce_sum(tf.cast(above, tf.int32), axis=1, keepdims=True)
    selected = above | (tied & (tie_rank < remainder))
    return selected & (num_neg > 0)


def smooth_l1(x):
    """Elementwise smooth L1 with the transition at |x| = 1: 0.5 x^2 or |x| - 0.5."""
    abs_x = tf.abs(x)
    return tf.where(abs_x < 1.0, 0.5 * x * x, abs_x - 0.5)


def multibox_loss(cls_logits, box_deltas, cls_targets, box_targets, neg_pos_ratio=3.0):
    """SSD MultiBox loss, summed over the batch (normalize with the global positive count).

    Classification: softmax cross-entropy over positives plus hard negatives, mined per image
    (``neg_pos_ratio`` x that image's positives, ranked by -log softmax[0]). Localization:
    smooth L1 over the 4 offsets of positives. Math is float32 whatever the input dtype.

    Args:
      cls_logits: float [B, A, C+1]; column 0 is background.
      box_deltas: float [B, A, 4] predicted (dy, dx, dh, dw).
      cls_targets: int [B, A]; 0 background, k > 0 object class; < 0 ignored (neither
        positive nor a negative candidate).
      box_targets: float32 [B, A, 4] encoded offsets; used only where cls_targets > 0.
      neg_pos_ratio: mined negatives per positive.

    Returns:
      dict of float32 scalars: ``cls_loss_sum``, ``box_loss_sum``, ``num_pos`` (positives in
      the batch) and ``num_neg`` (mined negatives in the batch).
    """
    cls_logits = tf.cast(cls_logits, tf.float32)
    box_deltas = tf.cast(box_deltas, tf.float32)
    box_targets = tf.cast(box_targets, tf.float32)
    cls_targets = tf.cast(cls_targets, tf.int32)

    positive = cls_targets > 0  # [B, A]
    candidates = tf.equal(cls_targets, 0)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.maximum(cls_targets, 0), logits=cls_logits)  # [B, A]
    num_pos_per_image = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)  # [B]
    # For a candidate the CE against class 0 is the background loss Caffe ranks by.
    negative = hard_negatives(tf.stop_gradient(ce), candidates, num_pos_per_image, neg_pos_ratio)

    cls_weight = tf.cast(positive | negative, tf.float32)
    box_loss = tf.reduce_sum(smooth_l1(box_deltas - box_targets), axis=-1)  # [B, A]
    return {
        "cls_loss_sum": tf.reduce_sum(ce * cls_weight),
        "box_loss_sum": tf.reduce_sum(box_loss * tf.cast(positive, tf.float32)),
        "num_pos": tf.cast(tf.reduce_sum(num_pos_per_image), tf.float32),
        "num_neg": tf.reduce_sum(tf.cast(negative, tf.float32)),
    }


def multibox_loss_normalized(cls_logits, box_deltas, cls_targets, box_targets, neg_pos_ratio=3.0,
                             loc_weight=1.0):
    """Single-replica total loss: (cls_sum + loc_weight * box_sum) / max(num_pos, 1).

    Args:
      cls_logits: float [B, A, C+1]; column 0 is background.
      box_deltas: float [B, A, 4].
      cls_targets: int [B, A].
      box_targets: float32 [B, A, 4].
      neg_pos_ratio: mined negatives per positive.
      loc_weight: weight of the localization sum (Caffe's loc_weight, 1.0).

    Returns:
      float32 scalar.
    """
    sums = multibox_loss(cls_logits, box_deltas, cls_targets, box_targets, neg_pos_ratio)
    return (sums["cls_loss_sum"] + loc_weight * sums["box_loss_sum"]) / tf.maximum(sums["num_pos"], 1.0)


def constant_classifier_loss(num_classes: int, neg_pos_ratio: float = 3.0) -> float:
    """Classification loss per positive of the best classifier that ignores the image.

    Over the scored priors (each positive plus ``neg_pos_ratio`` mined negatives) the best
    constant softmax gives background ``r / (1 + r)`` and every class ``1 / ((1 + r) C)``
    (classes equally frequent), so the MultiBox classification loss (summed, divided by the
    positives) is ``-ln(1 / ((1 + r) C)) - r ln(r / (1 + r))``: 3.86 for 5 classes at 3:1,
    5.98 for 20, 7.36 for 80. A training curve that sits at this level has learned nothing
    about what an object is.
    """
    r = float(neg_pos_ratio)
    loss = -math.log(1.0 / ((1.0 + r) * num_classes))
    if r > 0:
        loss -= r * math.log(r / (1.0 + r))
    return loss
