"""Tests for SSD-Caffe augmentation: every op eagerly and inside tf.data.map, boxes aligned with pixels."""

import numpy as np
import pytest
import tensorflow as tf

from scratchdet_tf.data import augment

MEAN = (123.0, 117.0, 104.0)


def in_map(fn, *args):
    """fn(*args) computed inside tf.data.Dataset.map."""
    ds = tf.data.Dataset.from_tensors(tuple(tf.convert_to_tensor(a) for a in args)).map(fn)
    return tf.nest.map_structure(lambda t: t.numpy(), next(iter(ds)))


def eager(fn, *args):
    return tf.nest.map_structure(lambda t: t.numpy(), fn(*(tf.convert_to_tensor(a) for a in args)))


def seed(i):
    return np.array([7, i], np.int64)


def two_rectangles(height=120, width=160):
    """Grey image with a red rectangle (label 0) and a blue one (label 1); boxes in edge coordinates."""
    image = np.full((height, width, 3), 128, np.uint8)
    image[20:60, 25:75] = (255, 0, 0)
    image[70:110, 90:150] = (0, 0, 255)
    boxes = np.array([[20 / height, 25 / width, 60 / height, 75 / width],
                      [70 / height, 90 / width, 110 / height, 150 / width]], np.float32)
    return image, boxes, np.array([0, 1], np.int32), np.array([False, True])


def check_alignment(image, boxes, labels, size, tol=1.25):
    """Each kept box frames the pixels of its colour (within interpolation blur of ~1 output pixel)."""
    rgb = image + np.array(MEAN, np.float32)
    masks = {0: rgb[..., 0] - np.maximum(rgb[..., 1], rgb[..., 2]) > 40,
             1: rgb[..., 2] - np.maximum(rgb[..., 0], rgb[..., 1]) > 40}
    assert len(boxes) >= 1
    for box, label in zip(boxes, labels):
        ys, xs = np.nonzero(masks[int(label)])
        assert len(ys), f"box {box} of label {label} frames no pixels"
        np.testing.assert_allclose(box * size, [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], atol=tol)


def test_photometric_same_eagerly_and_in_map_and_within_range():
    image = np.random.default_rng(0).integers(0, 256, (6, 5, 3)).astype(np.uint8)
    for i in range(4):
        a = eager(augment.photometric_distort, image, seed(i))
        b = in_map(augment.photometric_distort, image, seed(i))
        np.testing.assert_allclose(a, b, atol=1e-4)
        assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 255


def test_photometric_keeps_grey_grey_and_skips_brightness_and_contrast_one_time_in_four():
    grey = np.full((4, 4, 3), 100, np.uint8)
    ds = tf.data.Dataset.range(400).map(
        lambda i: augment.photometric_distort(grey, tf.stack([tf.constant(1, tf.int64), i])))
    outputs = np.stack(list(ds.as_numpy_iterator()))
    np.testing.assert_allclose(outputs[..., 0], outputs[..., 2], atol=1e-3)  # no op colours a grey pixel
    unchanged = np.mean(np.all(np.abs(outputs - 100) < 1e-3, axis=(1, 2, 3)))
    assert 0.18 < unchanged < 0.32  # saturation and hue leave grey alone; the other two each skip with p = 1/2
    assert outputs.min() >= (100 - 32) * 0.5 - 1e-3 and outputs.max() <= (100 + 32) * 1.5 + 1e-3  # brightness first


def test_sample_expansion_bounds_and_probability():
    hw = np.array([30, 50], np.int32)
    ds = tf.data.Dataset.range(300).map(lambda i: augment.sample_expansion(hw, tf.stack([tf.constant(2, tf.int64), i])))
    canvas, offset = (np.stack(x) for x in zip(*ds.as_numpy_iterator()))
    assert np.all(canvas >= hw) and np.all(canvas <= 4 * hw)
    assert np.all(offset >= 0) and np.all(offset <= canvas - hw)
    assert 0.4 < np.mean(np.any(canvas > hw, axis=1)) < 0.6
    np.testing.assert_array_equal(eager(augment.sample_expansion, hw, seed(3)),
                                  in_map(augment.sample_expansion, hw, seed(3)))


def caffe_sample_crop(boxes, seed_value):
    """Caffe's loop (GenerateBatchSamples then a uniform pick) on the same random draws."""
    seeds = tf.random.experimental.stateless_split(seed_value, 2)
    u = tf.random.stateless_uniform([300, 4], seeds[0]).numpy()
    r = float(tf.random.stateless_uniform([], seeds[1]))
    found = [np.array([0.0, 0.0, 1.0, 1.0])]
    for s, min_iou in enumerate(augment.SAMPLER_MIN_IOUS):
        for t in range(50):
            scale, aspect, fx, fy = u[s * 50 + t]
            scale = 0.3 + 0.7 * scale
            aspect = min(max(0.5 + 1.5 * aspect, scale ** 2), 1 / scale ** 2)
            w, h = scale * np.sqrt(aspect), scale / np.sqrt(aspect)
            crop = np.array([fy * (1 - h), fx * (1 - w), fy * (1 - h) + h, fx * (1 - w) + w])
            ok_iou = ok_centre = False
            for b in boxes:
                inter = (max(0, min(crop[2], b[2]) - max(crop[0], b[0]))
                         * max(0, min(crop[3], b[3]) - max(crop[1], b[1])))
                iou = inter / (h * w + (b[2] - b[0]) * (b[3] - b[1]) - inter)
                ok_iou |= min_iou is None or iou >= min_iou
                cy, cx = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
                ok_centre |= crop[0] <= cy <= crop[2] and crop[1] <= cx <= crop[3]
            if ok_iou and ok_centre:
                found.append(crop)
                break
    return found[min(int(r * len(found)), len(found) - 1)]


def test_sample_crop_vectorized_equals_the_caffe_loop():
    boxes = np.array([[0.1, 0.1, 0.5, 0.4], [0.45, 0.5, 0.95, 0.9], [0.3, 0.3, 0.35, 0.36]], np.float32)
    for i in range(6):
        expected = caffe_sample_crop(boxes, seed(i))
        np.testing.assert_allclose(eager(augment.sample_crop, boxes, seed(i)), expected, atol=1e-5)
        np.testing.assert_allclose(in_map(augment.sample_crop, boxes, seed(i)), expected, atol=1e-5)


def test_sample_crop_without_boxes_is_the_whole_image():
    np.testing.assert_array_equal(in_map(augment.sample_crop, np.zeros((0, 4), np.float32), seed(0)), [0, 0, 1, 1])


def test_random_flip_mirrors_pixels_and_boxes():
    image, boxes, _, _ = two_rectangles()
    flips = 0
    for i in range(6):
        out, out_boxes = eager(augment.random_flip, image, boxes, seed(i))
        again = in_map(augment.random_flip, image, boxes, seed(i))
        np.testing.assert_array_equal(out, again[0])
        if not np.array_equal(out, image):
            flips += 1
            np.testing.assert_array_equal(out, image[:, ::-1])
            np.testing.assert_allclose(out_boxes[:, [1, 3]], 1 - boxes[:, [3, 1]])
        else:
            np.testing.assert_array_equal(out_boxes, boxes)
    assert 0 < flips < 6


@pytest.mark.parametrize("index", range(len(augment.INTERPOLATIONS)))
def test_resize_each_method_keeps_a_constant_image(index):
    image = np.full((9, 13, 3), 42.0, np.float32)
    fn = lambda x, size: augment.resize(x, size, tf.constant(index))  # noqa: E731
    for out in (eager(fn, image, [20, 7]), in_map(fn, image, np.array([20, 7], np.int32))):
        assert out.shape == (20, 7, 3)
        np.testing.assert_allclose(out, 42.0, atol=1e-3)


def augment_fn(size):
    def fn(image, boxes, labels, difficult, seed_value):
        return augment.augment_train(image, boxes, labels, difficult, seed_value, image_size=size, mean_rgb=MEAN)
    return fn


def test_augment_train_boxes_frame_their_pixels_eagerly():
    image, boxes, labels, difficult = two_rectangles()
    for i in range(16):
        out, out_boxes, out_labels, out_difficult = eager(augment_fn(64), image, boxes, labels, difficult, seed(i))
        assert out.shape == (64, 64, 3) and out.dtype == np.float32
        np.testing.assert_array_equal(out_difficult, out_labels == 1)  # flags follow their boxes
        check_alignment(out, out_boxes, out_labels, 64)


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_augment_train_on_encoded_bytes_inside_map(encoding):
    image, boxes, labels, difficult = two_rectangles()
    data = (tf.io.encode_png(image) if encoding == "png"
            else tf.io.encode_jpeg(image, quality=100, chroma_downsampling=False))
    ds = tf.data.Dataset.range(10).map(
        lambda i: augment_fn(64)(data, boxes, labels, difficult, tf.stack([tf.constant(9, tf.int64), i])))
    for out, out_boxes, out_labels, _ in ds.as_numpy_iterator():
        check_alignment(out, out_boxes, out_labels, 64)


def test_augment_train_same_seed_same_result_eagerly_and_in_map():
    args = two_rectangles() + (seed(5),)
    a, b = eager(augment_fn(64), *args), in_map(augment_fn(64), *args)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-3)
    c = eager(augment_fn(64), *(two_rectangles() + (seed(6),)))
    assert not np.allclose(a[0], c[0])


def test_augment_train_keeps_at_least_one_box_and_accepts_none():
    image, boxes, labels, difficult = two_rectangles()
    tiny = np.array([[0.5, 0.5, 0.52, 0.52]], np.float32)
    ds = tf.data.Dataset.range(40).map(
        lambda i: augment_fn(32)(image, tiny, labels[:1], difficult[:1], tf.stack([tf.constant(3, tf.int64), i])))
    assert all(len(b) == 1 for _, b, _, _ in ds.as_numpy_iterator())
    out, out_boxes, out_labels, _ = eager(augment_fn(32), image, np.zeros((0, 4), np.float32),
                                          np.zeros([0], np.int32), np.zeros([0], bool), seed(0))
    assert out.shape == (32, 32, 3) and out_boxes.shape == (0, 4) and out_labels.shape == (0,)


def test_transform_eval_warps_and_subtracts_the_mean():
    image = np.full((10, 30, 3), (200, 100, 50), np.uint8)
    fn = lambda x: augment.transform_eval(x, image_size=16, mean_rgb=MEAN)  # noqa: E731
    for out in (eager(fn, image), in_map(fn, image)):
        assert out.shape == (16, 16, 3)
        np.testing.assert_allclose(out[3, 5], [77, -17, -54], atol=1e-4)


def test_augmentation_strength_options_keep_colours_and_skip_the_mean_filled_expansion():
    # A uniform image: without photometric distortion and expansion every output pixel keeps its value
    # (any crop of a uniform image, resized by any method, is uniform); the full recipe changes some.
    image = np.full((40, 60, 3), 200, np.uint8)
    boxes = np.array([[0.2, 0.2, 0.8, 0.8]], np.float32)
    labels, difficult = np.array([1], np.int32), np.array([False])
    changed = 0
    for i in range(12):
        mild = augment.augment_train(image, boxes, labels, difficult, seed(i), image_size=32, mean_rgb=MEAN,
                                     expand_prob=0.0, photometric=False)[0].numpy()
        np.testing.assert_allclose(mild, np.broadcast_to(200.0 - np.asarray(MEAN, np.float32), mild.shape),
                                   atol=1e-3)
        full = augment.augment_train(image, boxes, labels, difficult, seed(i), image_size=32, mean_rgb=MEAN)[0]
        changed += not np.allclose(full.numpy(), 200.0 - np.asarray(MEAN, np.float32), atol=1e-3)
    assert changed > 0
