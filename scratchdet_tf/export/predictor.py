"""Loading an export back: one ``predict(images)`` for a SavedModel folder and a ``.tflite`` file.

``predict(images)`` takes uint8 [H, W, 3] or [B, H, W, 3] RGB of any size and returns the library's
detection dict (``postprocess.detect``'s format, numpy): ``boxes`` float32 [B, N, 4] normalized
yxyx, ``scores`` float32 [B, N], ``classes`` int32 [B, N] data labels (0-based),
``num_detections`` int32 [B]; entries past ``num_detections`` are zero.
"""

from __future__ import annotations

import os
from typing import Callable, Dict

import numpy as np
import tensorflow as tf
from absl import logging

from scratchdet_tf.export import calibration, litert


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
    """``saved_model_predict_fn`` for a folder, ``predictor.tflite_predict_fn`` for a ``.tflite`` file.

    Raises:
      FileNotFoundError: naming ``model_path`` if it is neither.
    """
    if os.path.isfile(model_path) and model_path.endswith(".tflite"):
        return tflite_predict_fn(model_path, num_threads=num_threads)
    if os.path.isdir(model_path):
        return saved_model_predict_fn(model_path)
    raise FileNotFoundError(f"{model_path!r} is neither a SavedModel folder nor a .tflite file")

def tflite_predict_fn(path: str, num_threads: int = 2) -> Callable[[np.ndarray], Dict[str, np.ndarray]]:
    """A predict function over a ``.tflite`` written by ``tflite.export_tflite``.

    Args:
      path: the ``.tflite`` file.
      num_threads: interpreter threads.

    Returns:
      ``predict(images)``: uint8 [H, W, 3] or [B, H, W, 3] of any size (warp-resized to S x S here,
      one image per invoke) -> dict ``boxes`` float32 [B, N, 4] normalized yxyx clipped to [0, 1],
      ``scores`` float32 [B, N], ``classes`` int32 [B, N] data labels (0-based), ``num_detections``
      int32 [B]; entries past num_detections are zero (``postprocess.detect``'s format).

    Raises:
      FileNotFoundError: naming ``path`` if it does not exist.
      ValueError: naming ``path`` if it is not a model of this shape.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TFLite model {path!r} not found")
    try:
        options = litert.postprocess_options(path)
    except Exception as err:  # noqa: BLE001  (the flatbuffer parser raises whatever garbage provokes)
        raise ValueError(f"{path!r} is not a TFLite model: {err}") from None
    if options.get("use_regular_nms") and 1 < num_threads < options.get("num_classes", 0):
        logging.warning("%s uses regular NMS, which LiteRT computes wrongly with %d threads "
                        "(tensorflow/tensorflow#56058); running it with 1 thread", path, num_threads)
        num_threads = 1
    try:
        runner = litert.interpreter(path, num_threads).get_signature_runner()
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{path!r} is not a usable TFLite model: {err}") from None
    spec = runner.get_input_details().get("images")
    if spec is None or list(spec["shape"][:1]) != [1]:
        raise ValueError(f"{path!r} has no 'images' [1, S, S, 3] input (inputs: {list(runner.get_input_details())})")
    image_size = int(spec["shape"][1])

    def predict(images):
        images = as_batch(images)
        results = []
        for image in images:
            out = runner(images=calibration.resize_uint8(image, image_size)[None])
            results.append(_from_op_outputs(out))
        return {key: np.stack([r[key] for r in results]) for key in ("boxes", "scores", "classes", "num_detections")}

    return predict


def _from_op_outputs(out: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """One image's op outputs -> unbatched library format (classes already 0-based data labels)."""
    num = int(np.asarray(out["num_detections"]).reshape(-1)[0])
    boxes = np.clip(np.asarray(out["detection_boxes"], np.float32).reshape(-1, 4), 0.0, 1.0)
    scores = np.asarray(out["detection_scores"], np.float32).reshape(-1)
    classes = np.asarray(out["detection_classes"]).reshape(-1).astype(np.int32)
    keep = np.arange(len(scores)) < num
    return {"boxes": np.where(keep[:, None], boxes, 0.0).astype(np.float32),
            "scores": np.where(keep, scores, 0.0).astype(np.float32),
            "classes": np.where(keep, classes, 0).astype(np.int32),
            "num_detections": np.int32(num)}
