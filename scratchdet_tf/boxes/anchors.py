"""SSD-Caffe PriorBox default boxes, normalized [ymin, xmin, ymax, xmax] float32."""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np


def ssd_anchors(
    feature_map_sizes: Sequence[Tuple[int, int]],
    image_size: int,
    min_sizes: Sequence[float],
    max_sizes: Sequence[float],
    aspect_ratios: Sequence[Sequence[float]],
    steps: Sequence[float] | None,
    offset: float = 0.5,
    clip: bool = False,
) -> np.ndarray:
    """Default boxes of all levels, concatenated level by level.

    Order follows Caffe's PriorBoxLayer so that a prediction conv's channel
    ``k * 4 + j`` at cell (i, j) lines up with prior ``k`` of that cell: levels in
    order, cells row-major (y then x), and per cell the ``min`` square, the
    ``sqrt(min * max)`` square (when max sizes are given), then for each ratio ``r``
    a box of width ``min * sqrt(r)`` x height ``min / sqrt(r)`` followed by its flip.

    Args:
      feature_map_sizes: [(h, w)] per level.
      image_size: input side in pixels (square input).
      min_sizes: box side per level, pixels of the ``image_size`` input.
      max_sizes: per level, or empty for no second square.
      aspect_ratios: per level, ratios >= 1 (1/r is added as the flip).
      steps: pixels between cell centres per level; ``None``/empty uses
        image_size / feature-map size, as PriorBox does when no step is set.
      offset: cell-centre offset in units of a step.
      clip: clip boxes to [0, 1].

    Returns:
      float32 [A, 4] normalized [ymin, xmin, ymax, xmax].

    Raises:
      ValueError: when the per-level lists do not match the feature maps.
    """
    num_levels = len(feature_map_sizes)
    for name, values in (("min_sizes", min_sizes), ("aspect_ratios", aspect_ratios)):
        if len(values) != num_levels:
            raise ValueError(f"{len(values)} {name} levels for {num_levels} feature maps")
    if max_sizes and len(max_sizes) != num_levels:
        raise ValueError(f"{len(max_sizes)} max_sizes levels for {num_levels} feature maps")
    if steps and len(steps) != num_levels:
        raise ValueError(f"{len(steps)} steps for {num_levels} feature maps")

    levels = []
    for level, (h, w) in enumerate(feature_map_sizes):
        step_y = steps[level] if steps else image_size / h
        step_x = steps[level] if steps else image_size / w
        # Box (width, height) in pixels, in PriorBox order.
        sides = [(min_sizes[level], min_sizes[level])]
        if max_sizes:
            s = math.sqrt(min_sizes[level] * max_sizes[level])
            sides.append((s, s))
        for r in aspect_ratios[level]:
            if abs(r - 1.0) < 1e-6:
                continue  # the min square is already there
            sides.append((min_sizes[level] * math.sqrt(r), min_sizes[level] / math.sqrt(r)))
            sides.append((min_sizes[level] / math.sqrt(r), min_sizes[level] * math.sqrt(r)))
        wh = np.asarray(sides, np.float64)  # [k, 2] (w, h)

        cy = (np.arange(h, dtype=np.float64) + offset) * step_y
        cx = (np.arange(w, dtype=np.float64) + offset) * step_x
        cy, cx = np.meshgrid(cy, cx, indexing="ij")  # [h, w]
        centres = np.stack([cy, cx], axis=-1).reshape(-1, 1, 2)  # [h*w, 1, (y, x)]
        half = wh[None, :, ::-1] / 2.0  # [1, k, (h/2, w/2)]
        boxes = np.concatenate([centres - half, centres + half], axis=-1)  # [h*w, k, 4]
        levels.append(boxes.reshape(-1, 4) / image_size)
    anchors = np.concatenate(levels, axis=0)
    if clip:
        anchors = np.clip(anchors, 0.0, 1.0)
    return anchors.astype(np.float32)


def num_anchors(feature_map_sizes: Sequence[Tuple[int, int]], anchors_per_location: Sequence[int]) -> int:
    """Total prior count: sum over levels of h * w * k."""
    return int(sum(h * w * k for (h, w), k in zip(feature_map_sizes, anchors_per_location)))


def anchors_from_config(anchor_cfg, image_size: int, feature_map_sizes: Sequence[Tuple[int, int]], *,
                        trained_size: int | None = None) -> np.ndarray:
    """Priors for a built model: sizes scaled from ``anchor_cfg.size_reference`` to the trained input side.

    Args:
      anchor_cfg: ``config.AnchorConfig``.
      image_size: the input side the model runs at.
      feature_map_sizes: the model's detection levels at that input, [(h, w)].
      trained_size: the input side the model was trained at, if it runs at another (multi-scale
        testing). As Caffe's PriorBox on a reshaped input blob: box sizes and explicit steps stay
        the trained model's pixels, derived steps follow the new input (side / feature-map side).
        Default ``image_size``.

    Returns:
      float32 [A, 4] normalized yxyx (normalized to the ``image_size`` input).
    """
    trained_size = trained_size or image_size
    scale = trained_size / anchor_cfg.size_reference
    # Explicit steps are strides of the reference input (8..300 at 300); at any other
    # size the strides change with the feature maps, so use PriorBox's derived rule.
    steps = anchor_cfg.steps if trained_size == anchor_cfg.size_reference else None
    return ssd_anchors(
        feature_map_sizes,
        image_size,
        min_sizes=[s * scale for s in anchor_cfg.min_sizes],
        max_sizes=[s * scale for s in anchor_cfg.max_sizes],
        aspect_ratios=anchor_cfg.aspect_ratios,
        steps=steps,
        offset=anchor_cfg.offset,
        clip=anchor_cfg.clip,
    )
