"""The tf.data input pipeline: read -> shard -> shuffle -> decode -> augment -> encode targets -> batch.

Training elements (batch B, input side S, A priors, M = ``data.max_boxes``)::

    {"image": float32 [B, S, S, 3]  RGB minus data.mean_rgb,
     "cls_targets": int32 [B, A]     0 background, label k -> k + 1,
     "box_targets": float32 [B, A, 4],
     "gt_boxes": float32 [B, M, 4]   normalized yxyx, zero padded,
     "gt_labels": int32 [B, M]       -1 padded,
     "num_boxes": int32 [B]}

Evaluation elements add ``"image_id"`` string [B], ``"original_size"`` int32 [B, 2]
(height, width) and ``"gt_difficult"`` bool [B, M]; they are not augmented (bilinear warp),
not shuffled or repeated, and the last batch may be smaller.

Images beyond ``max_boxes`` boxes keep all of them for the targets but only the first M in
``gt_*``. Bad images are skipped and reported once per epoch (see ``images``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from scratchdet_tf.boxes import targets
from scratchdet_tf.data import augment, images, readers


def pad_ground_truth(boxes, labels, difficult, max_boxes: int):
    """Pads or truncates one image's ground truth to ``max_boxes``.

    Args:
      boxes: float32 [N, 4].
      labels: int32 [N].
      difficult: bool [N].
      max_boxes: M.

    Returns:
      dict: ``gt_boxes`` float32 [M, 4] (zeros), ``gt_labels`` int32 [M] (-1),
      ``gt_difficult`` bool [M] (False), ``num_boxes`` int32 [] = min(N, M).
    """
    n = tf.minimum(tf.shape(labels)[0], max_boxes)
    pad = max_boxes - n
    return {
        "gt_boxes": tf.ensure_shape(tf.pad(boxes[:n], [[0, pad], [0, 0]]), [max_boxes, 4]),
        "gt_labels": tf.ensure_shape(tf.pad(labels[:n], [[0, pad]], constant_values=-1), [max_boxes]),
        "gt_difficult": tf.ensure_shape(tf.pad(difficult[:n], [[0, pad]]), [max_boxes]),
        "num_boxes": n,
    }


def make_dataset(data_cfg, anchors, *, training: bool, image_size: int, batch_size: int,
                 input_context: tf.distribute.InputContext | None = None, iou_threshold: float = 0.5,
                 variances: Sequence[float] = (0.1, 0.1, 0.2, 0.2), seed: int = 0,
                 neg_overlap: float | None = None) -> tf.data.Dataset:
    """Builds the training or evaluation dataset (see the module docstring for elements).

    Args:
      data_cfg: ``config.DataConfig``.
      anchors: float32 [A, 4] normalized yxyx priors.
      training: training (train_source, augmentation, shuffle, repeat, drop remainder) or
        evaluation (val_source).
      image_size: S.
      batch_size: images per batch of this dataset (per replica when sharded).
      input_context: shards the source for multi-worker input.
      iou_threshold: prior matching threshold.
      neg_overlap: unmatched priors at or above this IoU are ignored (``targets.encode``).
      variances: box coder variances.
      seed: seeds shuffling and, per element, augmentation (with ``data.deterministic``
        the whole stream is reproducible).

    Returns:
      ``tf.data.Dataset`` of batched dicts.

    Raises:
      ValueError: if ``data_cfg.class_names`` differs from the source's classes, or a training source
        has no annotated object at all.
    """
    source = data_cfg.train_source if training else data_cfg.val_source
    ds, info = readers.read(source, tfds_data_dir=data_cfg.tfds_data_dir, training=training, decode=False,
                            input_context=input_context, seed=seed, max_image_pixels=data_cfg.max_image_pixels,
                            class_names=data_cfg.class_names)
    if training and info.num_boxes == 0:  # every loss term would be 0: a run that "finishes" having learned nothing
        problems = f" ({info.problems})" if info.problems else ""
        raise ValueError(f"{source}: no object is annotated in any of its {info.num_examples} usable images{problems}; "
                         "nothing to train on")
    if data_cfg.class_names and tuple(data_cfg.class_names) != info.class_names:
        raise ValueError(f"--data.class_names={','.join(data_cfg.class_names)} but {source!r} has classes "
                         f"{','.join(info.class_names)}")
    if data_cfg.cache:
        ds = ds.map(images.load_bytes, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if training and data_cfg.shuffle_buffer > 0:
        # Record sources hold only paths until here, so they are shuffled in full.
        in_memory = not data_cfg.cache and "tfds:" not in source and info.num_examples > 0
        buffer = max(data_cfg.shuffle_buffer, info.num_examples) if in_memory else data_cfg.shuffle_buffer
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    ds = images.mark_epoch_end(ds)
    if training:
        ds = ds.repeat()
    # Order-preserving (deterministic=True whatever the pipeline's option): the per-epoch report counts
    # on every image of an epoch reaching report_and_skip before that epoch's end marker.
    ds = ds.map(lambda raw, is_end: (images.load_bytes(raw), is_end), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    # Files were checked against the pixel limit when read; TFDS records are checked here.
    ds = images.report_and_skip(ds, source, info.problems, info.num_problems,
                                max_pixels=data_cfg.max_image_pixels if "tfds:" in source else None)

    anchors = tf.constant(np.asarray(anchors, np.float32))
    worker = input_context.input_pipeline_id if input_context is not None else 0
    base_seed = tf.constant([seed, worker], tf.int64)

    def prepare(index, raw):
        boxes, labels, difficult = raw["boxes"], raw["labels"], raw["difficult"]
        if training and not data_cfg.use_difficult:
            keep = tf.logical_not(difficult)
            boxes, labels, difficult = (tf.boolean_mask(t, keep) for t in (boxes, labels, difficult))
        element = {}
        if training and data_cfg.augment:
            element_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
            image, boxes, labels, difficult = augment.augment_train(
                raw["encoded"], boxes, labels, difficult, element_seed, image_size=image_size,
                mean_rgb=data_cfg.mean_rgb, expand_prob=data_cfg.expand_prob,
                max_expand_ratio=data_cfg.max_expand_ratio, photometric=data_cfg.photometric,
                crop=data_cfg.crop)
        else:
            decoded = images.decode(raw["encoded"])
            image = augment.transform_eval(decoded, image_size=image_size, mean_rgb=data_cfg.mean_rgb)
            if not training:
                element.update(image_id=raw["image_id"], original_size=tf.shape(decoded)[:2])
        cls_targets, box_targets = targets.encode(boxes, labels, anchors, iou_threshold=iou_threshold,
                                                  variances=tuple(variances), neg_overlap=neg_overlap)
        gt = pad_ground_truth(boxes, labels, difficult, data_cfg.max_boxes)
        element.update(image=image, cls_targets=cls_targets, box_targets=box_targets, gt_boxes=gt["gt_boxes"],
                       gt_labels=gt["gt_labels"], num_boxes=gt["num_boxes"])
        if not training:
            element["gt_difficult"] = gt["gt_difficult"]
        return element

    ds = ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors(log_warning=True)  # a corrupt JPEG body that passed the byte check
    ds = ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = data_cfg.deterministic
    return ds.with_options(options)
