"""losses: MultiBox sums against a numpy twin of Caffe's MultiBoxLoss; mining counts; XLA."""

import math

import numpy as np
import pytest
import tensorflow as tf

from scratchdet_tf.training import losses


def numpy_multibox(logits, deltas, cls_targets, box_targets, ratio=3.0):
    """Per image: CE of positives + the top int(ratio * pos) background losses; smooth L1, float64."""
    logits = logits.astype(np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    cls_sum = box_sum = 0.0
    num_pos = num_neg = 0
    for b in range(len(logits)):
        pos = np.flatnonzero(cls_targets[b] > 0)
        cand = np.flatnonzero(cls_targets[b] == 0)
        bg_loss = -log_probs[b, cand, 0]
        n = min(int(ratio * len(pos)), len(cand))
        mined = cand[np.argsort(-bg_loss, kind="stable")[:n]]
        cls_sum += -log_probs[b, pos, cls_targets[b, pos]].sum() - log_probs[b, mined, 0].sum()
        d = np.abs(deltas[b, pos].astype(np.float64) - box_targets[b, pos])
        box_sum += np.where(d < 1, 0.5 * d * d, d - 0.5).sum()
        num_pos += len(pos)
        num_neg += n
    return cls_sum, box_sum, num_pos, num_neg


def random_case(rng, batch=3, num_anchors=60, num_classes=5, pos_counts=(4, 0, 20)):
    logits = rng.normal(size=(batch, num_anchors, num_classes + 1)).astype(np.float32) * 2
    deltas = rng.normal(size=(batch, num_anchors, 4)).astype(np.float32) * 2
    box_targets = rng.normal(size=(batch, num_anchors, 4)).astype(np.float32)
    cls_targets = np.zeros((batch, num_anchors), np.int32)
    for b, n in enumerate(pos_counts):
        cls_targets[b, rng.choice(num_anchors, n, replace=False)] = rng.integers(1, num_classes + 1, n)
    return logits, deltas, cls_targets, box_targets


@pytest.mark.parametrize("seed", range(4))
def test_loss_sums_match_numpy_twin(seed):
    case = random_case(np.random.default_rng(seed))
    got = losses.multibox_loss(*case)
    cls_sum, box_sum, num_pos, num_neg = numpy_multibox(*case)
    np.testing.assert_allclose(got["cls_loss_sum"].numpy(), cls_sum, rtol=1e-5)
    np.testing.assert_allclose(got["box_loss_sum"].numpy(), box_sum, rtol=1e-5)
    assert got["num_pos"].numpy() == num_pos and got["num_neg"].numpy() == num_neg


def test_image_without_gt_gives_zero_box_loss_finite_cls_loss_and_no_negatives():
    logits, deltas, _, box_targets = random_case(np.random.default_rng(5), batch=1, pos_counts=(0,))
    got = losses.multibox_loss(logits, deltas, np.zeros((1, 60), np.int32), box_targets)
    assert got["box_loss_sum"].numpy() == 0.0
    assert np.isfinite(got["cls_loss_sum"].numpy()) and got["cls_loss_sum"].numpy() == 0.0
    assert got["num_neg"].numpy() == 0 and got["num_pos"].numpy() == 0
    total = losses.multibox_loss_normalized(logits, deltas, np.zeros((1, 60), np.int32), box_targets)
    assert total.numpy() == 0.0


def test_mined_negatives_are_three_per_positive_counted_per_image():
    rng = np.random.default_rng(6)
    scores = rng.uniform(size=(3, 50)).astype(np.float32)
    candidates = np.ones((3, 50), bool)
    candidates[:, :5] = False  # the positives
    mask = losses.hard_negatives(scores, candidates, [5, 0, 2]).numpy()
    np.testing.assert_array_equal(mask.sum(1), [15, 0, 6])
    assert not mask[:, :5].any()
    # Image 0 takes its 15 highest-scoring candidates.
    want = 5 + np.argsort(-scores[0, 5:])[:15]
    np.testing.assert_array_equal(np.flatnonzero(mask[0]), np.sort(want))


def test_all_negatives_mined_when_fewer_than_three_per_positive():
    scores = np.random.default_rng(7).uniform(size=(1, 20)).astype(np.float32)
    candidates = np.arange(20)[None] >= 12  # 8 candidates, 12 positives -> 36 wanted
    mask = losses.hard_negatives(scores, candidates, [12]).numpy()
    np.testing.assert_array_equal(mask, candidates)


def test_mining_ties_keep_exact_count_lowest_index_first():
    scores = np.array([[0.5, 0.9, 0.5, 0.5, 0.1, 0.5]], np.float32)
    mask = losses.hard_negatives(scores, np.ones((1, 6), bool), [1]).numpy()  # 3 negatives
    np.testing.assert_array_equal(mask, [[True, True, True, False, False, False]])


def test_mining_ratio_truncates_like_caffe():
    mask = losses.hard_negatives(np.ones((1, 40), np.float32), np.ones((1, 40), bool), [3], 1.5).numpy()
    assert mask.sum() == 4  # int(3 * 1.5)


def test_ignored_targets_are_neither_positive_nor_negative():
    logits, deltas, cls_targets, box_targets = random_case(np.random.default_rng(8), batch=1, pos_counts=(5,))
    ignored = cls_targets.copy()
    ignored[0, np.flatnonzero(cls_targets[0] == 0)[:30]] = -1
    got = losses.multibox_loss(logits, deltas, ignored, box_targets)
    keep = ignored[0] >= 0
    want = numpy_multibox(logits[:, keep], deltas[:, keep], cls_targets[:, keep], box_targets[:, keep])
    np.testing.assert_allclose(got["cls_loss_sum"].numpy(), want[0], rtol=1e-5)


def test_gradient_reaches_only_positives_and_mined_negatives():
    logits, deltas, cls_targets, box_targets = random_case(np.random.default_rng(9), batch=1, pos_counts=(4,))
    logits = tf.Variable(logits)
    deltas = tf.Variable(deltas)
    with tf.GradientTape() as tape:
        out = losses.multibox_loss(logits, deltas, cls_targets, box_targets)
        total = out["cls_loss_sum"] + out["box_loss_sum"]
    g_logits, g_deltas = tape.gradient(total, [logits, deltas])
    assert np.count_nonzero(np.abs(g_logits.numpy()).sum(-1)) == 16  # 4 positives + 12 negatives
    assert np.count_nonzero(np.abs(g_deltas.numpy()).sum(-1)) == 4


def test_normalized_loss_divides_by_positives():
    case = random_case(np.random.default_rng(10))
    cls_sum, box_sum, num_pos, _ = numpy_multibox(*case)
    np.testing.assert_allclose(losses.multibox_loss_normalized(*case).numpy(), (cls_sum + box_sum) / num_pos,
                               rtol=1e-5)
    np.testing.assert_allclose(losses.multibox_loss_normalized(*case, loc_weight=0.5).numpy(),
                               (cls_sum + 0.5 * box_sum) / num_pos, rtol=1e-5)


def test_loss_compiles_with_xla_and_matches_graph_mode():
    logits, deltas, cls_targets, box_targets = random_case(np.random.default_rng(11), num_anchors=300,
                                                           pos_counts=(7, 0, 40))
    logits = tf.Variable(logits)

    def step():
        with tf.GradientTape() as tape:
            loss = losses.multibox_loss_normalized(logits, deltas, cls_targets, box_targets)
        return loss, tape.gradient(loss, logits)

    loss, grad = tf.function(step)()
    loss_xla, grad_xla = tf.function(step, jit_compile=True)()
    np.testing.assert_allclose(loss_xla.numpy(), loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(grad_xla.numpy(), grad.numpy(), atol=1e-6)


def test_half_precision_inputs_give_float32_loss():
    logits, deltas, cls_targets, box_targets = random_case(np.random.default_rng(12))
    got = losses.multibox_loss(tf.cast(logits, tf.bfloat16), tf.cast(deltas, tf.float16), cls_targets, box_targets)
    assert got["cls_loss_sum"].dtype == tf.float32
    want = losses.multibox_loss(logits, deltas, cls_targets, box_targets)
    np.testing.assert_allclose(got["box_loss_sum"].numpy(), want["box_loss_sum"].numpy(), rtol=1e-2)


def test_smooth_l1_transition_at_one():
    np.testing.assert_allclose(losses.smooth_l1(tf.constant([0.0, 0.5, -1.0, 3.0])).numpy(), [0.0, 0.125, 0.5, 2.5])


def test_constant_classifier_loss_hand_computed():
    # 5 classes, 3 negatives per positive: background 3/4, each class 1/20.
    assert losses.constant_classifier_loss(5, 3.0) == pytest.approx(-math.log(0.05) - 3 * math.log(0.75))
    assert losses.constant_classifier_loss(5, 3.0) == pytest.approx(3.8588, abs=1e-4)
    assert losses.constant_classifier_loss(20, 0.0) == pytest.approx(math.log(20))
