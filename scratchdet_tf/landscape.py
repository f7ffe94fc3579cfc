"""The optimization landscape of training runs (paper Figures 1 and 7), read back from TensorBoard logs.

``train_lib.train`` logs, every ``train.log_every_steps``, the training ``loss``, the global gradient L2
norm ``grad_norm`` and its step-to-step change ``grad_norm_fluctuation`` = |‖g_t‖ − ‖g_{t−1}‖| to
``<model_dir>/train``. ``plot_landscape`` draws the three as panels (a) loss, (b) gradient norm and
(c) the fluctuation smoothed with a debiased exponential moving average (TensorBoard's smoothing):
``s_t = α·s_{t−1} + (1 − α)·x_t``, reported as ``s_t / (1 − α^t)``. The raw fluctuation of single
steps is too noisy to compare runs by eye; the paper also plots it smoothed.

A diverged run stops logging at its last finite step, so its curves end there; its end is marked
with an ``x`` and the legend says where it diverged (from the run's ``train_result.json``).
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf

from scratchdet_tf import plots
from scratchdet_tf import run_dir as run_dir_lib

TAGS = ("loss", "grad_norm", "grad_norm_fluctuation")
PANELS = (("loss", "(a) training loss"), ("grad_norm", "(b) L2 norm of gradient"),
          ("grad_norm_fluctuation", "(c) fluctuation of L2 norm of gradient (EMA {smoothing:g})"))

Series = Tuple[np.ndarray, np.ndarray]  # (steps int64 [N], values float64 [N]), sorted by step


@dataclasses.dataclass
class Run:
    """One training run's curves."""

    label: str
    scalars: Dict[str, Series]
    diverged_at: int | None = None  # the step the divergence guard stopped at, None if it did not


def event_files(run_dir: str) -> list:
    """The TensorBoard event files of a run: ``<run_dir>/train/events.out.tfevents.*``, else in ``run_dir``."""
    for folder in (os.path.join(run_dir, "train"), run_dir):
        files = sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*")))
        if files:
            return files
    return []


def _scalar_value(value) -> float:
    if value.HasField("tensor"):  # TF2 tf.summary.scalar writes a tensor
        return float(tf.make_ndarray(value.tensor))
    return float(value.simple_value)  # TF1-style summaries


def read_scalars(run_dir: str, tags: Sequence[str] = TAGS) -> Dict[str, Series]:
    """Reads scalar summaries of a run; a step logged twice (a resumed run) keeps its latest value.

    Args:
      run_dir: a training model_dir (or a folder holding event files).
      tags: scalar tags to read.

    Returns:
      ``{tag: (steps, values)}`` for the tags present, each sorted by step.

    Raises:
      FileNotFoundError: no event file in ``run_dir/train`` or ``run_dir``.
    """
    files = event_files(run_dir)
    if not files:
        raise FileNotFoundError(f"no TensorBoard event file (events.out.tfevents.*) in {run_dir}/train or {run_dir}")
    points: Dict[str, Dict[int, Tuple[float, float]]] = {}  # tag -> step -> (wall_time, value)
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag in tags:
                    by_step = points.setdefault(value.tag, {})
                    if event.step not in by_step or event.wall_time >= by_step[event.step][0]:
                        by_step[event.step] = (event.wall_time, _scalar_value(value))
    scalars = {}
    for tag, by_step in points.items():
        steps = np.array(sorted(by_step), np.int64)
        scalars[tag] = (steps, np.array([by_step[s][1] for s in steps], np.float64))
    return scalars


def ema(values: np.ndarray, smoothing: float) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's): ``s_t = a*s_{t-1} + (1-a)*x_t``, over ``1 - a^t``.

    Args:
      values: float [N].
      smoothing: a in [0, 1); 0 returns the values unchanged.

    Raises:
      ValueError: ``smoothing`` outside [0, 1).
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing={smoothing} is invalid: must be in [0, 1)")
    out = np.empty(len(values), np.float64)
    last = 0.0
    for t, x in enumerate(values, start=1):
        last = smoothing * last + (1.0 - smoothing) * float(x)
        out[t - 1] = last / (1.0 - smoothing ** t)
    return out


def load_run(run_dir: str, label: str | None = None) -> Run:
    """A run's curves and, from its ``train_result.json`` if present, where it diverged.

    Args:
      run_dir: a training model_dir.
      label: legend text; default the folder's name.
    """
    scalars = read_scalars(run_dir)
    diverged_at = None
    result = run_dir_lib.read_train_result(run_dir) or {}
    if result.get("status") == "diverged":
        diverged_at = int(result["step"])
    return Run(label or os.path.basename(os.path.normpath(run_dir)), scalars, diverged_at)


def plot_landscape(runs: Sequence[Run], out_path: str, *, smoothing: float = 0.9, log_scale: bool = True,
                   title: str = "") -> str:
    """Draws loss, gradient norm and smoothed gradient-norm fluctuation of the runs into one PNG.

    Args:
      runs: one curve per run and panel, labelled with ``Run.label``.
      out_path: the PNG to write (its folder is created).
      smoothing: EMA factor for panel (c) (see ``ema``).
      log_scale: logarithmic y axes (diverging runs span many decades); non-positive points are hidden.
      title: figure title.

    Returns:
      ``out_path``.
    """
    fig = plots.new_figure(15, 4.2)
    axes = fig.subplots(1, len(PANELS))
    for ax, (tag, panel_title) in zip(axes, PANELS):
        for index, run in enumerate(runs):
            if tag not in run.scalars:
                continue
            steps, values = run.scalars[tag]
            if tag == "grad_norm_fluctuation":
                values = ema(values, smoothing)
            color = f"C{index % 10}"
            label = run.label if run.diverged_at is None else f"{run.label} (diverged at step {run.diverged_at})"
            ax.plot(steps, values, color=color, linewidth=1.2, label=label)
            if run.diverged_at is not None and len(steps):
                ax.plot(steps[-1:], values[-1:], marker="x", markersize=9, color=color, linestyle="none")
        ax.set_title(panel_title.format(smoothing=smoothing), fontsize=10)
        ax.set_xlabel("training step")
        if log_scale:
            ax.set_yscale("log", nonpositive="mask")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    return plots.save_figure(fig, out_path, title)
