"""What an export says about itself: ``export_info.json``, the label map, class names.

An export folder holds ``assets/labels.txt`` (class names, one a line, label order) and
``assets.extra/export_info.json`` (config, conv MACs, class names, post-processing settings,
TFLite files); a ``.tflite`` also carries its labels packed in (``tflite_metadata``). A config's class
names come from ``data.class_names.for_config``; this module reads them back from an export.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import keras

from scratchdet_tf import config as config_lib
from scratchdet_tf.export import tflite_metadata
from scratchdet_tf.models import ssd

LABELS_FILE = "labels.txt"


INFO_FILE = os.path.join("assets.extra", "export_info.json")


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
        packed = tflite_metadata.packed_labels(model_path)
        if packed:
            return packed
    labels = os.path.join(export_dir_of(model_path), "assets", LABELS_FILE)
    if os.path.isfile(labels):
        with open(labels) as f:
            return tuple(line.rstrip("\n") for line in f if line.strip())
    return tuple(read_info(model_path).get("class_names", ()))
