"""export.info: what an export folder records about itself (export_info.json, labels.txt); class names read back."""

import os

import pytest
from conftest import EXPORT_CLASS_NAMES, EXPORT_SIZE

from scratchdet_tf import config
from scratchdet_tf.export import info, tflite
from scratchdet_tf.models import ssd


@pytest.mark.slow
def test_export_dir_layout_and_info(exported_tflite):
    export_dir = exported_tflite["dir"]
    with open(os.path.join(export_dir, "assets", "labels.txt")) as f:
        assert f.read().split() == list(EXPORT_CLASS_NAMES)
    written = info.read_info(export_dir)
    assert written["conv_macs"] == ssd.conv_macs(exported_tflite["model"])
    assert written["image_size"] == EXPORT_SIZE and written["class_names"] == list(EXPORT_CLASS_NAMES)
    assert written["step"] == 7
    assert config.from_dict(written["config"]) == exported_tflite["cfg"]
    assert set(written["tflite"]) == set(tflite.MODES) and written["tflite_nms"] == "fast"
    assert info.class_names_of(export_dir) == EXPORT_CLASS_NAMES
    assert info.class_names_of(os.path.join(export_dir, "model_int8.tflite")) == EXPORT_CLASS_NAMES
