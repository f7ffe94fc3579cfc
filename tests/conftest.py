"""Test session setup: two logical CPU devices, so MirroredStrategy tests run on one CPU."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


import pytest  # noqa: E402

from scratchdet_tf import config, train_lib  # noqa: E402
from scratchdet_tf.data import shapes  # noqa: E402

LEARN_STEPS = 300


def learning_cfg(data_dir, seed=0):
    """A tiny Root-ResNet-18 SSD at 64 px on easy shapes: learns in ~35 s on 2 CPU cores (test_learning)."""
    return config.Config(
        model=config.ModelConfig(depth=18, width=0.25, image_size=64, root_depth=2, num_classes=5, bn_momentum=0.9),
        anchors=config.AnchorConfig(size_reference=64, min_sizes=(10, 18, 28, 38, 48, 58),
                                    max_sizes=(18, 28, 38, 48, 58, 64), steps=(),
                                    aspect_ratios=((2.0,),) * 6),
        data=config.DataConfig(train_source=f"shapes:{data_dir}", val_source=f"shapes:{data_dir}:train",
                               augment=False, shuffle_buffer=64),
        train=config.TrainConfig(batch_size=16, max_steps=LEARN_STEPS, learning_rate=0.05, warmup_steps=20,
                                 lr_schedule="cosine", log_every_steps=10, checkpoint_every_steps=LEARN_STEPS,
                                 seed=seed),
    )


def tiny_train_config(shapes_dir, depth=18, **train):
    """A 1/16-width Root-ResNet SSD at 64 px on ``shapes_dir``, deterministic, batch 4 (training-loop tests)."""
    return config.Config(
        model=config.ModelConfig(depth=depth, width=1 / 16, image_size=64, num_classes=5),
        anchors=config.AnchorConfig(steps=()),
        data=config.DataConfig(train_source=f"shapes:{shapes_dir}", val_source=f"shapes:{shapes_dir}",
                               deterministic=True, shuffle_buffer=16),
        train=config.TrainConfig(**{"batch_size": 4, "max_steps": 2, "learning_rate": 0.01, "lr_boundaries": (),
                                    "log_every_steps": 1, "deterministic": True, **train}),
    )


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """16 training and 4 validation images of the shapes dataset (seed 0), read-only for the tests."""
    d = str(tmp_path_factory.mktemp("shapes"))
    shapes.write_split(d, "train", 16, seed=0)
    shapes.write_split(d, "val", 4, seed=0)
    return d


@pytest.fixture(scope="session")
def easy_shapes(tmp_path_factory):
    """64 training images of 1-2 large shapes (the learning tests' data)."""
    d = str(tmp_path_factory.mktemp("learn_shapes"))
    shapes.write_split(d, "train", 64, seed=3, object_size=(0.25, 0.6), max_objects=2)
    return d


@pytest.fixture(scope="session")
def learned_run(easy_shapes, tmp_path_factory):
    """(config, model_dir, train result) of the tiny detector trained with seed 0, shared by the tests."""
    cfg = learning_cfg(easy_shapes, seed=0)
    model_dir = str(tmp_path_factory.mktemp("learned") / "run0")
    return cfg, model_dir, train_lib.train(cfg, model_dir)
