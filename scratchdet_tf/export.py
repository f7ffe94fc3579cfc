"""SavedModel export with TF Object Detection API serving signatures, and loading exports back as predict functions.

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

Export goes through ``keras.export.ExportArchive`` (DESIGN.md: a ``tf.saved_model.save`` of a
``tf.Module`` wrapping a Keras 3 model later converts to TFLite with uninitialised variables).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Callable, Dict, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from scratchdet_tf import config as config_lib
from scratchdet_tf import inference_graph, postprocess
from scratchdet_tf.data import images as images_lib
from scratchdet_tf.models import ssd

LABELS_FILE = "labels.txt"
INFO_FILE = os.path.join("assets.extra", "export_info.json")


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
    resized = tf.image.resize(tf.ensure_shape(images, [None, None, None, 3]), [image_size, image_size],
                              method="bilinear")
    return tf.ensure_shape(resized - tf.constant(mean_rgb, tf.float32), [None, image_size, image_size, 3])


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


def export_info(cfg: config_lib.Config, model: keras.Model, class_names: Sequence[str], **extra) -> dict:
    """What tools need to know about an export without loading it (written as ``INFO_FILE``)."""
    return {
        "image_size": cfg.model.image_size,
        "mean_rgb": list(cfg.data.mean_rgb),
        "class_names": list(class_names),
        "conv_macs": ssd.conv_macs(model),
        "postprocess": {"score_threshold": cfg.eval.score_threshold, "pre_nms_top_k": cfg.eval.pre_nms_top_k,
                        "nms_iou_threshold": cfg.eval.nms_iou_threshold,
                        "max_detections": cfg.export.max_detections},
        "config": config_lib.to_dict(cfg),
        **extra,
    }


def default_class_names(cfg: config_lib.Config) -> tuple:
    """``data.class_names`` if set, else the training source's names, else ``class_1`` .. ``class_C``."""
    if cfg.data.class_names:
        return tuple(cfg.data.class_names)
    try:
        from scratchdet_tf.data import pipeline  # reads only the source's annotations / metadata

        names = tuple(pipeline.class_names(cfg.data))
        if len(names) == cfg.model.num_classes:
            return names
        logging.warning("%r has %d classes, the model %d; using class_1..class_%d", cfg.data.train_source,
                        len(names), cfg.model.num_classes, cfg.model.num_classes)
    except (OSError, ValueError, ImportError) as err:
        logging.warning("class names of %r unavailable (%s); using class_1..class_%d",
                        cfg.data.train_source, err, cfg.model.num_classes)
    return tuple(f"class_{k + 1}" for k in range(cfg.model.num_classes))


def export_saved_model(model: keras.Model, anchors: np.ndarray, cfg: config_lib.Config, export_dir: str,
                       class_names: Sequence[str] | None = None, **info) -> dict:
    """Writes the serving SavedModel, the label map asset and ``export_info.json`` into ``export_dir``.

    Args:
      model: the network of ``ssd.build_model`` with its weights.
      anchors: float32 [A, 4] yxyx priors in the model's prediction order.
      cfg: the run's config; post-processing uses ``cfg.eval`` thresholds and ``cfg.export.max_detections``;
        with ``cfg.export.optimize`` the graph runs ``inference_graph.optimized_forward`` (BN folded
        into convs, weights frozen as constants: no ``variables/`` data, same outputs up to rounding).
      export_dir: output folder (created; existing files are overwritten).
      class_names: C names in label order; default ``default_class_names(cfg)``.
      **info: extra JSON-able entries for ``export_info.json`` (e.g. checkpoint, step).

    Returns:
      The export info dict that was written.

    Raises:
      ValueError: if the number of class names is not ``cfg.model.num_classes``.
    """
    class_names = tuple(class_names or default_class_names(cfg))
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
        labels_path = os.path.join(staging, LABELS_FILE)
        with open(labels_path, "w") as f:
            f.write("\n".join(class_names) + "\n")
        _write_archive(labels_path, from_images, from_bytes, export_dir)
    info = export_info(cfg, model, class_names, **info)
    write_info(export_dir, info)
    return info


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


def write_info(export_dir: str, info: dict) -> None:
    """Writes ``export_dir/assets.extra/export_info.json``."""
    path = os.path.join(export_dir, INFO_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")


def export_dir_of(model_path: str) -> str:
    """The export folder of a SavedModel folder or of a ``.tflite`` file inside one."""
    return model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))


def read_info(model_path: str) -> dict:
    """``export_info.json`` of a SavedModel folder or a ``.tflite`` beside it; {} when there is none."""
    path = os.path.join(export_dir_of(model_path), INFO_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def class_names_of(model_path: str) -> tuple:
    """Class names of an export; () if unknown.

    A ``.tflite`` answers from its own packed ``labels.txt`` (TFLite metadata, so a model copied on
    its own keeps its names), a SavedModel from ``assets/labels.txt``; else ``export_info.json``
    beside the model.
    """
    if os.path.isfile(model_path) and model_path.endswith(".tflite"):
        from scratchdet_tf import tflite_metadata

        packed = tflite_metadata.packed_labels(model_path)
        if packed:
            return packed
    labels = os.path.join(export_dir_of(model_path), "assets", LABELS_FILE)
    if os.path.isfile(labels):
        with open(labels) as f:
            return tuple(line.rstrip("\n") for line in f if line.strip())
    return tuple(read_info(model_path).get("class_names", ()))


# --- loading an export back: one predict interface for SavedModel and TFLite ---


def as_batch(images) -> np.ndarray:
    """uint8 [B, H, W, 3] from one image [H, W, 3] or a batch.

    Raises:
      ValueError: for another dtype, rank or channel count, or an empty image (naming the shape).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB images [H, W, 3] or [B, H, W, 3], got {images.dtype} {images.shape}")
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise ValueError(f"empty image: shape {images.shape}")
    return images


def from_serving_outputs(outputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """TF OD API outputs -> the library's detection dict (``postprocess.detect`` format, numpy)."""
    num = np.asarray(outputs["num_detections"]).astype(np.int32)
    labels = np.asarray(outputs["detection_classes"]).astype(np.int32) - 1
    is_det = np.arange(labels.shape[-1])[None, :] < num[:, None]
    return {
        "boxes": np.asarray(outputs["detection_boxes"], np.float32),
        "scores": np.asarray(outputs["detection_scores"], np.float32),
        "classes": np.where(is_det, labels, 0).astype(np.int32),
        "num_detections": num,
    }


def saved_model_predict_fn(export_dir: str) -> Callable[[np.ndarray], Dict[str, np.ndarray]]:
    """A predict function over the ``serving_default`` signature of an exported SavedModel.

    Returns:
      ``predict(images)``: uint8 [H, W, 3] or [B, H, W, 3] of any size -> dict ``boxes`` float32
      [B, N, 4] normalized yxyx, ``scores`` float32 [B, N], ``classes`` int32 [B, N] data labels
      (0-based), ``num_detections`` int32 [B], as ``postprocess.detect`` returns them.

    Raises:
      FileNotFoundError: naming the folder if it holds no SavedModel.
    """
    if not tf.saved_model.contains_saved_model(export_dir):
        raise FileNotFoundError(f"no SavedModel in {export_dir!r}")
    loaded = tf.saved_model.load(export_dir)
    if "serving_default" not in loaded.signatures:
        raise ValueError(f"{export_dir}: no serving_default signature (has {sorted(loaded.signatures)})")
    signature = loaded.signatures["serving_default"]
    # Ours is named "images"; TF OD API exports call it "input_tensor": take the one input, whatever its name.
    input_names = list(signature.structured_input_signature[1])
    if len(input_names) != 1:
        raise ValueError(f"{export_dir}: serving_default takes {input_names}; expected one uint8 image input")

    def predict(images):
        outputs = signature(**{input_names[0]: tf.constant(as_batch(images))})
        return from_serving_outputs({k: v.numpy() for k, v in outputs.items()})

    predict.saved_model = loaded  # the signature's variables live as long as the loaded object
    return predict


def load_predict_fn(model_path: str, num_threads: int = 2) -> Callable[[np.ndarray], Dict[str, np.ndarray]]:
    """``saved_model_predict_fn`` for a folder, ``export_tflite.tflite_predict_fn`` for a ``.tflite`` file.

    Raises:
      FileNotFoundError: naming ``model_path`` if it is neither.
    """
    if os.path.isfile(model_path) and model_path.endswith(".tflite"):
        from scratchdet_tf import export_tflite  # export_tflite imports this module

        return export_tflite.tflite_predict_fn(model_path, num_threads=num_threads)
    if os.path.isdir(model_path):
        return saved_model_predict_fn(model_path)
    raise FileNotFoundError(f"{model_path!r} is neither a SavedModel folder nor a .tflite file")
