"""SavedModel export with TF Object Detection API serving signatures (``predictor`` loads them back).

An export directory ``E`` (a TF Serving model version folder) holds::

    saved_model.pb, variables/     signatures serving_default (uint8 images) and serving_bytes (JPEG/PNG);
                                   with export.optimize the weights are graph constants (variables/ is empty)
    assets/labels.txt              the label map: class names, one a line, label order (class id - 1)
    assets.extra/export_info.json  config, conv MACs, class names, post-processing settings, TFLite files
    model_<mode>.tflite            optional, see ``export_tflite``

Both signatures resize (bilinear warp to S x S), subtract the RGB mean, run the network and
``postprocess.detect`` inside the graph and return the TF OD API outputs:
``detection_boxes`` float32 [B, N, 4] normalized [ymin, xmin, ymax, xmax] of the input image,
``detection_scores`` float32 [B, N], ``detection_classes`` float32 [B, N] 1-based (data label + 1),
``num_detections`` float32 [B]. Entries past ``num_detections`` are zero.

Export uses ``keras.export.ExportArchive`` (docs/DECISIONS.md#keras-3-export-trap: a ``tf.saved_model.save`` of a
``tf.Module`` wrapping a Keras 3 model later converts to TFLite with uninitialised variables).
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Dict, Sequence

import keras
import numpy as np
import tensorflow as tf

from scratchdet_tf import config as config_lib
from scratchdet_tf.boxes import postprocess
from scratchdet_tf.data import augment
from scratchdet_tf.data import class_names as class_names_lib
from scratchdet_tf.data import images as images_lib
from scratchdet_tf.export import inference_graph, info

# --- in-graph preprocessing: what augment.transform_eval does, batched, with request checks ---


def preprocess(images, *, image_size: int, mean_rgb: Sequence[float]):
    """Bilinear warp to S x S and mean subtraction of a batch (``augment.transform_eval`` semantics).

    The request is checked first (the serving signature's shape is not enforced on call): a wrong
    rank, channel count, an empty batch or an image without pixels fails an assert that quotes the
    received shape.

    Args:
      images: uint8 [B, H, W, 3] RGB, B > 0, H, W > 0.
      image_size: S.
      mean_rgb: 3 floats.

    Returns:
      float32 [B, S, S, 3].
    """
    shape = tf.shape(images)
    dims = tf.concat([shape, tf.zeros([4], tf.int32)], 0)[:4]  # safe to index whatever the rank
    ok = (tf.size(shape) == 4) & (dims[3] == 3) & tf.reduce_all(dims[:3] > 0)
    check = tf.debugging.Assert(
        ok, ["images must be uint8 [B, H, W, 3] with B, H, W > 0; got shape", shape], summarize=8,
        name="check_images")
    with tf.control_dependencies([check]):
        images = tf.cast(tf.identity(images), tf.float32)
    return augment.transform_eval(tf.ensure_shape(images, [None, None, None, 3]), image_size=image_size,
                                  mean_rgb=mean_rgb)


def decode_and_preprocess(image_bytes, *, image_size: int, mean_rgb: Sequence[float],
                          max_pixels: int = images_lib.DEFAULT_MAX_PIXELS):
    """Decodes a batch of encoded images (each its own size) and preprocesses each one.

    Args:
      image_bytes: string [B], B > 0, complete JPEG/PNG/GIF/BMP files; anything else (empty, truncated,
        another format) fails an assert naming its batch index.
      image_size: S.
      mean_rgb: 3 floats.
      max_pixels: an image whose header declares more pixels fails an assert naming its batch index
        before anything is decoded (a small file can declare gigabytes of pixels).

    Returns:
      float32 [B, S, S, 3].
    """
    image_bytes = tf.reshape(image_bytes, [-1])
    ok = tf.map_fn(images_lib.is_valid_image, image_bytes, fn_output_signature=tf.bool)
    bad = tf.cast(tf.where(tf.logical_not(ok))[:, 0], tf.int32)
    pixels = tf.map_fn(images_lib.header_pixels, image_bytes, fn_output_signature=tf.int64)
    too_big = tf.cast(tf.where(pixels > max_pixels)[:, 0], tf.int32)
    checks = [
        tf.debugging.Assert(tf.size(image_bytes) > 0, ["image_bytes is an empty batch"], name="check_batch"),
        tf.debugging.Assert(tf.reduce_all(ok), [
            "image_bytes must be complete JPEG, PNG, GIF or BMP files; not one at batch index:", bad],
            summarize=100, name="check_image_bytes"),
        tf.debugging.Assert(tf.size(too_big) == 0, [
            f"image_bytes: images may have at most {max_pixels} pixels; larger at batch index:", too_big,
            "declaring pixels:", tf.gather(pixels, too_big)], summarize=100, name="check_image_pixels"),
    ]

    def one(data):
        image = images_lib.decode(data)
        return preprocess(image[None], image_size=image_size, mean_rgb=mean_rgb)[0]

    with tf.control_dependencies(checks):
        image_bytes = tf.identity(image_bytes)
    return tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))


def to_serving_outputs(detections: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """``postprocess.detect`` output -> TF OD API names and dtypes (classes 1-based, all float32)."""
    n = detections["classes"].shape[-1]
    is_det = tf.range(n)[None, :] < detections["num_detections"][:, None]  # [B, N]
    classes = tf.where(is_det, tf.cast(detections["classes"] + 1, tf.float32), 0.0)
    return {
        "detection_boxes": detections["boxes"],
        "detection_scores": detections["scores"],
        "detection_classes": classes,
        "num_detections": tf.cast(detections["num_detections"], tf.float32),
    }


def serving_functions(forward: Callable, anchors: np.ndarray, *, image_size: int, mean_rgb: Sequence[float],
                      score_threshold: float, pre_nms_top_k: int, nms_iou_threshold: float,
                      max_detections: int, variances: Sequence[float],
                      max_pixels: int = images_lib.DEFAULT_MAX_PIXELS):
    """The two serving functions (not yet traced).

    Args:
      forward: the network in inference mode, ``forward(float32 [B, S, S, 3])`` -> its output dict
        (``cls_logits``, ``box_deltas``); e.g. ``inference_graph.optimized_forward(model, S)``.

    Returns:
      (from_images, from_bytes): ``from_images(images uint8 [B, H, W, 3])`` and
      ``from_bytes(image_bytes string [B])``, each returning the TF OD API output dict.
    """
    anchors = tf.constant(np.asarray(anchors, np.float32))

    def run(inputs):
        out = forward(inputs)
        return to_serving_outputs(postprocess.detect(
            out["cls_logits"], out["box_deltas"], anchors, score_threshold=score_threshold,
            pre_nms_top_k=pre_nms_top_k, nms_iou_threshold=nms_iou_threshold, max_detections=max_detections,
            variances=tuple(variances)))

    def from_images(images):
        return run(preprocess(images, image_size=image_size, mean_rgb=mean_rgb))

    def from_bytes(image_bytes):
        return run(decode_and_preprocess(image_bytes, image_size=image_size, mean_rgb=mean_rgb, max_pixels=max_pixels))

    return from_images, from_bytes


def export_saved_model(model: keras.Model, anchors: np.ndarray, cfg: config_lib.Config, export_dir: str,
                       class_names: Sequence[str] | None = None, **extra_info) -> dict:
    """Writes the serving SavedModel, the label map asset and ``export_info.json`` into ``export_dir``.

    Args:
      model: the network of ``ssd.build_model`` with its weights.
      anchors: float32 [A, 4] yxyx priors in the model's prediction order.
      cfg: the run's config; post-processing uses ``cfg.eval`` thresholds and ``cfg.export.max_detections``;
        with ``cfg.export.optimize`` the graph runs ``inference_graph.optimized_forward`` (BN folded
        into convs, weights frozen as constants: no ``variables/`` data, same outputs up to rounding).
      export_dir: output folder (created; existing files are overwritten).
      class_names: C names in label order; default ``class_names_lib.for_config(cfg)``.
      **extra_info: extra JSON-able entries for ``export_info.json`` (e.g. checkpoint, step).

    Returns:
      The export info dict that was written.

    Raises:
      ValueError: if the number of class names is not ``cfg.model.num_classes``.
    """
    class_names = tuple(class_names or class_names_lib.for_config(cfg))
    if len(class_names) != cfg.model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {cfg.model.num_classes} classes")
    if any("\n" in name for name in class_names):
        raise ValueError(f"class names must not contain newlines: {class_names}")
    if cfg.export.optimize:
        forward = inference_graph.optimized_forward(model, cfg.model.image_size)
    else:
        def forward(inputs):
            return model(inputs, training=False)
    from_images, from_bytes = serving_functions(
        forward, anchors, image_size=cfg.model.image_size, mean_rgb=cfg.data.mean_rgb,
        score_threshold=cfg.eval.score_threshold, pre_nms_top_k=cfg.eval.pre_nms_top_k,
        nms_iou_threshold=cfg.eval.nms_iou_threshold, max_detections=cfg.export.max_detections,
        variances=cfg.anchors.variances, max_pixels=cfg.data.max_image_pixels)

    os.makedirs(export_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        labels_path = os.path.join(staging, info.LABELS_FILE)
        with open(labels_path, "w") as f:
            f.write("\n".join(class_names) + "\n")
        _write_archive(labels_path, from_images, from_bytes, export_dir)
    written = info.export_info(cfg, model, class_names, **extra_info)
    info.write_info(export_dir, written)
    return written


def _write_archive(labels_path, from_images, from_bytes, export_dir):
    # No archive.track(model): ExportArchive saves the variables the endpoints use anyway (as
    # `_all_variables`); tracking the Keras model too stores every weight a second time (2x the size).
    archive = keras.export.ExportArchive()
    # A table initialized from the label file makes the file a registered SavedModel asset
    # (copied to assets/ and listed in the MetaGraph); ExportArchive saves only tracked resources.
    archive.track(tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(labels_path, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                                      tf.string, tf.lookup.TextFileIndex.WHOLE_LINE), default_value=""))
    archive.add_endpoint("serving_default", from_images,
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    archive.add_endpoint("serving_bytes", from_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.write_out(export_dir, verbose=False)


