"""Reading a training run back: its config and its newest (or a named) checkpoint."""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from scratchdet_tf import config as config_lib
from scratchdet_tf import run_dir
from scratchdet_tf.models import ssd


class Restored(NamedTuple):
    cfg: config_lib.Config
    model: keras.Model
    anchors: np.ndarray  # float32 [A, 4] normalized yxyx, in the model's prediction order
    checkpoint: str  # the checkpoint prefix that was read
    step: int


def load_config(model_dir: str) -> config_lib.Config:
    """The ``config.json`` a training run wrote into ``model_dir``.

    Raises:
      FileNotFoundError: naming the missing file.
    """
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {model_dir!r} a training model_dir?")
    with open(path) as f:
        return config_lib.from_dict(json.load(f))


def checkpoint_step(prefix: str) -> int:
    """The step number in a CheckpointManager prefix such as ``.../ckpt-500``."""
    tail = os.path.basename(prefix).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def restore_model(model_dir: str, checkpoint: str | None = None, cfg: config_lib.Config | None = None
                  ) -> Restored:
    """Builds the run's model and reads its weights (optimizer and iterator state are skipped).

    Args:
      model_dir: a training run's folder (config.json + checkpoints).
      checkpoint: a checkpoint prefix; default: the newest in ``model_dir``.
      cfg: use this config instead of ``model_dir/config.json``.

    Without ``checkpoint``, the newest complete checkpoint on disk is read (the ``checkpoint``
    index file is not needed); a truncated or corrupt one is skipped with a warning naming it.

    Raises:
      FileNotFoundError: no config or no checkpoint, naming the folder.
      run_dir.RunDirError: checkpoints exist but none is readable, or the named one is not.
    """
    cfg = cfg or load_config(model_dir)
    candidates = [checkpoint] if checkpoint else run_dir.resume_candidates(model_dir)
    if not candidates:
        raise FileNotFoundError(f"no checkpoint in {model_dir!r}")
    model = ssd.build_model(cfg.model, cfg.anchors)
    checkpoint = run_dir.restore_first_readable(
        candidates, lambda prefix: tf.train.Checkpoint(model=model).read(prefix).expect_partial(), model_dir)
    anchors = ssd.model_anchors(model, cfg.anchors, cfg.model.image_size)
    return Restored(cfg, model, anchors, checkpoint, checkpoint_step(checkpoint))
