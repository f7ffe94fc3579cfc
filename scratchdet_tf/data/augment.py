"""SSD-Caffe training augmentation and the evaluation transform, as pure stateless TF ops.

Training (docs/PAPER.md#augmentation, Caffe order): photometric distortion -> expansion (zoom out onto a
mean-filled canvas) -> min-IoU crop (7 samplers) -> warp resize with a random
interpolation -> horizontal flip -> mean subtraction. Every random draw is a
``tf.random.stateless_*`` op keyed by a seed derived from one per-element seed [2], so
the same seed gives the same result eagerly, in ``tf.data.map`` and across runs.

``augment_train`` fuses the geometry so that no expanded canvas is ever materialized:
the expansion offset and the crop window are sampled from the image size and boxes
alone; then only the part of the image visible in the crop is decoded
(``decode_and_crop_jpeg``), distorted, resized into its place in the output and
surrounded by zeros (= the mean after subtraction). Photometric ops are per-pixel, so
distorting the visible part equals Caffe's distorting the whole image before expansion;
the mean fill stays undistorted as in Caffe. The visible part is placed at whole output
pixels and the boxes are mapped with that same placement, so boxes stay aligned with the
pixels; at the image/fill border this differs from resizing a materialized canvas by less
than one output pixel.

Deviations from Caffe, by design: pixels stay float between the photometric steps (Caffe
rounds to uint8 after each); hue is shifted by +-18 degrees with wrap-around (Caffe's
8-bit OpenCV HSV adds +-18 units of 2 degrees and saturates); lanczos3 replaces
OpenCV's lanczos4; a crop trial that would keep no box counts as failed, and if the
integer crop window still keeps none the whole (expanded) image is used.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from scratchdet_tf.boxes import box_ops

# tf.image.resize methods standing in for OpenCV's linear, area, nearest, cubic, lanczos4.
INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic", "lanczos3")
# (min IoU with some GT or None = unconstrained) of Caffe's six 50-trial batch samplers.
SAMPLER_MIN_IOUS = (0.1, 0.3, 0.5, 0.7, 0.9, None)
_MIN_BOX_SIDE = 1e-4  # normalized; narrower boxes are degenerate and dropped


def photometric_distort(image, seed):
    """Caffe's ApplyDistort: brightness, contrast, saturation, hue, each with probability 0.5.

    Brightness adds U(-32, 32); contrast multiplies by U(0.5, 1.5) (Caffe scales pixel
    values, it does not pull them towards the mean); saturation multiplies HSV saturation
    by U(0.5, 1.5); hue shifts by U(-18, 18) degrees. With probability 1/2 the order is
    B, C, S, H, else B, S, H, C. Values are clipped to [0, 255] after each step.

    Args:
      image: [H, W, 3] RGB, uint8 or float in 0..255.
      seed: int [2] stateless seed.

    Returns:
      float32 [H, W, 3] in [0, 255].
    """
    image = tf.cast(image, tf.float32)
    u = tf.random.stateless_uniform([10], seed)  # 5 coin flips, then 5 magnitudes
    brightness = (2.0 * u[5] - 1.0) * 32.0
    contrast = 0.5 + u[6]
    saturation = 0.5 + u[7]
    hue = (2.0 * u[8] - 1.0) * 18.0 / 360.0
    contrast_first = u[9] < 0.5

    def maybe(apply, fn, x):
        return tf.cond(apply, lambda: tf.clip_by_value(fn(x), 0.0, 255.0), lambda: x)

    image = maybe(u[0] < 0.5, lambda x: x + brightness, image)
    image = maybe((u[1] < 0.5) & contrast_first, lambda x: x * contrast, image)
    # adjust_saturation / adjust_hue work in HSV, which is invariant to the 0..255 scale.
    image = maybe(u[2] < 0.5, lambda x: tf.image.adjust_saturation(x, saturation), image)
    image = maybe(u[3] < 0.5, lambda x: tf.image.adjust_hue(x, hue), image)
    image = maybe((u[1] < 0.5) & ~contrast_first, lambda x: x * contrast, image)
    return image


def sample_expansion(image_hw, seed, max_ratio=4.0, prob=0.5):
    """Caffe's ExpandImage geometry: with ``prob``, a canvas U[1, max_ratio] times larger.

    Args:
      image_hw: int32 [2] (height, width).
      seed: int [2] stateless seed.
      max_ratio: largest side ratio canvas / image.
      prob: probability of expanding at all.

    Returns:
      canvas_hw: int32 [2], ``floor(image_hw * ratio)``.
      offset: int32 [2] (y, x) of the image's top-left pixel in the canvas, uniform integer.
    """
    image_hw = tf.cast(image_hw, tf.int32)
    u = tf.random.stateless_uniform([4], seed)
    ratio = tf.where(u[0] < prob, 1.0 + (max_ratio - 1.0) * u[1], 1.0)
    canvas_hw = tf.maximum(tf.cast(tf.cast(image_hw, tf.float32) * ratio, tf.int32), image_hw)
    offset = tf.cast(tf.floor(u[2:] * tf.cast(canvas_hw - image_hw, tf.float32)), tf.int32)
    return canvas_hw, offset


def sample_crop(boxes, seed, min_ious: Sequence = SAMPLER_MIN_IOUS, num_trials=50):
    """Caffe's batch samplers with emit constraint CENTER, all trials drawn at once.

    Candidates: the whole image, plus for each sampler the first of ``num_trials`` random
    boxes (scale U[0.3, 1], aspect U[0.5, 2] clamped to [scale^2, 1/scale^2], width
    scale*sqrt(aspect), height scale/sqrt(aspect), uniform position) whose IoU with some
    ground-truth box reaches the sampler's minimum and that contains the centre of at
    least one ground-truth box. One candidate is picked uniformly among the found ones.
    Without boxes only the whole image is found.

    Args:
      boxes: float32 [N, 4] normalized yxyx (in the expanded canvas).
      seed: int [2] stateless seed.
      min_ious: per sampler, the minimum IoU or None for unconstrained.
      num_trials: trials per sampler.

    Returns:
      float32 [4] the crop, normalized yxyx.
    """
    boxes = tf.reshape(tf.convert_to_tensor(boxes, tf.float32), [-1, 4])
    num_samplers = len(min_ious)
    k = num_samplers * num_trials
    seeds = tf.random.experimental.stateless_split(seed, 2)
    u = tf.random.stateless_uniform([k, 4], seeds[0])
    scale = 0.3 + 0.7 * u[:, 0]
    aspect = tf.clip_by_value(0.5 + 1.5 * u[:, 1], scale ** 2, 1.0 / scale ** 2)
    width = scale * tf.sqrt(aspect)
    height = scale / tf.sqrt(aspect)
    xmin = u[:, 2] * (1.0 - width)
    ymin = u[:, 3] * (1.0 - height)
    candidates = tf.stack([ymin, xmin, ymin + height, xmin + width], axis=1)  # [k, 4]

    iou = box_ops.iou(candidates, boxes)  # [k, N]
    thresholds = tf.repeat(tf.constant([-1.0 if t is None else t for t in min_ious], tf.float32), num_trials)
    meets_iou = tf.reduce_any(iou >= thresholds[:, None], axis=1)  # N == 0 -> False
    centre_y = (boxes[:, 0] + boxes[:, 2]) / 2.0
    centre_x = (boxes[:, 1] + boxes[:, 3]) / 2.0
    holds_centre = ((centre_y[None] >= candidates[:, 0:1]) & (centre_y[None] <= candidates[:, 2:3])
                    & (centre_x[None] >= candidates[:, 1:2]) & (centre_x[None] <= candidates[:, 3:4]))  # [k, N]
    ok = tf.reshape(meets_iou & tf.reduce_any(holds_centre, axis=1), [num_samplers, num_trials])
    first = tf.argmax(tf.cast(ok, tf.int32), axis=1, output_type=tf.int32)  # first success per sampler
    found = tf.concat([[True], tf.reduce_any(ok, axis=1)], 0)  # [1 + samplers]; the whole image always
    chosen = tf.concat([[[0.0, 0.0, 1.0, 1.0]],
                        tf.gather(candidates, tf.range(num_samplers) * num_trials + first)], 0)
    # Uniform pick among found candidates: the r-th True of `found`.
    count = tf.reduce_sum(tf.cast(found, tf.int32))
    r = tf.minimum(tf.cast(tf.random.stateless_uniform([], seeds[1]) * tf.cast(count, tf.float32), tf.int32),
                   count - 1)
    index = tf.argmax(tf.cast(found, tf.int32) * tf.cast(tf.equal(tf.cumsum(tf.cast(found, tf.int32)) - 1, r),
                                                         tf.int32), output_type=tf.int32)
    return chosen[index]


def _layout(image_hw, offset, window, boxes, image_size):
    """Where a canvas crop window's visible image part lands in the [S, S] output.

    Args:
      image_hw: float32 [2].
      offset: float32 [2] image offset in the canvas.
      window: float32 [4] (y, x, h, w) integer-valued crop window in canvas pixels.
      boxes: float32 [N, 4] normalized yxyx in the image.
      image_size: S.

    Returns:
      dict: ``visible`` int32 [4] (y, x, h, w) image pixels to read; ``placement`` int32 [4]
      (y0, x0, y1, x1) output pixels they are resized into; ``boxes`` float32 [N, 4]
      normalized in the output; ``keep`` bool [N] (centre in the window, not degenerate).
    """
    size = float(image_size)
    start, extent = window[:2], window[2:]
    lo = tf.clip_by_value(start - offset, 0.0, image_hw)  # visible part, image pixels
    hi = tf.maximum(tf.clip_by_value(start + extent - offset, 0.0, image_hw), tf.minimum(lo + 1.0, image_hw))
    lo = tf.minimum(lo, hi - 1.0)
    out_lo = tf.clip_by_value(tf.round((lo + offset - start) * size / extent), 0.0, size - 1.0)
    out_hi = tf.clip_by_value(tf.round((hi + offset - start) * size / extent), out_lo + 1.0, size)
    scale = (out_hi - out_lo) / (hi - lo)  # output pixels per image pixel, (y, x)
    pixels = boxes * tf.tile(image_hw, [2])
    mapped = (tf.tile(out_lo, [2]) + (pixels - tf.tile(lo, [2])) * tf.tile(scale, [2])) / size
    mapped = box_ops.clip(mapped)
    centre = (pixels[:, :2] + pixels[:, 2:]) / 2.0 + offset  # canvas pixels
    inside = tf.reduce_all((centre >= start) & (centre <= start + extent), axis=1)
    keep = (inside & (mapped[:, 2] - mapped[:, 0] > _MIN_BOX_SIDE) & (mapped[:, 3] - mapped[:, 1] > _MIN_BOX_SIDE))
    return {
        "visible": tf.cast(tf.concat([lo, hi - lo], 0), tf.int32),
        "placement": tf.cast(tf.concat([out_lo, out_hi], 0), tf.int32),
        "boxes": mapped,
        "keep": keep,
    }


def _read_window(image, visible):
    """uint8 [h, w, 3] pixels of ``visible`` (y, x, h, w) from a decoded image or encoded bytes."""
    if image.dtype != tf.string:
        return tf.slice(image, tf.concat([visible[:2], [0]], 0), tf.concat([visible[2:], [3]], 0))
    return tf.cond(
        is_jpeg(image),
        lambda: tf.io.decode_and_crop_jpeg(image, visible, channels=3),
        lambda: tf.slice(tf.io.decode_image(image, channels=3, expand_animations=False),
                         tf.concat([visible[:2], [0]], 0), tf.concat([visible[2:], [3]], 0)))


def is_jpeg(data):
    """bool []: ``data`` starts with the JPEG SOI marker."""
    return tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff")


def image_shape(image):
    """int32 [2] (height, width) of a decoded image or of encoded bytes (JPEG: header only)."""
    if image.dtype != tf.string:
        return tf.shape(image)[:2]
    # Other formats are decoded twice (here and in _read_window); VOC and COCO are all JPEG.
    return tf.cond(is_jpeg(image), lambda: tf.io.extract_jpeg_shape(image)[:2],
                   lambda: tf.shape(tf.io.decode_image(image, channels=3, expand_animations=False))[:2])


def resize(image, size, method_index):
    """Warp-resizes with one of ``INTERPOLATIONS`` chosen by a (possibly traced) index.

    Args:
      image: float32 [H, W, 3].
      size: int32 [2] output (height, width).
      method_index: int32 [] index into ``INTERPOLATIONS``.

    Returns:
      float32 [size[0], size[1], 3].
    """
    branches = [lambda m=m: tf.image.resize(image, size, method=m) for m in INTERPOLATIONS]
    return tf.switch_case(method_index, branches)


def random_flip(image, boxes, seed, prob=0.5):
    """Mirrors image and boxes left-right with probability ``prob``.

    Args:
      image: [H, W, C].
      boxes: float32 [N, 4] normalized yxyx.
      seed: int [2] stateless seed.
      prob: flip probability.

    Returns:
      (image, boxes) of the same shapes.
    """
    flip = tf.random.stateless_uniform([], seed) < prob
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    flipped = tf.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], axis=1)
    return image, tf.where(flip, flipped, boxes)


def augment_train(image, boxes, labels, difficult, seed, *, image_size, mean_rgb,
                  expand_prob=0.5, max_expand_ratio=4.0, flip_prob=0.5, photometric=True, crop=True):
    """The full SSD-Caffe training augmentation of one image (see the module docstring).

    Args:
      image: uint8 [H, W, 3], or a scalar string of encoded JPEG/PNG/GIF/BMP bytes (JPEGs
        are then decoded only inside the crop window).
      boxes: float32 [N, 4] normalized yxyx.
      labels: int32 [N].
      difficult: bool [N].
      seed: int [2] stateless seed of this element.
      image_size: S, the square output side.
      mean_rgb: 3 floats subtracted from the output.
      expand_prob: probability of the zoom-out expansion.
      max_expand_ratio: its largest ratio.
      flip_prob: probability of the horizontal flip.
      photometric: apply ``photometric_distort`` (False keeps the colours).
      crop: sample the min-IoU crop (False keeps the whole, possibly expanded, canvas).

    Returns:
      image: float32 [S, S, 3] mean-subtracted RGB.
      boxes: float32 [M, 4] normalized yxyx, M <= N (boxes whose centre left the crop are dropped).
      labels: int32 [M].
      difficult: bool [M].
    """
    boxes = tf.reshape(tf.convert_to_tensor(boxes, tf.float32), [-1, 4])
    seeds = tf.random.experimental.stateless_split(seed, 5)
    hw = image_shape(image)
    hw_f = tf.cast(hw, tf.float32)

    # --- geometry: expansion and crop from sizes and boxes alone ---
    canvas_hw, offset = sample_expansion(hw, seeds[0], max_expand_ratio, expand_prob)
    canvas_f, offset_f = tf.cast(canvas_hw, tf.float32), tf.cast(offset, tf.float32)
    canvas_boxes = (boxes * tf.tile(hw_f, [2]) + tf.tile(offset_f, [2])) / tf.tile(canvas_f, [2])
    crop_box = sample_crop(canvas_boxes, seeds[1]) if crop else tf.constant([0.0, 0.0, 1.0, 1.0])
    # Caffe's CropImage: integer pixel window from the clipped normalized crop.
    start = tf.floor(tf.clip_by_value(crop_box[:2], 0.0, 1.0) * canvas_f)
    extent = tf.maximum(tf.floor((crop_box[2:] - crop_box[:2]) * canvas_f), 1.0)
    extent = tf.minimum(extent, canvas_f - start)
    layout = _layout(hw_f, offset_f, tf.concat([start, extent], 0), boxes, image_size)
    whole = _layout(hw_f, offset_f, tf.concat([[0.0, 0.0], canvas_f], 0), boxes, image_size)
    # An image left with no box keeps the uncropped canvas.
    use_whole = tf.logical_and(tf.shape(boxes)[0] > 0, tf.logical_not(tf.reduce_any(layout["keep"])))
    layout = tf.nest.map_structure(lambda a, b: tf.where(use_whole, b, a), layout, whole)

    # --- pixels: decode the visible part, distort, resize into place, pad with the mean ---
    pixels = tf.cast(_read_window(image, layout["visible"]), tf.float32)
    if photometric:
        pixels = photometric_distort(pixels, seeds[2])
    mean = tf.constant(mean_rgb, tf.float32)
    pixels = pixels - mean
    method = tf.random.stateless_uniform([], seeds[3], 0, len(INTERPOLATIONS), dtype=tf.int32)
    place = layout["placement"]
    pixels = resize(pixels, place[2:] - place[:2], method)
    pixels = tf.clip_by_value(pixels, -mean, 255.0 - mean)  # bicubic/lanczos overshoot; Caffe saturates uint8
    pixels = tf.pad(pixels, [[place[0], image_size - place[2]], [place[1], image_size - place[3]], [0, 0]])
    pixels = tf.ensure_shape(pixels, [image_size, image_size, 3])

    keep = layout["keep"]
    pixels, out_boxes = random_flip(pixels, tf.boolean_mask(layout["boxes"], keep), seeds[4], flip_prob)
    return pixels, out_boxes, tf.boolean_mask(labels, keep), tf.boolean_mask(difficult, keep)


def transform_eval(image, *, image_size, mean_rgb):
    """The evaluation transform: bilinear warp to S x S and mean subtraction (boxes unchanged).

    The one definition used by evaluation, the serving signatures, multi-scale testing and TFLite
    calibration (``mean_rgb`` 0 there: the model subtracts it).

    Args:
      image: uint8 (or float) [H, W, 3], or a batch [B, H, W, 3].
      image_size: S, or an [h, w] pair / int32 [2] tensor for a non-square warp.
      mean_rgb: 3 floats.

    Returns:
      float32 [S, S, 3] ([B, S, S, 3] for a batch).
    """
    square = isinstance(image_size, (int, np.integer))
    size = [image_size, image_size] if square else image_size
    image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")
    image = image - tf.constant(mean_rgb, tf.float32)
    return tf.ensure_shape(image, [*([None] * (image.shape.rank - 3)), image_size, image_size, 3]) if square else image
