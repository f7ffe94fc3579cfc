"""ScratchDet300+ test: multi-scale + flip passes merged per class by box voting (docs/PAPER.md#multi-scale-test).

The paper and its code do not give the scheme (docs/DECISIONS.md#multi-scale-test); we take RefineDet's
``multi_scale_test_net_320`` (sfzhang15/RefineDet test/lib/fast_rcnn/test.py) and scale it to 300.
Sizes here are relative to the model's input side S, and the box-size filters (pixels of the original
image at S = 300) scale with S / 300, so a 160-px model gets the proportional scheme:

    pass            input (at S = 300)              boxes kept (original-image pixels, x S / 300)
    1.0             300 x 300                       all
    1.0 x 0.6       300 x 180, the image's shorter  all
                    side becomes the 180 side
    0.6             180 x 180                       longer side > 32
    1.2 ... 2.2     360, 420, 480, 540, 660         shorter side < 160, 128, 96, 64, 32
    2.0 (COCO)      600                             shorter side < 48

Each pass also runs on the horizontally flipped image. Every pass is post-processed like single-scale
testing (score > 0.01, top 400 per class, NMS 0.45, keep 200), boxes are mapped back to the original image,
filtered by size, and all passes are merged per class by box voting (``box_voting``).

How passes run on a Keras model with a fixed square input:
- Inputs larger than S run on a copy of the model built at that size (the conv weights do not depend on
  it). Its priors are computed as Caffe's PriorBox does on a reshaped input blob: the box sizes stay the
  trained model's pixels (they are not scaled with the input, which would make every box too large by the
  scale factor) and explicit steps stay the same pixels (else image side / feature-map side).
- Inputs smaller than S in either dimension (0.6 and 1.0 x 0.6) are warped to their size and placed at
  the top-left of an S x S canvas filled with the mean colour (0 after mean subtraction, what a conv's zero
  padding of a smaller input also sees), and run on the model itself, so its priors line up with the
  content exactly. Models and priors are square (one ``model.image_size``), so this canvas is also how the
  300 x 180 pass runs. Cells near the content's bottom/right edge see mean-colour padding where a natively
  smaller input would end: a small difference from running the network at that size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, NamedTuple, Sequence, Tuple

import numpy as np
import tensorflow as tf

from scratchdet_tf.boxes import anchors as anchors_lib
from scratchdet_tf.boxes import postprocess
from scratchdet_tf.data import augment
from scratchdet_tf.models import ssd

# Input side the size filters are given for (docs/PAPER.md#multi-scale-test: RefineDet's 320 scheme scaled to 300).
REFERENCE_SIZE = 300


class Scale(NamedTuple):
    """One test pass (and its flip), sized relative to the model's input side S.

    Attributes:
      size: side of the warped input / S; for a non-square pass, its longer side.
      short: 0 for a square input; else the shorter side / S, given to the image's shorter side
        (a landscape image becomes wide, a portrait or square one tall).
      keep_max_side_above: keep boxes whose longer side exceeds this, in original-image pixels at
        S = 300 (0: no filter).
      keep_min_side_below: keep boxes whose shorter side is below this, same units (inf: no filter).
      flip: also run the horizontally flipped image.
    """

    size: float
    short: float = 0.0
    keep_max_side_above: float = 0.0
    keep_min_side_below: float = math.inf
    flip: bool = True


VOC_SCALES = (
    Scale(1.0),
    Scale(1.0, short=0.6),
    Scale(0.6, keep_max_side_above=32.0),  # shrink: only large objects
    Scale(1.2, keep_min_side_below=160.0),  # enlarge: only small objects
    Scale(1.4, keep_min_side_below=128.0),
    Scale(1.6, keep_min_side_below=96.0),
    Scale(1.8, keep_min_side_below=64.0),
    Scale(2.2, keep_min_side_below=32.0),
)
COCO_SCALES = VOC_SCALES + (Scale(2.0, keep_min_side_below=48.0),)


def scales_for_metric(metric: str) -> Tuple[Scale, ...]:
    """The scheme for an ``eval.metric``: COCO adds the 2.0 pass."""
    return COCO_SCALES if metric == "coco" else VOC_SCALES


def content_shape(scale: Scale, model_size: int, image_hw: Sequence[int]) -> Tuple[int, int]:
    """(height, width) in pixels that the original image is warped to for this pass."""
    side = int(round(scale.size * model_size))
    if not scale.short:
        return side, side
    short = int(round(scale.short * model_size))
    height, width = image_hw
    return (short, side) if height < width else (side, short)


def canvas_size(scale: Scale, model_size: int) -> int:
    """Side of the square network input of a pass: S for passes not larger than S, else the pass size."""
    return max(model_size, int(round(scale.size * model_size)))


def unmap_boxes(boxes: np.ndarray, content_hw: Sequence[int], canvas: int, flipped: bool) -> np.ndarray:
    """Boxes normalized to the canvas -> normalized to the original image (clipped to [0, 1]).

    The content (the warped, possibly flipped image) sits at the canvas' top-left corner.

    Args:
      boxes: float [N, 4] yxyx, normalized to the canvas.
      content_hw: (h, w) pixels of the content.
      canvas: side of the square canvas in pixels.
      flipped: the content was the horizontally flipped image.

    Returns:
      float32 [N, 4] yxyx, normalized to the original image.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scale = np.array([canvas / content_hw[0], canvas / content_hw[1]] * 2)
    out = np.clip(boxes * scale, 0.0, 1.0)
    if flipped:
        out = np.stack([out[:, 0], 1.0 - out[:, 3], out[:, 2], 1.0 - out[:, 1]], axis=1)
    return out.astype(np.float32)


def keep_by_size(boxes: np.ndarray, image_hw: Sequence[int], scale: Scale, model_size: int) -> np.ndarray:
    """bool [N]: boxes that pass the scale's size filters (original pixels, thresholds x S / 300).

    Boxes without area (e.g. clipped to a line, lying in the canvas padding) never pass.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    heights = (boxes[:, 2] - boxes[:, 0]) * image_hw[0]
    widths = (boxes[:, 3] - boxes[:, 1]) * image_hw[1]
    factor = model_size / REFERENCE_SIZE
    keep = (heights > 0) & (widths > 0)
    keep &= np.maximum(heights, widths) > scale.keep_max_side_above * factor
    keep &= np.minimum(heights, widths) < scale.keep_min_side_below * factor
    return keep


def _iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one yxyx box with boxes [N, 4]."""
    ymin = np.maximum(box[0], boxes[:, 0])
    xmin = np.maximum(box[1], boxes[:, 1])
    ymax = np.minimum(box[2], boxes[:, 2])
    xmax = np.minimum(box[3], boxes[:, 3])
    inter = np.maximum(ymax - ymin, 0.0) * np.maximum(xmax - xmin, 0.0)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = (box[2] - box[0]) * (box[3] - box[1]) + areas - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_voting(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.45,
               soft_threshold: float | None = None) -> Tuple[np.ndarray, np.ndarray]:
    """Merges one class's boxes by box voting (RefineDet's ``bbox_vote`` / ``soft_bbox_vote``).

    Greedily, the highest-scoring remaining box and every remaining box with IoU >= ``iou_threshold`` with
    it form a cluster, which is removed and replaced by one box: the score-weighted mean of the members'
    coordinates, with the cluster's highest score. "Soft" voting (RefineDet's COCO setting) also keeps,
    for clusters of two or more, each member with its score decayed to score * (1 - IoU with the cluster's
    top box) when that is >= ``soft_threshold``.

    IoU is computed on normalized coordinates, which equals the IoU in (continuous) pixels.

    Args:
      boxes: float [N, 4] yxyx (normalized to the original image).
      scores: float [N].
      iou_threshold: cluster membership.
      soft_threshold: None for plain voting; else the score a decayed copy needs to be kept.

    Returns:
      (boxes float32 [K, 4], scores float32 [K]), in cluster order (descending top score; soft copies
      follow their cluster's box).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    remaining = np.arange(len(scores))
    out_boxes, out_scores = [], []
    while remaining.size:
        overlaps = _iou_one(boxes[remaining[0]], boxes[remaining])
        in_cluster = overlaps >= iou_threshold
        in_cluster[0] = True  # the top box belongs to its cluster even if it has no area
        members = remaining[in_cluster]
        remaining = remaining[~in_cluster]
        weights = scores[members]
        out_boxes.append(weights @ boxes[members] / weights.sum())
        out_scores.append(weights[0])
        if soft_threshold is not None and members.size > 1:
            decayed = weights * (1.0 - overlaps[in_cluster])
            kept = decayed >= soft_threshold
            out_boxes.extend(boxes[members[kept]])
            out_scores.extend(decayed[kept])
    if not out_scores:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    return np.asarray(out_boxes, np.float32).reshape(-1, 4), np.asarray(out_scores, np.float32)


def merge_detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, *, iou_threshold: float = 0.45,
                     soft_threshold: float | None = None, max_detections: int = 200
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Box voting per class (``box_voting``), then the ``max_detections`` best over all classes.

    Args:
      boxes: float [N, 4] yxyx.  scores: float [N].  labels: int [N].
      iou_threshold, soft_threshold: see ``box_voting``.
      max_detections: detections kept per image.

    Returns:
      (boxes float32 [K, 4], scores float32 [K] descending, labels int32 [K]), K <= max_detections.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    labels = np.asarray(labels, np.int32).reshape(-1)
    merged = [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))]
    for label in np.unique(labels):
        mask = labels == label
        class_boxes, class_scores = box_voting(boxes[mask], scores[mask], iou_threshold, soft_threshold)
        merged.append((class_boxes, class_scores, np.full(len(class_scores), label, np.int32)))
    boxes, scores, labels = (np.concatenate(parts) for parts in zip(*merged))
    order = np.argsort(-scores, kind="stable")[:max_detections]
    return boxes[order], scores[order], labels[order]


class MultiScaleDetector:
    """A predict function (uint8 original images -> merged detections) running the multi-scale scheme.

    Call it like ``runner``'s predict functions: ``detector(images uint8 [B, H, W, 3])`` returns numpy
    ``{"boxes": [B, N, 4] normalized yxyx, "scores": [B, N], "classes": [B, N] int32 labels 0..C-1,
    "num_detections": [B]}`` with N = ``max_detections``, zero padded.
    """

    def __init__(self, model, model_cfg, anchor_cfg, *, mean_rgb: Sequence[float], scales: Sequence[Scale],
                 score_threshold: float = 0.01, pre_nms_top_k: int = 400, nms_iou_threshold: float = 0.45,
                 max_detections: int = 200, vote_iou_threshold: float = 0.45, soft_voting: bool = False):
        """Args:
          model: the trained Keras model (input side ``model_cfg.image_size``).
          model_cfg: its ``config.ModelConfig``; copies at larger sizes are built from it.
          anchor_cfg: ``config.AnchorConfig``.
          mean_rgb: the input mean subtracted before the network.
          scales: the passes (``VOC_SCALES``, ``COCO_SCALES`` or any list of ``Scale``).
          score_threshold, pre_nms_top_k, nms_iou_threshold: each pass's post-processing.
          max_detections: detections per pass and per merged image.
          vote_iou_threshold: box-voting cluster IoU.
          soft_voting: RefineDet's COCO "soft" voting (decayed copies above ``score_threshold``).
        """
        if not scales:
            raise ValueError("multi-scale testing needs at least one scale")
        for scale in scales:
            if scale.size <= 0 or not 0 <= scale.short <= scale.size:
                raise ValueError(f"{scale}: need size > 0 and 0 <= short <= size")
        self._model, self._model_cfg, self._anchor_cfg = model, model_cfg, anchor_cfg
        self._mean_rgb = tuple(float(m) for m in mean_rgb)
        self._scales = tuple(scales)
        self._detect_args = dict(score_threshold=score_threshold, pre_nms_top_k=pre_nms_top_k,
                                 nms_iou_threshold=nms_iou_threshold, max_detections=max_detections,
                                 variances=tuple(anchor_cfg.variances))
        self._max_detections = max_detections
        self._vote_iou_threshold = vote_iou_threshold
        self._soft_threshold = score_threshold if soft_voting else None
        self._passes: Dict[Tuple[int, bool], tf.types.experimental.GenericFunction] = {}
        self._networks: Dict[int, Tuple[object, np.ndarray]] = {}

    def __call__(self, images) -> Dict[str, np.ndarray]:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [B, H, W, 3], got shape {images.shape}")
        n = self._max_detections
        out = {"boxes": np.zeros((len(images), n, 4), np.float32), "scores": np.zeros((len(images), n), np.float32),
               "classes": np.zeros((len(images), n), np.int32), "num_detections": np.zeros(len(images), np.int32)}
        for i, image in enumerate(images):
            boxes, scores, labels = self.detect_image(image)
            k = len(scores)
            out["boxes"][i, :k], out["scores"][i, :k], out["classes"][i, :k] = boxes, scores, labels
            out["num_detections"][i] = k
        return out

    def detect_image(self, image) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All passes on one uint8 [H, W, 3] image, merged.

        Returns:
          (boxes float32 [K, 4] normalized to the image, scores float32 [K] descending, labels int32 [K]).
        """
        image_hw = image.shape[:2]
        model_size = self._model_cfg.image_size
        parts = []
        for scale in self._scales:
            content_hw = content_shape(scale, model_size, image_hw)
            canvas = canvas_size(scale, model_size)
            det = self._pass(canvas, scale.flip)(tf.convert_to_tensor(image, tf.uint8),
                                                 tf.constant(content_hw, tf.int32))
            det = {k: v.numpy() for k, v in det.items()}
            for b, flipped in enumerate((False, True) if scale.flip else (False,)):
                k = int(det["num_detections"][b])
                boxes = unmap_boxes(det["boxes"][b, :k], content_hw, canvas, flipped)
                keep = keep_by_size(boxes, image_hw, scale, model_size)
                parts.append((boxes[keep], det["scores"][b, :k][keep], det["classes"][b, :k][keep]))
        boxes, scores, labels = (np.concatenate(p) for p in zip(*parts))
        return merge_detections(boxes, scores, labels, iou_threshold=self._vote_iou_threshold,
                                soft_threshold=self._soft_threshold, max_detections=self._max_detections)

    def _network(self, canvas: int):
        """(model, priors) for a square input of side ``canvas``; larger copies share the weights."""
        if canvas not in self._networks:
            model_size = self._model_cfg.image_size
            if canvas == model_size:
                model = self._model
            else:
                model = ssd.build_model(dataclasses.replace(self._model_cfg, image_size=canvas), self._anchor_cfg)
                model.set_weights(self._model.get_weights())
            priors = anchors_lib.anchors_from_config(self._anchor_cfg, canvas, ssd.feature_map_sizes(model),
                                                     trained_size=model_size)
            self._networks[canvas] = (model, priors)
        return self._networks[canvas]

    def _pass(self, canvas: int, flip: bool):
        """tf.function (uint8 image [H, W, 3], content (h, w)) -> detect() outputs of [image, flipped image]."""
        key = (canvas, flip)
        if key not in self._passes:
            model, priors = self._network(canvas)
            priors = tf.constant(priors)
            mean_rgb = self._mean_rgb
            detect_args = self._detect_args

            @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int32)])
            def run(image, content_hw):
                # The single-scale evaluation transform, to this pass's content size.
                content = augment.transform_eval(image, image_size=content_hw, mean_rgb=mean_rgb)
                batch = tf.stack([content, tf.reverse(content, axis=[1])] if flip else [content])
                batch = tf.image.pad_to_bounding_box(batch, 0, 0, canvas, canvas)  # mean-colour padding
                outputs = model(tf.ensure_shape(batch, [2 if flip else 1, canvas, canvas, 3]), training=False)
                return postprocess.detect(outputs["cls_logits"], outputs["box_deltas"], priors, **detect_args)

            self._passes[key] = run
        return self._passes[key]


def make_predict_fn(cfg, model, scales: Sequence[Scale] | None = None) -> MultiScaleDetector:
    """The multi-scale predict function of a trained model, with the run's post-processing settings.

    Args:
      cfg: ``config.Config`` of the run.
      model: the trained Keras model.
      scales: passes; default ``scales_for_metric(cfg.eval.metric)``. COCO uses soft voting, as RefineDet.

    Returns:
      A ``MultiScaleDetector``.
    """
    return MultiScaleDetector(
        model, cfg.model, cfg.anchors, mean_rgb=cfg.data.mean_rgb,
        scales=scales_for_metric(cfg.eval.metric) if scales is None else scales,
        score_threshold=cfg.eval.score_threshold, pre_nms_top_k=cfg.eval.pre_nms_top_k,
        nms_iou_threshold=cfg.eval.nms_iou_threshold, max_detections=cfg.eval.max_detections,
        soft_voting=cfg.eval.metric == "coco")
