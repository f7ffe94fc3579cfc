"""What a training run reports while it runs: console lines, TensorBoard scalars, ``training_log.jsonl``, speed.

Training time excludes periodic evaluation (``paused``); throughput also excludes the first step of
a run (tracing and graph building).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Dict

import tensorflow as tf
from absl import logging

from scratchdet_tf import config as config_lib
from scratchdet_tf.training import training_log

CURVES_FILE = "training_curves.png"


class Progress:
    """Logging and timing of one training run (the chief writes files; other workers only time)."""

    def __init__(self, model_dir: str, start_step: int, train_cfg, optimizer, *, is_chief: bool):
        self.start_step = start_step
        self._cfg = train_cfg
        self._optimizer = optimizer
        self._model_dir = model_dir
        self._writer = tf.summary.create_file_writer(os.path.join(model_dir, "train")) if is_chief else None
        self._curves = training_log.TrainingLog(model_dir if is_chief else None, start_step)
        self.last: Dict[str, float] = {"loss": math.nan}  # the newest finite step's numbers
        self._prev_norm = None
        self._t_start = self._t_log = self._t_warm = time.time()
        self._paused_seconds = 0.0
        self._pause_start = None
        self._images_since_log = 0

    def step_done(self, step: int, stats: Dict[str, float], grad_norm: float, skipped: int) -> None:
        """Records a finished step (``stats``: cls_loss, box_loss); logs every ``log_every_steps`` and at the end."""
        self._images_since_log += self._cfg.batch_size
        if step == self.start_step + 1:
            self._t_warm = time.time()
        loss = stats["cls_loss"] + stats["box_loss"]
        if math.isfinite(loss) and math.isfinite(grad_norm):
            fluctuation = abs(grad_norm - self._prev_norm) if self._prev_norm is not None else 0.0
            self._prev_norm = grad_norm
            self.last = {"loss": loss, **stats, "grad_norm": grad_norm, "grad_norm_fluctuation": fluctuation}
        if step % self._cfg.log_every_steps == 0 or step == self._cfg.max_steps:
            self._log(step, skipped)

    def _log(self, step: int, skipped: int) -> None:
        now = time.time()
        rate = self._images_since_log / max(now - self._t_log, 1e-9)
        lr = float(self._optimizer.learning_rate)
        eta = (self._cfg.max_steps - step) * self._cfg.batch_size / max(rate, 1e-9)
        last = self.last
        logging.info("step %d/%d  loss %.4f (cls %.4f box %.4f)  lr %.5g  |g| %.3g  %.1f img/s  ETA %s",
                     step, self._cfg.max_steps, last["loss"], last.get("cls_loss", math.nan),
                     last.get("box_loss", math.nan), lr, last.get("grad_norm", math.nan), rate,
                     time.strftime("%H:%M:%S", time.gmtime(eta)))
        self._curves.append(step, self.train_seconds(), lr=lr, images_per_sec=rate,
                            **{k: last[k] for k in ("loss", "cls_loss", "box_loss") if k in last})
        if self._writer:
            with self._writer.as_default(step=step):
                for name, value in last.items():
                    tf.summary.scalar(name, value)
                tf.summary.scalar("learning_rate", lr)
                tf.summary.scalar("images_per_sec", rate)
                tf.summary.scalar("skipped_steps", skipped)
            self._writer.flush()
        self._t_log, self._images_since_log = now, 0

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside (periodic evaluation) counts neither as training time nor for throughput."""
        self._pause_start = time.time()
        try:
            yield
        finally:
            self._paused_seconds += time.time() - self._pause_start
            self._pause_start = None

    def eval_done(self, step: int, metrics: Dict) -> None:
        """Adds an evaluation record (headline metrics, no per-class table) to the training log."""
        headline = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        logging.info("step %d eval: %s", step, headline)
        self._curves.append(step, self.train_seconds(), eval=headline)

    def draw_curves(self, cfg) -> str | None:
        """Draws the run's whole ``training_log`` into ``<model_dir>/training_curves.png``; returns the path.

        A figure that cannot be drawn costs a warning, never the run's result.
        """
        from scratchdet_tf import plots  # matplotlib: imported only when a run ends

        metric = cfg.train.best_metric or config_lib.headline_metric(cfg.eval.metric)
        try:
            return plots.plot_training_curves(training_log.read(self._model_dir),
                                              os.path.join(self._model_dir, CURVES_FILE), metric=metric,
                                              title=os.path.basename(os.path.normpath(self._model_dir)))
        except Exception as err:  # noqa: BLE001 - a plotting failure must not lose the training result
            logging.warning("could not draw %s: %s", CURVES_FILE, err)
            return None

    def train_seconds(self) -> float:
        """Seconds of training so far in this run (evaluation excluded)."""
        now = self._pause_start or time.time()
        return now - self._t_start - self._paused_seconds

    def images_per_sec(self, step: int) -> float | None:
        """Training images per second after the run's first step; None if it ran fewer than two steps."""
        timed_steps = step - self.start_step - 1
        if timed_steps <= 0:
            return None
        return round(timed_steps * self._cfg.batch_size / max(time.time() - self._t_warm - self._paused_seconds,
                                                                1e-9), 2)
