"""COCO→VOC initialization: conf-head class sub-sampling (docs/PAPER.md#coco-to-voc), plain loads, clear errors."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from scratchdet_tf import config, run_dir
from scratchdet_tf.data import annotations
from scratchdet_tf.models import ssd
from scratchdet_tf.training import finetune

# docs/PAPER.md#coco-to-voc, typed in from SSD's coco_voc_map.txt:
# VOC model class -> COCO model class (SSD contiguous, 1-based).
SPEC_VOC_TO_COCO = {0: 0, 1: 5, 2: 2, 3: 15, 4: 9, 5: 40, 6: 6, 7: 3, 8: 16, 9: 57, 10: 20, 11: 61, 12: 17, 13: 18,
                    14: 4, 15: 1, 16: 59, 17: 19, 18: 58, 19: 7, 20: 63}


def tiny_cfg(num_classes, head_bn=True):
    return tiny_config(model__num_classes=num_classes, model__head_bn=head_bn)


def randomize(model, seed=0):
    """Random weights everywhere, BN moving statistics included, so every copied number matters."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if "moving_variance" in variable.path:
            variable.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))
        else:
            variable.assign(rng.normal(0.0, 0.3, shape).astype(np.float32))


def save_run(model, cfg, model_dir):
    """A training run's folder: config.json + a CheckpointManager checkpoint holding ``model``."""
    run_dir.write_config(cfg, str(model_dir))
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(model_dir), max_to_keep=1).save(
        checkpoint_number=7)


def outputs(model, images):
    out = model(images, training=False)
    return out["cls_logits"].numpy(), out["box_deltas"].numpy()


@pytest.fixture
def images():
    return np.random.default_rng(1).normal(0.0, 50.0, (2, 64, 64, 3)).astype(np.float32)


def test_class_table_is_the_spec_map_and_names_match():
    class_map = finetune.class_index_map(80, 20)
    assert dict(enumerate(class_map.tolist())) == SPEC_VOC_TO_COCO
    assert [voc for voc, _, _ in finetune.VOC_TO_COCO] == list(annotations.VOC_CLASS_NAMES)
    assert len(set(class_map.tolist())) == 21


def test_conf_channel_index_follows_the_anchor_major_layout():
    # 2 priors, source 4 classes (+bg = 5 channels each), target keeps classes (0, 3, 1).
    index = finetune.conf_channel_index(np.array([0, 3, 1]), 4, 2)
    np.testing.assert_array_equal(index, [0, 3, 1, 5, 8, 6])


@pytest.mark.parametrize("head_bn", [True, False], ids=["head_bn", "conv_bias"])
def test_voc_logits_equal_the_selected_coco_logits_before_training(tmp_path, images, head_bn):
    coco_cfg, voc_cfg = tiny_cfg(80, head_bn), tiny_cfg(20, head_bn)
    coco = ssd.build_model(coco_cfg.model, coco_cfg.anchors)
    randomize(coco)
    save_run(coco, coco_cfg, tmp_path / "coco")
    voc = ssd.build_model(voc_cfg.model, voc_cfg.anchors)
    read = finetune.load_init_checkpoint(voc, str(tmp_path / "coco"), voc_cfg)
    assert os.path.basename(read) == "ckpt-7"
    coco_logits, coco_boxes = outputs(coco, images)
    voc_logits, voc_boxes = outputs(voc, images)
    assert voc_logits.shape[-1] == 21
    for voc_class, coco_class in SPEC_VOC_TO_COCO.items():
        np.testing.assert_allclose(voc_logits[..., voc_class], coco_logits[..., coco_class], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(voc_boxes, coco_boxes)


def test_same_class_count_is_a_plain_load_from_a_checkpoint_prefix(tmp_path, images):
    cfg = tiny_cfg(5)
    source = ssd.build_model(cfg.model, cfg.anchors)
    randomize(source, seed=3)
    save_run(source, cfg, tmp_path)
    target = ssd.build_model(cfg.model, cfg.anchors)
    finetune.load_init_checkpoint(target, str(tmp_path / "ckpt-7"), cfg)
    for a, b in zip(outputs(source, images), outputs(target, images)):
        np.testing.assert_array_equal(a, b)


def test_unmappable_class_counts_are_an_error_naming_the_checkpoint(tmp_path):
    coco_cfg = tiny_cfg(80)
    save_run(ssd.build_model(coco_cfg.model, coco_cfg.anchors), coco_cfg, tmp_path)
    shapes_cfg = tiny_cfg(5)
    target = ssd.build_model(shapes_cfg.model, shapes_cfg.anchors)
    with pytest.raises(config.ConfigError, match=r"ckpt-7.*80 classes and the new one 5"):
        finetune.load_init_checkpoint(target, str(tmp_path), shapes_cfg)


def test_a_different_network_is_an_error_naming_the_layer(tmp_path):
    coco_cfg = tiny_cfg(80, head_bn=True)
    save_run(ssd.build_model(coco_cfg.model, coco_cfg.anchors), coco_cfg, tmp_path)
    voc_cfg = tiny_cfg(20, head_bn=False)  # conv bias instead of head BN
    keras.backend.clear_session()
    target = ssd.build_model(voc_cfg.model, voc_cfg.anchors)
    with pytest.raises(config.ConfigError, match="head_conf_0_bn"):
        finetune.load_init_checkpoint(target, str(tmp_path), voc_cfg)


def test_a_plain_load_into_another_network_is_a_config_error(tmp_path):
    cfg = tiny_cfg(5, head_bn=True)
    save_run(ssd.build_model(cfg.model, cfg.anchors), cfg, tmp_path)
    other = tiny_cfg(5, head_bn=False)
    with pytest.raises(config.ConfigError, match="ckpt-7 does not fit"):
        finetune.load_init_checkpoint(ssd.build_model(other.model, other.anchors), str(tmp_path), other)


def test_missing_checkpoint_is_a_file_not_found_error(tmp_path):
    cfg = tiny_cfg(20)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config.to_dict(cfg), f)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        finetune.load_init_checkpoint(ssd.build_model(cfg.model, cfg.anchors), str(tmp_path), cfg)
