"""targets: Caffe MatchBBox semantics against a plain numpy twin; eager and inside tf.data.map."""

import math

import numpy as np
import pytest
import tensorflow as tf

from scratchdet_tf import config
from scratchdet_tf.boxes import anchors as anchors_lib
from scratchdet_tf.boxes import targets

VOC300_FEATURE_MAPS = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]


def small_anchors():
    """float32 [A, 4]: 4x4 and 2x2 grids, 4 priors per cell: 80 priors."""
    return anchors_lib.ssd_anchors([(4, 4), (2, 2)], 100, min_sizes=[25, 50], max_sizes=[50, 90],
                                   aspect_ratios=[[2], [2]], steps=None)


def random_gt(rng, n, clustered=False):
    """float32 [n, 4] yxyx; clustered boxes compete for the same priors."""
    centre = rng.uniform(0.4, 0.6, (n, 2)) if clustered else rng.uniform(0.1, 0.9, (n, 2))
    size = rng.uniform(0.05, 0.7, (n, 2))
    return np.clip(np.concatenate([centre - size / 2, centre + size / 2], 1), 0, 1).astype(np.float32)


def caffe_iou(a, b):
    """[len(a), len(b)] JaccardOverlap in float32 with Caffe's operation order, so ties break alike."""
    a, b = a.astype(np.float32)[:, None], b.astype(np.float32)[None]
    iw = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    ih = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    inter = iw * ih
    size_a = (a[..., 3] - a[..., 1]) * (a[..., 2] - a[..., 0])
    size_b = (b[..., 3] - b[..., 1]) * (b[..., 2] - b[..., 0])
    return np.where((iw > 0) & (ih > 0), inter / (size_a + size_b - inter), np.float32(0))


def caffe_match(gt, priors, threshold=0.5):
    """Port of SSD-Caffe's MatchBBox (BIPARTITE then PER_PREDICTION), loops in Caffe's order."""
    overlaps = caffe_iou(priors, gt)  # [A, N]
    num_priors, num_gt = overlaps.shape
    match = [-1] * num_priors
    pool = list(range(num_gt))
    while pool:
        best_i, best_j, best = -1, -1, -1.0
        for i in range(num_priors):  # priors in index order, GTs in pool order, strict '>'
            if match[i] != -1:
                continue
            for j in pool:
                if overlaps[i, j] > 1e-6 and overlaps[i, j] > best:
                    best_i, best_j, best = i, j, overlaps[i, j]
        if best_i == -1:
            break
        match[best_i] = best_j
        pool.remove(best_j)
    for i in range(num_priors):
        if match[i] != -1:
            continue
        best_j, best = -1, -1.0
        for j in range(num_gt):
            if overlaps[i, j] > 1e-6 and overlaps[i, j] >= threshold and overlaps[i, j] > best:
                best_j, best = j, overlaps[i, j]
        match[i] = best_j
    return np.array(match)


def numpy_encode(gt, labels, priors, match):
    """Caffe CENTER_SIZE targets in yxyx order, float64."""
    cls = np.where(match >= 0, labels[match] + 1, 0)
    g, p = gt[np.maximum(match, 0)].astype(np.float64), priors.astype(np.float64)
    g_size, p_size = g[:, 2:] - g[:, :2], p[:, 2:] - p[:, :2]
    centre = ((g[:, :2] + g_size / 2) - (p[:, :2] + p_size / 2)) / p_size / 0.1
    size = np.log(g_size / p_size) / 0.2
    box = np.where(match[:, None] >= 0, np.concatenate([centre, size], 1), 0.0)
    return cls, box


@pytest.mark.parametrize("seed", range(12))
def test_match_agrees_with_caffe_port_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    priors = small_anchors()
    gt = random_gt(rng, int(rng.integers(1, 9)), clustered=seed % 2 == 0)
    np.testing.assert_array_equal(targets.match(gt, priors).numpy(), caffe_match(gt, priors))


def test_match_agrees_with_caffe_port_on_voc300_priors():
    rng = np.random.default_rng(100)
    priors = anchors_lib.anchors_from_config(config.AnchorConfig(), 300, VOC300_FEATURE_MAPS)
    gt = np.concatenate([random_gt(rng, 12, clustered=True), random_gt(rng, 8)])
    np.testing.assert_array_equal(targets.match(gt, priors).numpy(), caffe_match(gt, priors))


def test_encode_agrees_with_numpy_twin():
    rng = np.random.default_rng(7)
    priors = small_anchors()
    gt = random_gt(rng, 6, clustered=True)
    labels = rng.integers(0, 20, 6).astype(np.int32)
    cls, box = targets.encode(gt, labels, priors)
    want_cls, want_box = numpy_encode(gt, labels, priors, caffe_match(gt, priors))
    np.testing.assert_array_equal(cls.numpy(), want_cls)
    np.testing.assert_allclose(box.numpy(), want_box, atol=1e-4)


def test_gt_equal_to_anchor_is_positive():
    priors = small_anchors()
    gt = priors[[13]]
    cls, box = targets.encode(gt, [4], priors)
    assert cls.numpy()[13] == 5  # data label 4 -> class 5
    np.testing.assert_allclose(box.numpy()[13], 0.0, atol=1e-5)


def test_two_gts_competing_for_one_prior_resolved_by_global_best_pair():
    # Full-height boxes, so IoU is the overlap of x intervals.
    priors = np.array([[0, 0.0, 1, 0.4], [0, 0.3, 1, 0.7], [0, 0.6, 1, 1.0]], np.float32)
    gt_a = [0, 0.0, 1, 0.36]  # IoU 0.9 with prior 0, 0.086 with prior 1
    gt_b = [0, 0.05, 1, 0.45]  # IoU 0.778 with prior 0, 0.231 with prior 1
    # Prior 0 goes to the globally best pair (a); b takes its next best prior although
    # 0.231 is under the threshold; prior 2 overlaps nothing.
    np.testing.assert_array_equal(targets.match(np.array([gt_a, gt_b], np.float32), priors).numpy(), [0, 1, -1])
    np.testing.assert_array_equal(targets.match(np.array([gt_b, gt_a], np.float32), priors).numpy(), [1, 0, -1])


def test_identical_gts_tie_goes_to_lower_gt_index():
    priors = small_anchors()
    gt = np.stack([priors[5], priors[5]])
    want = caffe_match(gt, priors)
    assert want[5] == 0 and 1 in want
    np.testing.assert_array_equal(targets.match(gt, priors).numpy(), want)


def test_prior_above_threshold_matches_its_best_gt():
    priors = np.array([[0, 0.0, 1, 0.5], [0, 0.05, 1, 0.55]], np.float32)
    gt = np.array([[0, 0.0, 1, 0.5]], np.float32)  # IoU 1 with prior 0, 0.818 with prior 1
    cls, _ = targets.encode(gt, [0], priors)
    np.testing.assert_array_equal(cls.numpy(), [1, 1])
    cls, _ = targets.encode(gt, [0], priors, iou_threshold=0.9)
    np.testing.assert_array_equal(cls.numpy(), [1, 0])


def test_padded_gt_is_ignored():
    rng = np.random.default_rng(8)
    priors = small_anchors()
    gt = random_gt(rng, 4)
    labels = np.array([3, 0, 7, 1], np.int32)
    cls, box = targets.encode(gt, labels, priors)
    # Padding at the end and in the middle, with garbage boxes.
    padded_gt = np.concatenate([gt[:2], [[0.1, 0.1, 0.9, 0.9]], gt[2:], np.zeros((3, 4))]).astype(np.float32)
    padded_labels = np.array([3, 0, -1, 7, 1, -1, -1, -1], np.int32)
    cls_p, box_p = targets.encode(padded_gt, padded_labels, priors)
    np.testing.assert_array_equal(cls_p.numpy(), cls.numpy())
    np.testing.assert_allclose(box_p.numpy(), box.numpy(), atol=1e-6)


@pytest.mark.parametrize("num_pad", [0, 5])
def test_no_ground_truth_gives_all_background(num_pad):
    priors = small_anchors()
    cls, box = targets.encode(np.zeros((num_pad, 4), np.float32), -np.ones([num_pad], np.int32), priors)
    assert cls.shape == (len(priors),) and box.shape == (len(priors), 4)
    assert not np.any(cls.numpy()) and not np.any(box.numpy())


def test_encode_inside_tf_data_map_matches_eager():
    rng = np.random.default_rng(9)
    priors = small_anchors()
    boxes = np.zeros((4, 10, 4), np.float32)
    labels = -np.ones((4, 10), np.int32)
    for i, n in enumerate([0, 1, 5, 10]):
        boxes[i, :n] = random_gt(rng, n, clustered=True)
        labels[i, :n] = rng.integers(0, 20, n)
    ds = (tf.data.Dataset.from_tensor_slices((boxes, labels))
          .map(lambda boxes, labels: targets.encode(boxes, labels, priors), num_parallel_calls=tf.data.AUTOTUNE)
          .batch(2, drop_remainder=True))
    assert ds.element_spec[0].shape == (2, len(priors)) and ds.element_spec[1].shape == (2, len(priors), 4)
    got_cls = np.concatenate([c.numpy() for c, _ in ds])
    got_box = np.concatenate([b.numpy() for _, b in ds])
    for i in range(4):
        cls, box = targets.encode(boxes[i], labels[i], priors)
        np.testing.assert_array_equal(got_cls[i], cls.numpy())
        np.testing.assert_allclose(got_box[i], box.numpy(), atol=1e-6)
    assert got_cls[3].max() > 0 and not got_cls[0].any()


def test_voc300_targets_have_expected_offsets_for_positives():
    priors = anchors_lib.anchors_from_config(config.AnchorConfig(), 300, VOC300_FEATURE_MAPS)
    gt = np.array([[0.2, 0.3, 0.6, 0.5]], np.float32)
    cls, box = targets.encode(gt, [11], priors)
    positive = cls.numpy() > 0
    assert positive.sum() >= 1 and set(cls.numpy()[positive]) == {12}
    i = int(np.argmax(positive))
    p = priors[i].astype(np.float64)
    ph, pw = p[2] - p[0], p[3] - p[1]
    want = [(0.4 - (p[0] + p[2]) / 2) / ph / 0.1, (0.4 - (p[1] + p[3]) / 2) / pw / 0.1,
            math.log(0.4 / ph) / 0.2, math.log(0.2 / pw) / 0.2]
    np.testing.assert_allclose(box.numpy()[i], want, atol=1e-4)


def test_neg_overlap_ignores_unmatched_priors_in_the_band_and_keeps_the_rest():
    # Full-height boxes: IoU is the overlap of x intervals over their union.
    priors = np.array([[0, 0.0, 1, 0.4],    # the GT itself: IoU 1, positive
                       [0, 0.1, 1, 0.5],    # IoU 0.3/0.5 = 0.6: positive
                       [0, 0.2, 1, 0.6],    # IoU 0.2/0.6 = 1/3: in [0.3, 0.5), ignored
                       [0, 0.3, 1, 0.7],    # IoU 0.1/0.7 = 1/7: negative
                       [0, 0.6, 1, 1.0]],   # no overlap: negative
                      np.float32)
    gt = np.array([[0, 0.0, 1, 0.4]], np.float32)
    cls, _ = targets.encode(gt, [2], priors, neg_overlap=0.3)
    np.testing.assert_array_equal(cls.numpy(), [3, 3, -1, 0, 0])
    # neg_overlap == iou_threshold (SSD's 0.5 / 0.5) and None both leave every unmatched prior a negative.
    for neg in (None, 0.5):
        cls, _ = targets.encode(gt, [2], priors, neg_overlap=neg)
        np.testing.assert_array_equal(cls.numpy(), [3, 3, 0, 0, 0])


def test_neg_overlap_above_the_match_threshold_is_a_config_error():
    with pytest.raises(config.ConfigError, match="loss.neg_overlap"):
        config.LossConfig(iou_threshold=0.5, neg_overlap=0.6)
