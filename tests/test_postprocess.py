"""postprocess: NMS against a numpy greedy twin, DetectionOutput against a numpy twin, batching, SavedModel."""

import numpy as np
import pytest
import tensorflow as tf

from scratchdet_tf import config
from scratchdet_tf.boxes import anchors as anchors_lib
from scratchdet_tf.boxes import postprocess

VOC300_FEATURE_MAPS = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]


def numpy_iou(a, b):
    a, b = a.astype(np.float64)[:, None], b.astype(np.float64)[None]
    ih = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iw = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ih * iw
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return np.where(union - inter > 0, inter / np.maximum(union - inter, 1e-12), 0.0)


def numpy_nms(boxes, threshold):
    """Greedy NMS of boxes already sorted by score; indices kept (Caffe ApplyNMSFast, eta 1)."""
    keep = []
    overlaps = numpy_iou(boxes, boxes)
    for i in range(len(boxes)):
        if all(overlaps[k, i] <= threshold for k in keep):
            keep.append(i)
    return keep


def numpy_detect(logits, deltas, priors, score_threshold, top_k, nms_threshold, keep_top_k):
    """Caffe DetectionOutput for one image: list of (score, label, box), best first."""
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    p = priors.astype(np.float64)
    p_size, p_ctr = p[:, 2:] - p[:, :2], (p[:, :2] + p[:, 2:]) / 2
    ctr = deltas[:, :2] * 0.1 * p_size + p_ctr
    size = np.exp(deltas[:, 2:] * 0.2) * p_size
    boxes = np.concatenate([ctr - size / 2, ctr + size / 2], 1)
    dets = []
    for c in range(1, logits.shape[-1]):
        idx = np.flatnonzero(probs[:, c] > score_threshold)
        idx = idx[np.argsort(-probs[idx, c], kind="stable")][:top_k]
        for i in np.asarray(idx)[numpy_nms(boxes[idx], nms_threshold)]:
            dets.append((probs[i, c], c - 1, np.clip(boxes[i], 0, 1)))
    return sorted(dets, key=lambda d: -d[0])[:keep_top_k]


def random_boxes(rng, n):
    centre = rng.uniform(0.2, 0.8, (n, 2))
    size = rng.uniform(0.05, 0.4, (n, 2))
    return np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)


def small_anchors():
    return anchors_lib.ssd_anchors([(4, 4), (2, 2)], 100, min_sizes=[25, 50], max_sizes=[50, 90],
                                   aspect_ratios=[[2], [2]], steps=None)  # [80, 4]


def test_nms_keeps_expected_set_on_hand_built_case():
    boxes = np.array([
        [0.0, 0.0, 0.4, 0.4],  # 0: kept (best)
        [0.0, 0.1, 0.4, 0.5],  # 1: IoU 0.6 with 0 -> suppressed
        [0.0, 0.2, 0.4, 0.6],  # 2: IoU 0.33 with 0, 0.6 with 1, but 1 is gone -> kept
        [0.6, 0.6, 0.9, 0.9],  # 3: disjoint -> kept
        [0.6, 0.6, 0.9, 0.9],  # 4: duplicate of 3 -> suppressed
        [0.6, 0.0, 0.9, 0.3],  # 5: disjoint but invalid (below the score threshold)
    ], np.float32)
    valid = np.array([True, True, True, True, True, False])
    np.testing.assert_array_equal(postprocess.nms_mask(boxes, valid, 0.45).numpy(),
                                  [True, False, True, True, False, False])


@pytest.mark.parametrize("seed", range(5))
def test_nms_agrees_with_numpy_greedy_nms_on_random_boxes(seed):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 2 * 3 * 40).reshape(2, 3, 40, 4)  # [B, C, K, 4], sorted by assumption
    keep = postprocess.nms_mask(boxes, np.ones((2, 3, 40), bool), 0.45).numpy()
    for b in range(2):
        for c in range(3):
            np.testing.assert_array_equal(np.flatnonzero(keep[b, c]), numpy_nms(boxes[b, c], 0.45))


@pytest.mark.parametrize("seed", range(3))
def test_detect_agrees_with_numpy_detection_output(seed):
    rng = np.random.default_rng(seed)
    priors = small_anchors()
    logits = rng.normal(size=(2, 80, 5)).astype(np.float32) * 3
    deltas = rng.normal(size=(2, 80, 4)).astype(np.float32)
    kwargs = dict(score_threshold=0.05, pre_nms_top_k=25, nms_iou_threshold=0.45, max_detections=30)
    got = postprocess.detect(logits, deltas, priors, **kwargs)
    for b in range(2):
        want = numpy_detect(logits[b], deltas[b], priors, 0.05, 25, 0.45, 30)
        n = int(got["num_detections"][b])
        assert n == len(want) == 30  # the final keep-top-k cut applies
        np.testing.assert_allclose(got["scores"][b, :n], [d[0] for d in want], rtol=1e-5)
        np.testing.assert_array_equal(got["classes"][b, :n], [d[1] for d in want])
        np.testing.assert_allclose(got["boxes"][b, :n], np.stack([d[2] for d in want]), atol=1e-5)


def test_detect_on_batch_with_mixed_detection_counts():
    priors = small_anchors()
    logits = np.zeros((3, 80, 4), np.float32)
    logits[:, :, 0] = 10.0  # background everywhere: no detections ...
    logits[0, 3, 2] = 20.0  # ... except prior 3 as label 1 in image 0
    logits[0, 70, 3] = 20.0  # and prior 70 as label 2
    logits[2, 40, 1] = 20.0  # and prior 40 as label 0 in image 2
    deltas = np.zeros((3, 80, 4), np.float32)
    got = postprocess.detect(logits, deltas, priors, max_detections=10)
    np.testing.assert_array_equal(got["num_detections"].numpy(), [2, 0, 1])
    np.testing.assert_array_equal(got["classes"].numpy()[0, :2], [1, 2])
    np.testing.assert_array_equal(got["classes"].numpy()[2, :1], [0])
    np.testing.assert_allclose(got["boxes"].numpy()[0, 1], np.clip(priors[70], 0, 1), atol=1e-6)
    assert got["boxes"].shape == (3, 10, 4) and got["scores"].shape == (3, 10) and got["classes"].dtype == tf.int32
    assert not got["scores"].numpy()[1].any() and not got["boxes"].numpy()[0, 2:].any()


def test_detect_in_saved_model_with_varying_batch(tmp_path):
    priors = small_anchors()
    module = tf.Module()
    module.detect = tf.function(
        lambda logits, deltas: postprocess.detect(logits, deltas, priors, max_detections=20),
        input_signature=[tf.TensorSpec([None, 80, 4], tf.float32), tf.TensorSpec([None, 80, 4], tf.float32)])
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    rng = np.random.default_rng(3)
    for batch in (1, 3):
        logits = rng.normal(size=(batch, 80, 4)).astype(np.float32) * 3
        deltas = rng.normal(size=(batch, 80, 4)).astype(np.float32)
        got, want = loaded.detect(logits, deltas), postprocess.detect(logits, deltas, priors, max_detections=20)
        assert got["boxes"].shape == (batch, 20, 4)
        for key in want:
            np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-6)


def test_detect_with_voc300_priors_keeps_at_most_200_sorted():
    priors = anchors_lib.anchors_from_config(config.AnchorConfig(), 300, VOC300_FEATURE_MAPS)
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(1, len(priors), 21)).astype(np.float32)
    deltas = rng.normal(size=(1, len(priors), 4)).astype(np.float32)
    got = postprocess.detect(tf.cast(logits, tf.bfloat16), deltas, priors)
    scores = got["scores"].numpy()[0]
    assert got["num_detections"].numpy()[0] == 200 and np.all(np.diff(scores) <= 0) and scores[-1] > 0.01
    assert got["boxes"].numpy().min() >= 0 and got["boxes"].numpy().max() <= 1
