"""The best checkpoint of a run by its periodic validation metric, and early stopping.

``<model_dir>/best/`` is a run folder of its own, ready for every tool that takes a ``--model_dir``
(eval, export, ``Detector.from_run``): ``config.json`` + ``flags.cfg``, one weights-only checkpoint
``ckpt-N`` (model and step, no optimizer or input state) and ``best.json``
(``{"step", "metric", "value", "metrics"}``). A new best is written into ``best.tmp/`` and then
swapped in (the old one moved aside to ``best.old`` first), so a crash leaves either the old best or
the new one.

Early stopping counts in steps, so it survives a resumed run without extra state: the run stops
when ``patience`` evaluations (``patience * eval_every_steps`` steps) brought no new best.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Dict

import tensorflow as tf
from absl import logging

from scratchdet_tf import config as config_lib
from scratchdet_tf import run_dir

BEST_FILE = "best.json"


def read(model_dir: str) -> Dict | None:
    """``best.json`` of a run's best checkpoint (``{"step", "metric", "value", "metrics", "dir"}``), or None."""
    folder = os.path.join(model_dir, run_dir.BEST_DIR)
    _finish_swap(folder)
    try:
        with open(os.path.join(folder, BEST_FILE)) as f:
            return {**json.load(f), "dir": folder}
    except (OSError, ValueError):
        return None


class BestCheckpoint:
    """Keeps ``<model_dir>/best/`` up to date during training (the chief only).

    Args:
      model_dir: the run folder.
      cfg: the run's config (written beside the best weights).
      model: the Keras model being trained.
      step: the training step variable.
    """

    def __init__(self, model_dir: str, cfg: config_lib.Config, model, step: tf.Variable):
        self.folder = os.path.join(model_dir, run_dir.BEST_DIR)
        self.metric = cfg.train.best_metric or config_lib.headline_metric(cfg.eval.metric)
        self._cfg, self._checkpoint = cfg, tf.train.Checkpoint(model=model, step=step)
        self._steps_of_patience = cfg.train.patience * cfg.train.eval_every_steps
        self.best = read(model_dir)
        if self.best is not None and self.best.get("metric") != self.metric:
            logging.warning("%s ranks by %s, this run by %s: starting a new best", self.folder,
                            self.best.get("metric"), self.metric)
            self.best = None

    def update(self, step: int, metrics: Dict) -> bool:
        """Saves the model as the best if ``metrics[metric]`` beats the best so far; returns whether it did."""
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            logging.warning("step %d: no finite %s in the evaluation; best checkpoint unchanged", step, self.metric)
            return False
        if self.best is not None and value <= self.best["value"]:
            return False
        tmp = self.folder + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        self._checkpoint.write(os.path.join(tmp, f"ckpt-{step}"))
        run_dir.write_config(self._cfg, tmp)
        record = {"step": int(step), "metric": self.metric, "value": float(value),
                  "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        with open(os.path.join(tmp, BEST_FILE), "w") as f:
            json.dump(record, f, indent=2)
        old = self.folder + ".old"
        shutil.rmtree(old, ignore_errors=True)
        if os.path.isdir(self.folder):
            os.rename(self.folder, old)
        os.rename(tmp, self.folder)
        shutil.rmtree(old, ignore_errors=True)
        logging.info("step %d: new best %s %.4f (was %s); saved to %s", step, self.metric, value,
                     "none" if self.best is None else f"{self.best['value']:.4f} at step {self.best['step']}",
                     self.folder)
        self.best = {**record, "dir": self.folder}
        return True

    def patience_spent(self, step: int) -> bool:
        """Whether early stopping ends the run at ``step``: ``patience`` evaluations without a new best.

        A best of 0 does not count: a detector trained from scratch first sits on a plateau where every
        evaluation scores 0, and leaves it later (docs/TRAINING.md).
        """
        return bool(self._steps_of_patience and self.best is not None and self.best["value"] > 0
                    and step - self.best["step"] >= self._steps_of_patience)

    def summary(self) -> Dict | None:
        """``{"step", "metric", "value", "dir"}`` of the best checkpoint, or None before the first evaluation."""
        if self.best is None:
            return None
        return {k: self.best[k] for k in ("step", "metric", "value", "dir")}


def _finish_swap(folder: str) -> None:
    """Completes a swap that a crash interrupted: ``best`` moved to ``best.old``, ``best.tmp`` (complete once
    it holds ``best.json``) not yet renamed to ``best``."""
    tmp, old = folder + ".tmp", folder + ".old"
    if not os.path.isdir(folder):
        if os.path.isfile(os.path.join(tmp, BEST_FILE)):
            os.rename(tmp, folder)
        elif os.path.isfile(os.path.join(old, BEST_FILE)):
            os.rename(old, folder)
