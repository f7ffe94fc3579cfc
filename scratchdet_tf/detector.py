"""A trained detector in three lines, for notebooks and scripts: load, predict, draw.

    from scratchdet_tf.detector import Detector

    detector = Detector.from_run("runs/my_data")          # its best checkpoint (or newest), or:
    detector = Detector.from_export("exports/my_data/1")  # a SavedModel folder or a .tflite file
    result = detector.predict("photo.jpg")                # a file, a uint8 [H, W, 3] array, or a list
    print(result.class_names, result.scores)              # boxes: normalized [ymin, xmin, ymax, xmax]
    drawn = detector.draw("photo.jpg", result)            # uint8 [H, W, 3] with boxes and captions

``tools/detect.py`` and the demo run exports through this class; ``from_run`` runs the Keras model the
way evaluation does (``runner.model_predict_fn``), ``from_export`` the export's own serving graph
(``predictor.load_predict_fn``). Boxes stay in the library's one format, normalized yxyx;
``Detections.pixel_boxes`` gives ``[xmin, ymin, xmax, ymax]`` pixels for drawing elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from scratchdet_tf import run_dir, visualize
from scratchdet_tf.data import class_names as class_names_lib

DEFAULT_SCORE_THRESHOLD = 0.3


@dataclasses.dataclass(frozen=True)
class Detections:
    """The detections of one image that scored at least the detector's threshold, best first.

    Attributes:
      boxes: float32 [K, 4] normalized [ymin, xmin, ymax, xmax].
      labels: int32 [K] 0-based class labels.
      scores: float32 [K].
      class_names: K names, ``class_names[i]`` of detection i.
      image_size: (height, width) of the image they were found in.
    """

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    class_names: Tuple[str, ...]
    image_size: Tuple[int, int]

    def __len__(self) -> int:
        return len(self.scores)

    def pixel_boxes(self) -> np.ndarray:
        """float32 [K, 4] ``[xmin, ymin, xmax, ymax]`` in pixels of the original image (edge coordinates)."""
        height, width = self.image_size
        ymin, xmin, ymax, xmax = np.clip(self.boxes, 0.0, 1.0).T
        return np.stack([xmin * width, ymin * height, xmax * width, ymax * height], 1).astype(np.float32)

    def to_json(self) -> List[Dict]:
        """One dict per detection: ``box`` (normalized yxyx), ``label``, ``class``, ``score``; JSON-ready."""
        return [{"box": [round(float(c), 5) for c in box], "label": int(label), "class": name,
                 "score": round(float(score), 5)}
                for box, label, name, score in zip(self.boxes, self.labels, self.class_names, self.scores)]


class Detector:
    """A predict function with its class names and score threshold (build with ``from_run`` / ``from_export``).

    Args:
      predict_fn: uint8 [1, H, W, 3] -> ``postprocess.detect``'s dict (see ``evaluation.runner``).
      class_names: the model's C class names in label order.
      score_threshold: detections scoring less are dropped by ``predict``.
      description: where the model came from (shown by ``repr``).
    """

    def __init__(self, predict_fn: Callable[[np.ndarray], Dict[str, np.ndarray]], class_names: Sequence[str], *,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD, description: str = ""):
        self.predict_fn = predict_fn
        self.class_names = tuple(class_names)
        self.score_threshold = score_threshold
        self.description = description

    def __repr__(self) -> str:
        return (f"Detector({self.description or 'custom'}, {len(self.class_names)} classes, "
                f"score_threshold={self.score_threshold:g})")

    @classmethod
    def from_run(cls, model_dir: str, checkpoint: str | None = None, *,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> Detector:
        """The Keras model of a training run folder.

        Args:
          model_dir: a ``tools/train.py --model_dir`` (or its ``best/`` folder).
          checkpoint: None: the run's best checkpoint (``<model_dir>/best/``, kept when the run evaluated
            periodically) if there is one, else its newest; ``"last"``: the newest; or a checkpoint prefix.
          score_threshold: see the class.

        Raises:
          FileNotFoundError / run_dir.RunDirError: no run, no readable checkpoint (naming the folder).
        """
        from scratchdet_tf.evaluation import runner  # TensorFlow and the model code: only for this way in

        folder = model_dir
        best_dir = os.path.join(model_dir, run_dir.BEST_DIR)
        if checkpoint is None and run_dir.resume_candidates(best_dir) and run_dir.has_config(best_dir):
            folder = best_dir
        restored = run_dir.restore_model(folder, None if checkpoint in (None, "last") else checkpoint)
        predict = runner.model_predict_fn(restored.cfg, restored.model, restored.anchors)
        return cls(predict, class_names_lib.for_config(restored.cfg), score_threshold=score_threshold,
                   description=f"{restored.checkpoint} (step {restored.step})")

    @classmethod
    def from_export(cls, model_path: str, *, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                    num_threads: int = 2) -> Detector:
        """An export of ``tools/export.py``: a SavedModel folder, or a ``.tflite`` file (beside one or alone).

        Class names come from the export (``export_info.json`` or the TFLite metadata); an export without
        any gets ``class_1`` .. ``class_C`` when it is first run.

        Raises:
          FileNotFoundError / ValueError: naming ``model_path`` if it is not a usable export.
        """
        from scratchdet_tf.export import info, predictor

        predict = predictor.load_predict_fn(model_path, num_threads=num_threads)
        return cls(predict, info.class_names_of(model_path), score_threshold=score_threshold,
                   description=model_path)

    def predict(self, images) -> Detections | List[Detections]:
        """Detects objects in one image or several.

        Args:
          images: an image file path, a uint8 [H, W, 3] RGB array, or a list of those (sizes may differ).

        Returns:
          ``Detections`` for one image, a list of them for a list.

        Raises:
          OSError / ValueError: an unreadable file (naming it) or an array that is not uint8 [H, W, 3].
        """
        if isinstance(images, (list, tuple)):
            return [self._predict_one(image) for image in images]
        return self._predict_one(images)

    def draw(self, image, result: Detections | None = None) -> np.ndarray:
        """``image`` (path or array) with ``result``'s boxes, names and scores drawn; predicts if ``result`` is None.

        Returns:
          uint8 [H, W, 3], a new array.
        """
        pixels = load_image(image)
        result = self._predict_one(pixels) if result is None else result
        return visualize.draw_detections(pixels, result.boxes, result.labels, result.scores, self._names())

    def _predict_one(self, image) -> Detections:
        pixels = load_image(image)
        boxes, labels, scores = visualize.confident(self.predict_fn(pixels[None]), self.score_threshold, index=0)
        order = np.argsort(-np.asarray(scores), kind="stable")
        names = self._names(int(np.max(labels)) + 1 if len(labels) else 0)
        labels = np.asarray(labels, np.int32)[order]
        return Detections(boxes=np.asarray(boxes, np.float32)[order], labels=labels,
                          scores=np.asarray(scores, np.float32)[order],
                          class_names=tuple(names[k] if 0 <= k < len(names) else str(k) for k in labels),
                          image_size=(int(pixels.shape[0]), int(pixels.shape[1])))

    def _names(self, at_least: int = 0) -> Tuple[str, ...]:
        if not self.class_names and at_least:  # an export that did not store names
            return class_names_lib.unnamed(at_least)
        return self.class_names


def load_image(image) -> np.ndarray:
    """uint8 [H, W, 3] RGB of an image file (pixels as stored: EXIF orientation is not applied) or array.

    Raises:
      OSError: an unreadable or corrupt file (PIL's error, naming it); ValueError: an empty image or an
        array that is not uint8 [H, W, 3] (quoting its shape).
    """
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as opened:
                pixels = np.asarray(opened.convert("RGB"))
        except OSError as err:
            raise OSError(f"{os.fspath(image)}: unreadable image ({err})") from None
    else:
        pixels = np.asarray(image)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {pixels.dtype} {pixels.shape}")
    if pixels.size == 0:
        raise ValueError(f"empty image {pixels.shape}")
    return pixels
