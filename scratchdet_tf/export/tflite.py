"""TFLite export (fp32, fp16, dynamic-range, full-integer int8) with the standard ``TFLite_Detection_PostProcess`` op.

A ``.tflite`` model takes ``images`` uint8 [1, S, S, 3] RGB, already warp-resized to the model's input
size (``predictor.tflite_predict_fn`` resizes); the mean subtraction, network, softmax, box decoding and NMS run
inside. Outputs, read by name from the model's signature (the op's own convention, as TF OD API
TFLite models have it): ``detection_boxes`` float32 [1, N, 4] normalized yxyx (not clipped),
``detection_classes`` float32 [1, N] **0-based without background** (= data label),
``detection_scores`` float32 [1, N], ``num_detections`` float32 [1].

Each file then gets TFLite Model Metadata, its labels packed in and its outputs put in the op's
port order (``tflite_metadata``), so MediaPipe Tasks' ObjectDetector loads it as it is.

The post-processing is an empty ``tf.function`` whose ``experimental_implements`` attribute names
the custom op and its attributes; the converter replaces it by the op (``allow_custom_ops``), so the
model needs only builtin ops, no Flex. The op decodes with y/x/h/w scales 10/10/5/5 (= our
variances 0.1/0.1/0.2/0.2) from center-size anchors (ycenter, xcenter, h, w), and skips score
column 0 (background) because it is given C + 1 columns for ``num_classes`` = C. Its NMS is by
default the fast class-agnostic one (each box keeps its best class): LiteRT's per-class ("regular")
NMS is wrong when run multi-threaded (see ``export_tflite``), which a deployed model cannot control.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from typing import Callable, Dict, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from scratchdet_tf import __version__
from scratchdet_tf import config as config_lib
from scratchdet_tf.boxes import box_ops
from scratchdet_tf.data import class_names as class_names_lib
from scratchdet_tf.export import info, litert, tflite_metadata

MODES = config_lib.TFLITE_MODES  # fp32, fp16, dynamic, int8
# Ops a converted float model may not contain: variables (weights not frozen: the Keras 3 export trap,
# docs/DECISIONS.md#keras-3-export-trap) or TF ops run through Flex (neither interpreter here has the
# Flex delegate).
_FORBIDDEN_OPS = ("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE")


def postprocess_signature(*, num_classes: int, max_detections: int, detections_per_class: int,
                          use_regular_nms: bool, score_threshold: float, iou_threshold: float,
                          scales: Sequence[float]) -> str:
    """The ``experimental_implements`` string of ``TFLite_Detection_PostProcess`` (TF OD API attribute names).

    Args:
      num_classes: C object classes (the score input has C + 1 columns, background first).
      max_detections: N, detections per image.
      detections_per_class: boxes kept per class by regular (per-class) NMS.
      use_regular_nms: per-class NMS (as Caffe / ``postprocess.detect``) or the fast class-agnostic one
        (one class per box). The converter drops ``detections_per_class``; the kernel then uses 100.
      score_threshold: scores must exceed this.
      iou_threshold: NMS IoU threshold.
      scales: (y, x, h, w) scales = 1 / variances.
    """
    y_scale, x_scale, h_scale, w_scale = scales
    attrs = [
        f'attr {{ key: "max_detections" value {{ i: {max_detections} }} }}',
        'attr { key: "max_classes_per_detection" value { i: 1 } }',
        f'attr {{ key: "detections_per_class" value {{ i: {detections_per_class} }} }}',
        f'attr {{ key: "use_regular_nms" value {{ b: {str(use_regular_nms).lower()} }} }}',
        f'attr {{ key: "nms_score_threshold" value {{ f: {score_threshold:f} }} }}',
        f'attr {{ key: "nms_iou_threshold" value {{ f: {iou_threshold:f} }} }}',
        f'attr {{ key: "y_scale" value {{ f: {y_scale:f} }} }}',
        f'attr {{ key: "x_scale" value {{ f: {x_scale:f} }} }}',
        f'attr {{ key: "h_scale" value {{ f: {h_scale:f} }} }}',
        f'attr {{ key: "w_scale" value {{ f: {w_scale:f} }} }}',
        f'attr {{ key: "num_classes" value {{ i: {num_classes} }} }}',
    ]
    return " ".join(['name: "TFLite_Detection_PostProcess"'] + attrs)


def tflite_function(model: keras.Model, anchors: np.ndarray, cfg: config_lib.Config, *,
                    use_regular_nms: bool = False) -> Callable:
    """The function converted to TFLite: ``images`` uint8 [1, S, S, 3] -> the four op outputs (by name)."""
    signature = postprocess_signature(
        num_classes=cfg.model.num_classes, max_detections=cfg.export.max_detections,
        detections_per_class=min(cfg.eval.pre_nms_top_k, cfg.export.max_detections),
        use_regular_nms=use_regular_nms, score_threshold=cfg.eval.score_threshold,
        iou_threshold=cfg.eval.nms_iou_threshold, scales=[1.0 / v for v in cfg.anchors.variances])

    @tf.function(experimental_implements=signature)
    def detection_postprocess(box_encodings, class_predictions, center_size_anchors):
        # Never executed in TFLite: the converter replaces this call by the custom op.
        del box_encodings, class_predictions, center_size_anchors
        boxes = tf.constant(0.0, tf.float32, name="boxes")
        classes = tf.constant(0.0, tf.float32, name="classes")
        scores = tf.constant(0.0, tf.float32, name="scores")
        num_detections = tf.constant(0.0, tf.float32, name="num_detections")
        return boxes, classes, scores, num_detections

    center_size = box_ops.to_center_size(np.asarray(anchors, np.float32)).numpy()  # [A, 4] (cy, cx, h, w)
    mean = np.asarray(cfg.data.mean_rgb, np.float32)

    def run(images):
        out = model(tf.cast(images, tf.float32) - mean, training=False)
        probs = tf.nn.softmax(out["cls_logits"], axis=-1)  # [1, A, C+1], column 0 background
        boxes, classes, scores, num = detection_postprocess(out["box_deltas"], probs, tf.constant(center_size))
        return {"detection_boxes": boxes, "detection_classes": classes, "detection_scores": scores,
                "num_detections": num}

    return run


def convert(saved_model_dir: str, mode: str,
            representative_images: Callable[[], Iterable[np.ndarray]] | None = None) -> bytes:
    """Converts the ``serving_default`` signature of a TFLite-ready SavedModel.

    Args:
      saved_model_dir: written by ``export_tflite`` (uint8 [1, S, S, 3] input).
      mode: ``fp32``; ``fp16`` (float16 weights); ``dynamic`` (int8 weights, float activations);
        ``int8`` (full-integer: int8 weights and activations, calibrated; uint8 input, float outputs).
      representative_images: for ``int8``, a callable returning an iterable of uint8 [1, S, S, 3].

    Returns:
      The flatbuffer.

    Raises:
      ValueError: unknown mode, int8 without images, or a model with variable or Flex ops.
    """
    if mode not in MODES:
        raise ValueError(f"unknown TFLite mode {mode!r}; allowed: {', '.join(MODES)}")
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=["serving_default"])
    converter.allow_custom_ops = True  # TFLite_Detection_PostProcess
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        if representative_images is None:
            raise ValueError("TFLite int8 needs representative images for calibration")
        converter.representative_dataset = lambda: ([image] for image in representative_images())
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    flatbuffer = converter.convert()
    bad = sorted(op for op in litert.op_names(flatbuffer) if op in _FORBIDDEN_OPS or op.startswith("Flex"))
    if bad:
        raise ValueError(f"TFLite {mode} model from {saved_model_dir!r} has ops {bad}: weights not frozen or "
                         "TF ops left in the graph")
    return flatbuffer


def export_tflite(model: keras.Model, anchors: np.ndarray, cfg: config_lib.Config, export_dir: str,
                  modes: Sequence[str], representative_images: Callable[[], Iterable[np.ndarray]] | None = None,
                  *, use_regular_nms: bool = False) -> Dict[str, dict]:
    """Writes ``export_dir/model_<mode>.tflite`` for each mode and records them in ``export_info.json``.

    Args:
      model: the network with its weights.
      anchors: float32 [A, 4] yxyx priors.
      cfg: the run's config (input size, mean, ``eval`` thresholds, ``export.max_detections``).
      export_dir: output folder (usually the SavedModel's).
      modes: subset of ``MODES``.
      representative_images: needed for ``int8``; see ``convert`` and ``representative_images``.
      use_regular_nms: per-class NMS (as the SavedModel) instead of the op's fast class-agnostic NMS
        (one class per box, the TF OD API's mobile default). The op's multi-threaded regular NMS skips
        class index T when run with T threads, 1 < T < C (tensorflow/tensorflow#56058, still in LiteRT
        2.3.0); ``predictor.tflite_predict_fn`` then runs single-threaded, other runtimes must do the same.

    Each mode is converted in a child process (``convert_isolated``): a mode that fails or crashes is
    logged, recorded as ``tflite_failed`` in ``export_info.json`` and left out; the others are written.

    Returns:
      {mode: {"file": name, "bytes": size}} of the modes written.

    Raises:
      ValueError: an unknown mode, or int8 without representative images.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown TFLite mode(s) {unknown}; allowed: {', '.join(MODES)}")
    size = cfg.model.image_size
    archive = keras.export.ExportArchive()
    # No archive.track(model): see saved_model._write_archive.
    archive.add_endpoint("serving_default", tflite_function(model, anchors, cfg, use_regular_nms=use_regular_nms),
                         input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8, name="images")])
    written = {}
    os.makedirs(export_dir, exist_ok=True)
    written_info = info.read_info(export_dir) or info.export_info(cfg, model, class_names_lib.for_config(cfg))
    class_names = written_info["class_names"]
    if len(class_names) != cfg.model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {cfg.model.num_classes} classes")
    failed = {}
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "saved_model")
        archive.write_out(saved, verbose=False)
        calibration = None
        if "int8" in modes:
            if representative_images is None:
                raise ValueError("TFLite int8 needs representative images for calibration")
            calibration = os.path.join(tmp, "calibration.npy")
            np.save(calibration, np.stack(list(representative_images())))
        for mode in modes:
            name = f"model_{mode}.tflite"
            try:
                converted = convert_isolated(saved, mode, calibration if mode == "int8" else None, tmp)
            except ConversionError as err:
                logging.error("%s", err)
                failed[mode] = str(err)
                continue
            flatbuffer = tflite_metadata.add_metadata(converted, class_names, name=model.name,
                                                      description=_description(cfg, mode, class_names),
                                                      version=__version__)
            with open(os.path.join(export_dir, name), "wb") as f:
                f.write(flatbuffer)
            written[mode] = {"file": name, "bytes": len(flatbuffer)}
    if failed:
        written_info["tflite_failed"] = failed
    else:
        written_info.pop("tflite_failed", None)
    written_info.setdefault("tflite", {}).update(written)
    written_info["tflite_nms"] = "regular" if use_regular_nms else "fast"  # recorded for readers of the info file
    info.write_info(export_dir, written_info)
    return written


class ConversionError(RuntimeError):
    """One TFLite conversion failed or crashed; the message says which and why."""


# The command that converts one model (tests swap it to inject a crash).
CONVERT_COMMAND = (sys.executable, "-m", "scratchdet_tf.export.tflite_convert")
CONVERT_TIMEOUT_S = 3600


def convert_isolated(saved_model_dir: str, mode: str, calibration_npy: str | None, work_dir: str) -> bytes:
    """``convert`` in a child process (``scratchdet_tf.export.tflite_convert``): a crash there is an error here.

    Args:
      saved_model_dir: the TFLite-ready SavedModel.
      mode: one of ``MODES``.
      calibration_npy: for int8, uint8 [n, 1, S, S, 3] representative images saved with ``np.save``.
      work_dir: where the child writes its output.

    Raises:
      ConversionError: naming the mode and the reason (the converter's error, or the signal that
        ended the converter with the last line it printed).
    """
    out = os.path.join(work_dir, f"converted_{mode}.tflite")
    command = [*CONVERT_COMMAND, saved_model_dir, mode, out] + ([calibration_npy] if calibration_npy else [])
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"TFLite {mode} conversion did not finish within {CONVERT_TIMEOUT_S} s") from None
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    last = (errors or lines or ["(no output)"])[-1].strip()
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise ConversionError(f"TFLite {mode} conversion crashed ({name} in the TFLite converter; last message: "
                              f"{last}); the other formats are unaffected")
    if proc.returncode != 0 or not os.path.isfile(out):
        raise ConversionError(f"TFLite {mode} conversion failed: {last}")
    with open(out, "rb") as f:
        return f.read()


def _description(cfg: config_lib.Config, mode: str, class_names: Sequence[str]) -> str:
    size = cfg.model.image_size
    return (f"ScratchDet SSD ({cfg.model.backbone}, trained from scratch with scratchdet-tf), TFLite {mode}. "
            f"Input: RGB uint8 [1, {size}, {size}, 3], the whole image warp-resized (no letterbox). "
            f"Outputs: up to {cfg.export.max_detections} boxes after NMS, {len(class_names)} classes "
            f"({', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''}).")


