"""box_ops: IoU against a brute-force twin, the CENTER_SIZE coder by hand, format helpers."""

import math

import numpy as np
import tensorflow as tf

from scratchdet_tf.boxes import box_ops


def random_boxes(rng, n):
    """float32 [n, 4] yxyx boxes inside [0, 1]."""
    centre = rng.uniform(0.1, 0.9, (n, 2))
    size = rng.uniform(0.02, 0.6, (n, 2))
    return np.clip(np.concatenate([centre - size / 2, centre + size / 2], 1), 0, 1).astype(np.float32)


def numpy_iou(a, b):
    """Brute force, one pair at a time, float64."""
    out = np.zeros((len(a), len(b)))
    for i, (ay0, ax0, ay1, ax1) in enumerate(a.astype(np.float64)):
        for j, (by0, bx0, by1, bx1) in enumerate(b.astype(np.float64)):
            ih = max(0.0, min(ay1, by1) - max(ay0, by0))
            iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
            inter = ih * iw
            union = (ay1 - ay0) * (ax1 - ax0) + (by1 - by0) * (bx1 - bx0) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def test_iou_matches_brute_force_on_random_boxes():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 17), random_boxes(rng, 23)
    np.testing.assert_allclose(box_ops.iou(a, b).numpy(), numpy_iou(a, b), atol=1e-6)


def test_iou_hand_computed_values():
    a = [[0.0, 0.0, 0.5, 0.5]]
    b = [[0.0, 0.0, 0.5, 0.5],  # identical: 1
         [0.25, 0.0, 0.75, 0.5],  # half shifted: 0.125 / 0.375 = 1/3
         [0.5, 0.5, 1.0, 1.0],  # touching corner: 0
         [0.0, 0.0, 0.25, 0.25]]  # contained quarter: 1/4
    np.testing.assert_allclose(box_ops.iou(a, b).numpy(), [[1.0, 1 / 3, 0.0, 0.25]], atol=1e-6)


def test_iou_of_empty_boxes_is_zero_not_nan():
    zero = [[0.3, 0.3, 0.3, 0.3]]
    np.testing.assert_array_equal(box_ops.iou(zero, zero).numpy(), [[0.0]])


def test_iou_broadcasts_over_batch():
    rng = np.random.default_rng(1)
    a = np.stack([random_boxes(rng, 5), random_boxes(rng, 5)])
    b = np.stack([random_boxes(rng, 7), random_boxes(rng, 7)])
    got = box_ops.iou(a, b).numpy()
    assert got.shape == (2, 5, 7)
    np.testing.assert_allclose(got[1], numpy_iou(a[1], b[1]), atol=1e-6)


def test_encode_hand_computed_offsets():
    anchor = [[0.2, 0.4, 0.6, 0.6]]  # centre (0.4, 0.5), size (0.4, 0.2)
    # Centre moved by half the anchor height down, width doubled.
    gt = [[0.4, 0.3, 0.8, 0.7]]  # centre (0.6, 0.5), size (0.4, 0.4)
    expected = [[(0.2 / 0.4) / 0.1, 0.0, math.log(1.0) / 0.2, math.log(2.0) / 0.2]]
    np.testing.assert_allclose(box_ops.encode(gt, anchor).numpy(), expected, atol=1e-5)


def test_gt_equal_to_anchor_encodes_to_zero():
    rng = np.random.default_rng(2)
    boxes = random_boxes(rng, 9)
    np.testing.assert_allclose(box_ops.encode(boxes, boxes).numpy(), 0.0, atol=1e-5)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(3)
    anchors, gt = random_boxes(rng, 50), random_boxes(rng, 50)
    deltas = box_ops.encode(gt, anchors)
    np.testing.assert_allclose(box_ops.decode(deltas, anchors).numpy(), gt, atol=1e-5)


def test_decode_broadcasts_anchors_over_batch_and_accepts_bfloat16():
    rng = np.random.default_rng(4)
    anchors = random_boxes(rng, 6)
    deltas = rng.normal(size=(3, 6, 4)).astype(np.float32)
    got = box_ops.decode(tf.cast(deltas, tf.bfloat16), anchors)
    assert got.dtype == tf.float32 and got.shape == (3, 6, 4)
    np.testing.assert_allclose(got.numpy()[2], box_ops.decode(deltas[2], anchors).numpy(), atol=0.05)


def test_decode_caps_huge_size_offsets():
    boxes = box_ops.decode([[0.0, 0.0, 1e4, 1e4]], [[0.4, 0.4, 0.6, 0.6]]).numpy()
    assert np.all(np.isfinite(boxes))


def test_center_size_round_trip():
    boxes = random_boxes(np.random.default_rng(5), 10)
    cs = box_ops.to_center_size(boxes).numpy()
    np.testing.assert_allclose(cs[:, 2], boxes[:, 2] - boxes[:, 0], atol=1e-6)
    np.testing.assert_allclose(box_ops.from_center_size(cs).numpy(), boxes, atol=1e-6)


def test_clip_to_unit_square():
    np.testing.assert_allclose(box_ops.clip([[-0.1, 0.2, 1.3, 0.9]]).numpy(), [[0.0, 0.2, 1.0, 0.9]], atol=1e-7)
