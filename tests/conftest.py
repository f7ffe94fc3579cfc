"""Test session setup and what the test files share.

Two logical CPU devices, so MirroredStrategy tests run on one CPU. Shared here, once: the checkout
root (``ROOT``), the tiny detector's config (``tiny_config`` and the variants derived from it), the
tools' command lines (``cli_flags``, ``tool_command``, ``run_tool``), the synthetic shapes datasets
(``make_shapes`` and the ``shapes_dir`` / ``easy_shapes`` fixtures), the learned tiny detector
(``learned_run``) and the exported tiny detector (``exported`` / ``exported_tflite``), each
built once per session.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


import dataclasses  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from scratchdet_tf import config  # noqa: E402
from scratchdet_tf.boxes import postprocess  # noqa: E402
from scratchdet_tf.config import flagfile  # noqa: E402
from scratchdet_tf.data import augment, shapes  # noqa: E402
from scratchdet_tf.export import calibration, saved_model, tflite  # noqa: E402
from scratchdet_tf.models import ssd  # noqa: E402
from scratchdet_tf.training import train_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout: configs/, tools/

# --------------------------------------------------------------------------------- the tiny detector


def tiny_config(**leaves) -> config.Config:
    """The tests' tiny detector: a 1/16-width Root-ResNet-18 SSD at 64 px for the 5 shapes classes, anchors
    placed by feature-map size (no fixed steps), everything else the defaults.

    ``leaves`` are ``config.replace`` overrides for a test's variant: ``tiny_config(model__num_classes=3)``.
    """
    cfg = config.Config(model=config.ModelConfig(depth=18, width=1 / 16, image_size=64, num_classes=5),
                        anchors=config.AnchorConfig(steps=()))
    return config.replace(cfg, **leaves)


def tiny_train_config(shapes_dir, depth=18, **train):
    """``tiny_config`` training on ``shapes_dir``, deterministic, batch 4, 2 steps (training-loop tests).

    ``train`` overrides the ``train`` section's fields: ``tiny_train_config(d, max_steps=4)``.
    """
    train = {"batch_size": 4, "max_steps": 2, "learning_rate": 0.01, "lr_boundaries": (), "log_every_steps": 1,
             "deterministic": True, **train}
    return tiny_config(model__depth=depth, data__train_source=f"shapes:{shapes_dir}",
                       data__val_source=f"shapes:{shapes_dir}", data__deterministic=True, data__shuffle_buffer=16,
                       **{f"train__{name}": value for name, value in train.items()})


LEARN_STEPS = 300


def learning_cfg(data_dir, seed=0):
    """The tiny detector widened to 1/4 with a 2-conv root, anchors sized for 64 px, on easy shapes: learns in
    ~35 s on 2 CPU cores (test_learning, test_mediapipe)."""
    return tiny_config(
        model__width=0.25, model__root_depth=2, model__bn_momentum=0.9,
        anchors=config.AnchorConfig(size_reference=64, min_sizes=(10, 18, 28, 38, 48, 58),
                                    max_sizes=(18, 28, 38, 48, 58, 64), steps=(), aspect_ratios=((2.0,),) * 6),
        data=config.DataConfig(train_source=f"shapes:{data_dir}", val_source=f"shapes:{data_dir}:train",
                               augment=False, shuffle_buffer=64),
        train=config.TrainConfig(batch_size=16, max_steps=LEARN_STEPS, learning_rate=0.05, warmup_steps=20,
                                 lr_schedule="cosine", log_every_steps=10, checkpoint_every_steps=LEARN_STEPS,
                                 seed=seed),
    )


def cli_flags(cfg: config.Config) -> list:
    """``cfg`` as the tools' dotted flags: ``--section.name=value`` for each leaf that is not the default."""
    values, defaults = dataclasses.asdict(cfg), dataclasses.asdict(config.Config())
    return [f"--{section}.{name}={flagfile.format_value(kind, values[section][name])}"
            for section, name, kind, _ in flagfile.leaves() if values[section][name] != defaults[section][name]]


# ---------------------------------------------------------------------------------------- the tools


def tool_command(name, *args) -> list:
    """The command line of ``tools/<name>.py`` with ``args``, run by this Python."""
    return [sys.executable, os.path.join(ROOT, "tools", f"{name}.py"), *map(str, args)]


def run_tool(name, *args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """Runs ``tools/<name>.py`` in a child process from the checkout root and waits for it.

    Returns the CompletedProcess with stdout and stderr as text. ``kwargs`` go to ``subprocess.run``
    (``env=``, ``check=``, ``cwd=``); ``timeout`` in seconds, ``None`` for none.
    """
    kwargs = {"cwd": ROOT, "capture_output": True, "text": True, **kwargs}
    return subprocess.run(tool_command(name, *args), timeout=timeout, **kwargs)


# ----------------------------------------------------------------------------------------- the data


@pytest.fixture(scope="session")
def make_shapes(tmp_path_factory):
    """``make_shapes(num_train, num_val, seed=0, **options)``: the folder of a shapes dataset with those splits
    (``write_split`` options such as ``object_size``), written once per session and read-only for the tests."""
    made = {}

    def make(num_train, num_val, seed=0, **options):
        key = (num_train, num_val, seed, tuple(sorted(options.items())))
        if key not in made:
            folder = str(tmp_path_factory.mktemp("shapes"))
            for split, num_images in (("train", num_train), ("val", num_val)):
                if num_images:
                    shapes.write_split(folder, split, num_images, seed=seed, **options)
            made[key] = folder
        return made[key]

    return make


@pytest.fixture(scope="session")
def shapes_dir(make_shapes):
    """16 training and 4 validation images of the shapes dataset (seed 0), read-only for the tests."""
    return make_shapes(16, 4, seed=0)


@pytest.fixture(scope="session")
def easy_shapes(make_shapes):
    """64 training images of 1-2 large shapes (the learning tests' data)."""
    return make_shapes(64, 0, seed=3, object_size=(0.25, 0.6), max_objects=2)


@pytest.fixture(scope="session")
def learned_run(easy_shapes, tmp_path_factory):
    """(config, model_dir, train result) of the tiny detector trained with seed 0, shared by the tests."""
    cfg = learning_cfg(easy_shapes, seed=0)
    model_dir = str(tmp_path_factory.mktemp("learned") / "run0")
    return cfg, model_dir, train_lib.train(cfg, model_dir)


# --------------------------------------------------------------------------- the exported tiny detector

EXPORT_SIZE = 64
EXPORT_CLASS_NAMES = ("cat", "dog", "bird")


def export_config(max_detections=20):
    """``tiny_config`` for 3 named classes, as the export tests export it.

    bn_momentum 0: one training-mode call sets the BN statistics to those of real activations, so the random
    network gives well-scaled logits and deltas (a sane stand-in for a trained one).
    """
    return tiny_config(model__num_classes=3, model__bn_momentum=0.0, data__class_names=EXPORT_CLASS_NAMES,
                       export__max_detections=max_detections)


def synthetic_batch(n, size=EXPORT_SIZE, seed=0):
    """``n`` smooth random uint8 [size, size, 3] images as one [n, size, size, 3] batch."""
    return np.stack(list(calibration.synthetic_images(n, size, seed=seed)))


def calibrated_model(cfg):
    """(model, anchors) of ``cfg``'s network, seeded, with BN statistics from one training-mode call."""
    keras.utils.set_random_seed(0)
    model = ssd.build_model(cfg.model, cfg.anchors)
    model(synthetic_batch(8, cfg.model.image_size, seed=100).astype(np.float32) - np.float32(cfg.data.mean_rgb),
          training=True)
    return model, ssd.model_anchors(model, cfg.anchors, cfg.model.image_size)


def calibration_images():
    """The int8 calibration set of the export tests: 8 synthetic images."""
    return calibration.representative_images(lambda: calibration.synthetic_images(8, 80, seed=7), EXPORT_SIZE, 8)


def reference_detections(exported, batch):
    """Keras model + augment.transform_eval + postprocess.detect, eagerly, per image."""
    cfg, model = exported["cfg"], exported["model"]
    inputs = tf.stack([augment.transform_eval(image, image_size=EXPORT_SIZE, mean_rgb=cfg.data.mean_rgb)
                       for image in batch])
    out = model(inputs, training=False)
    return {k: v.numpy() for k, v in postprocess.detect(
        out["cls_logits"], out["box_deltas"], exported["anchors"], score_threshold=cfg.eval.score_threshold,
        pre_nms_top_k=cfg.eval.pre_nms_top_k, nms_iou_threshold=cfg.eval.nms_iou_threshold,
        max_detections=cfg.export.max_detections).items()}


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """The tiny detector of ``export_config`` exported as a SavedModel (step 7), loaded back."""
    cfg = export_config()
    model, anchors = calibrated_model(cfg)
    export_dir = str(tmp_path_factory.mktemp("export"))
    saved_model.export_saved_model(model, anchors, cfg, export_dir, EXPORT_CLASS_NAMES, step=7)
    loaded = tf.saved_model.load(export_dir)
    return {"cfg": cfg, "model": model, "anchors": anchors, "dir": export_dir, "loaded": loaded,
            "default": loaded.signatures["serving_default"], "bytes": loaded.signatures["serving_bytes"]}


@pytest.fixture(scope="session")
def exported_tflite(exported, tmp_path_factory):
    """``exported`` plus its TFLite files in every mode beside it, and an fp32 TFLite file with
    per-class (regular) NMS in ``regular_dir``: the TFLite conversions take about a minute."""
    model, anchors, cfg = (exported[k] for k in ("model", "anchors", "cfg"))
    tflite.export_tflite(model, anchors, cfg, exported["dir"], tflite.MODES, calibration_images())
    regular_dir = str(tmp_path_factory.mktemp("regular"))
    tflite.export_tflite(model, anchors, cfg, regular_dir, ["fp32"], use_regular_nms=True)
    return {**exported, "regular_dir": regular_dir}
