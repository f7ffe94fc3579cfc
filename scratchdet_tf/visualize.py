"""Drawing detections on images (numpy + PIL): the one drawing helper of training summaries, demo and detect."""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, saturated RGB colours (Tableau 10); class k uses PALETTE[k % 10].
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


def class_color(label: int) -> tuple:
    """The RGB colour of a 0-based class label."""
    return PALETTE[int(label) % len(PALETTE)]


def confident(detections: Dict[str, np.ndarray], min_score: float, index: int | None = None
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's detections scoring at least ``min_score``, as (boxes [K, 4], classes [K], scores [K]).

    Args:
      detections: a predict function's dict (``postprocess.detect``'s format): ``boxes`` [N, 4],
        ``classes`` [N], ``scores`` [N], ``num_detections`` (entries past it are padding), batched
        with a leading [B] axis when ``index`` is given.
      min_score: the score threshold.
      index: the image's index in a batched dict; None for one image's dict.
    """
    one = {k: np.asarray(v) if index is None else np.asarray(v)[index] for k, v in detections.items()}
    num = int(one["num_detections"]) if "num_detections" in one else len(one["scores"])
    keep = np.flatnonzero(one["scores"][:num] >= min_score)
    return one["boxes"][keep], one["classes"][keep], one["scores"][keep]


def draw_result(image, detections: Dict[str, np.ndarray], class_names: Sequence[str] = (), *,
                min_score: float = 0.3, index: int | None = None) -> np.ndarray:
    """``draw_detections`` of the detections of ``image`` that score at least ``min_score`` (see ``confident``)."""
    return draw_detections(image, *confident(detections, min_score, index), class_names)


def draw_detections(image, boxes, classes, scores, class_names: Sequence[str] = ()) -> np.ndarray:
    """Draws boxes with ``name score`` captions; the input is not modified.

    Args:
      image: uint8 [H, W, 3] RGB.
      boxes: float [N, 4] normalized [ymin, xmin, ymax, xmax] (clipped to the image when drawn).
      classes: int [N] 0-based data labels.
      scores: float [N].
      class_names: names by label; a label without a name is drawn as its number.

    Returns:
      uint8 [H, W, 3], a new array.

    Raises:
      ValueError: for an image that is not uint8 [H, W, 3] or arrays of different lengths, quoting the shapes.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"draw_detections needs a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if not len(boxes) == len(classes) == len(scores):
        raise ValueError(f"{len(boxes)} boxes, {len(classes)} classes and {len(scores)} scores")
    height, width = image.shape[:2]
    if len(boxes) == 0 or height == 0 or width == 0:
        return image.copy()
    canvas = Image.fromarray(image)  # PIL copies the pixels
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(10, min(height, width) // 40))  # readable on large images
    line = max(1, round(min(height, width) / 200))
    # Lowest score first, so the best boxes end up on top.
    for i in np.argsort(scores, kind="stable"):
        scaled = np.clip(boxes[i], 0.0, 1.0) * [height - 1, width - 1, height - 1, width - 1]
        ymin, xmin, ymax, xmax = (int(v) for v in np.round(scaled))
        color = class_color(classes[i])
        draw.rectangle([xmin, ymin, xmax, ymax], outline=color, width=line)
        label = int(classes[i])
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        caption = f"{name} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        text_w, text_h = right - left + 2, bottom - top + 2
        y = ymin - text_h if ymin - text_h >= 0 else ymin  # above the box if it fits, else inside
        draw.rectangle([xmin, y, xmin + text_w, y + text_h], fill=color)
        draw.text((xmin + 1 - left, y + 1 - top), caption, fill=(255, 255, 255), font=font)
    return np.array(canvas)
