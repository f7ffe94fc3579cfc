"""``--train.init_checkpoint``: weights from another run, COCO→VOC class sub-sampling (docs/PAPER.md#coco-to-voc).

A checkpoint whose run predicts as many classes as the new model is read as it is. An 80-class
COCO checkpoint going into a 20-class VOC model is copied layer by layer: backbone, extras and
localization convs unchanged; in every class-prediction conv (``head_conf_{i}``, and its BN
``head_conf_{i}_bn`` when the head has BN) output channel ``i_anchor * 81 + c_coco`` becomes
``i_anchor * 21 + c_voc`` for the kernel and the bias or the BN gamma/beta/moving statistics, as
SSD's ``convert_model.ipynb`` does with ``coco_voc_map.txt``. Background (class 0) maps to background.
"""

from __future__ import annotations

import os
import re
from typing import Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from scratchdet_tf import config, run_dir
from scratchdet_tf.models import ssd

# VOC label (0-based, annotations.VOC_CLASS_NAMES order) -> COCO contiguous label (0-based over the 80
# classes: SSD-Caffe's labels 1..80 minus 1). SSD's data/VOC0712/coco_voc_map.txt, docs/PAPER.md#coco-to-voc.
# (VOC name, COCO name, COCO label); the COCO category id is given in the comment.
VOC_TO_COCO: Tuple[Tuple[str, str, int], ...] = (
    ("aeroplane", "airplane", 4),  # id 5
    ("bicycle", "bicycle", 1),  # id 2
    ("bird", "bird", 14),  # id 16
    ("boat", "boat", 8),  # id 9
    ("bottle", "bottle", 39),  # id 44
    ("bus", "bus", 5),  # id 6
    ("car", "car", 2),  # id 3
    ("cat", "cat", 15),  # id 17
    ("chair", "chair", 56),  # id 62
    ("cow", "cow", 19),  # id 21
    ("diningtable", "dining table", 60),  # id 67
    ("dog", "dog", 16),  # id 18
    ("horse", "horse", 17),  # id 19
    ("motorbike", "motorcycle", 3),  # id 4
    ("person", "person", 0),  # id 1
    ("pottedplant", "potted plant", 58),  # id 64
    ("sheep", "sheep", 18),  # id 20
    ("sofa", "couch", 57),  # id 63
    ("train", "train", 6),  # id 7
    ("tvmonitor", "tv", 62),  # id 72
)
NUM_COCO_CLASSES = 80
NUM_VOC_CLASSES = 20

# The class-prediction conv of level i and its BN; not head_conf_{i}_flat (a reshape).
CONF_LAYER_PATTERN = r"head_conf_\d+(_bn)?"


def class_index_map(source_num_classes: int, target_num_classes: int, source: str = "the checkpoint") -> np.ndarray:
    """For every model class of the target (background 0 included), the source model class it takes.

    Args:
      source_num_classes: foreground classes of the checkpoint's model.
      target_num_classes: foreground classes of the model being initialized.
      source: names the checkpoint in error messages.

    Returns:
      int64 [target_num_classes + 1]; entry ``t`` is the source class index (0 = background).

    Raises:
      config.ConfigError: no mapping is known for this pair of class counts.
    """
    if source_num_classes == target_num_classes:
        return np.arange(target_num_classes + 1)
    if (source_num_classes, target_num_classes) == (NUM_COCO_CLASSES, NUM_VOC_CLASSES):
        return np.array([0] + [coco_label + 1 for _, _, coco_label in VOC_TO_COCO])
    raise config.ConfigError(
        f"--train.init_checkpoint={source}: its model predicts {source_num_classes} classes and the new one "
        f"{target_num_classes}; only equal counts or COCO {NUM_COCO_CLASSES} -> VOC {NUM_VOC_CLASSES} "
        "(docs/PAPER.md#coco-to-voc) can be mapped")


def conf_channel_index(class_map: np.ndarray, source_num_classes: int, num_anchors: int) -> np.ndarray:
    """Source output channel of every target channel of a class-prediction conv.

    Channel ``a * (C + 1) + c`` of a conf conv is class ``c`` of prior ``a`` at a cell
    (``heads.multibox_head``), so target channel ``a * (T + 1) + t`` takes source channel
    ``a * (S + 1) + class_map[t]``.

    Returns:
      int64 [num_anchors * len(class_map)].
    """
    anchors = np.arange(num_anchors)[:, None]
    return (anchors * (source_num_classes + 1) + class_map[None, :]).reshape(-1)


def _is_conf_layer(name: str) -> bool:
    return re.fullmatch(CONF_LAYER_PATTERN, name) is not None


def copy_weights(source: keras.Model, target: keras.Model, class_map: np.ndarray, source_num_classes: int,
                 source_name: str = "the checkpoint") -> None:
    """Copies every weight of ``source`` into the layer of the same name in ``target``.

    Class-prediction layers (``head_conf_{i}`` and ``head_conf_{i}_bn``) are sub-sampled along their
    output channels with ``conf_channel_index``; all other weights must have equal shapes.

    Raises:
      config.ConfigError: a layer is missing from one model or shapes differ, naming the layer, both
        shapes and ``source_name``.
    """
    source_layers = {layer.name: layer for layer in source.layers if layer.weights}
    target_layers = {layer.name: layer for layer in target.layers if layer.weights}
    if set(source_layers) != set(target_layers):
        only_source = sorted(set(source_layers) - set(target_layers))
        only_target = sorted(set(target_layers) - set(source_layers))
        raise config.ConfigError(f"--train.init_checkpoint={source_name}: the networks differ; layers only in the "
                         f"checkpoint: {only_source[:8]}, only in the new model: {only_target[:8]}")
    for name, layer in target_layers.items():
        values = source_layers[name].get_weights()
        if _is_conf_layer(name):
            channels_out = layer.weights[0].shape[-1]
            num_anchors, rest = divmod(channels_out, len(class_map))
            if rest:
                raise ValueError(f"layer {name}: {channels_out} output channels are not a multiple of "
                                 f"{len(class_map)} classes")
            index = conf_channel_index(class_map, source_num_classes, num_anchors)
            if values[0].shape[-1] != num_anchors * (source_num_classes + 1):
                raise config.ConfigError(
                    f"--train.init_checkpoint={source_name}: layer {name} has {values[0].shape[-1]} output channels, "
                    f"expected {num_anchors} priors x {source_num_classes + 1} classes")
            values = [np.take(v, index, axis=-1) for v in values]
        for variable, value in zip(layer.weights, values):
            if tuple(variable.shape) != value.shape:
                raise config.ConfigError(f"--train.init_checkpoint={source_name}: {variable.path} has shape "
                                 f"{tuple(variable.shape)} in the new model but {value.shape} in the checkpoint")
        layer.set_weights(values)


def _read_weights(model: keras.Model, prefix: str) -> None:
    """Reads every weight of ``model`` from a checkpoint (optimizer, step and iterator are skipped)."""
    try:
        tf.train.Checkpoint(model=model).read(prefix).assert_existing_objects_matched().expect_partial()
    except (AssertionError, ValueError) as e:  # a weight missing from the checkpoint, or of another shape
        raise config.ConfigError(f"--train.init_checkpoint={prefix} does not fit the model {model.name}: "
                                 f"{str(e)[:500]}") from None


def load_init_checkpoint(model: keras.Model, path: str, cfg) -> str:
    """Initializes ``model`` (built from ``cfg``) from a checkpoint of another run; weights only.

    Args:
      model: the new model, ``ssd.build_model(cfg.model, cfg.anchors)``.
      path: a training run's model_dir (its newest checkpoint is read) or a checkpoint prefix.
        The run's ``config.json`` (in that folder, or beside the prefix) says how many classes it predicts.
      cfg: the new run's ``config.Config``.

    Returns:
      The checkpoint prefix that was read.

    Raises:
      FileNotFoundError: no checkpoint at ``path``.
      config.ConfigError: the class counts cannot be mapped or the networks differ, naming the checkpoint.
    """
    prefix = tf.train.latest_checkpoint(path) if os.path.isdir(path) else path
    if not prefix or not tf.io.gfile.exists(prefix + ".index"):
        raise FileNotFoundError(f"--train.init_checkpoint={path}: no checkpoint there (no checkpoint file or "
                                f"{path}.index)")
    model_dir = path if os.path.isdir(path) else os.path.dirname(prefix)
    target_classes = cfg.model.num_classes
    if not run_dir.has_config(model_dir):
        logging.warning("%s has no config.json; reading %s as a %d-class model", model_dir, prefix, target_classes)
        source_cfg = None
    else:
        source_cfg = run_dir.load_config(model_dir)
    if source_cfg is None or source_cfg.model.num_classes == target_classes:
        _read_weights(model, prefix)
        return prefix
    source_classes = source_cfg.model.num_classes
    class_map = class_index_map(source_classes, target_classes, prefix)
    source = ssd.build_model(source_cfg.model, source_cfg.anchors)
    _read_weights(source, prefix)
    copy_weights(source, model, class_map, source_classes, prefix)
    logging.info("initialized from %s: %d -> %d classes, class-prediction channels sub-sampled",
                 prefix, source_classes, target_classes)
    return prefix
