"""The optimization landscape of training runs (paper Figures 1 and 7), read back from TensorBoard logs.

``train_lib.train`` logs, every ``train.log_every_steps``, the training ``loss``, the global gradient L2
norm ``grad_norm`` and its step-to-step change ``grad_norm_fluctuation`` = |‖g_t‖ − ‖g_{t−1}‖| to
``<model_dir>/train``. ``plot_landscape`` draws the three as panels (a) loss, (b) gradient norm and
(c) the fluctuation smoothed with a debiased exponential moving average (TensorBoard's smoothing):
``s_t = α·s_{t−1} + (1 − α)·x_t``, reported as ``s_t / (1 − α^t)``. The raw fluctuation of single
steps is too noisy to compare runs by eye; the paper also plots it smoothed.

A diverged run stops logging at its last finite step, so its curves end there; its end is marked
with an ``x`` and the legend says where it diverged (from the run's ``train_result.json``).

A cell of an ablation grid run over seeds (``ablation.run_grid``: ``<cell>/seed<k>`` folders) loads as one
``Run`` whose curves are the mean over its seeds (``mean_curve``: at each step, the mean over the seeds
that logged it, so a diverged seed leaves the mean where it stopped); its seeds are drawn thin and
semi-transparent behind the thick mean curve, labelled "<label> (mean of n seeds)".
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from scratchdet_tf import plots
from scratchdet_tf import run_dir as run_dir_lib

TAGS = ("loss", "grad_norm", "grad_norm_fluctuation")
PANELS = (("loss", "(a) training loss"), ("grad_norm", "(b) L2 norm of gradient"),
          ("grad_norm_fluctuation", "(c) fluctuation of L2 norm of gradient (EMA {smoothing:g})"))

Series = Tuple[np.ndarray, np.ndarray]  # (steps int64 [N], values float64 [N]), sorted by step
SEED_DIR = re.compile(r"^seed(\d+)$")  # a seed's run folder inside a grid cell's (ablation.SEED_DIR)


@dataclasses.dataclass
class Run:
    """One training run's curves, or a cell's mean curves over its seeds (``seeds`` holds the seeds' runs)."""

    label: str
    scalars: Dict[str, Series]
    diverged_at: int | None = None  # the step the divergence guard stopped at, None if it did not
    seeds: List[Run] = dataclasses.field(default_factory=list)  # a cell's seed runs; [] for a plain run


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


def seed_dirs(cell_dir: str) -> List[str]:
    """The ``seed<k>`` subfolders of a grid cell's folder, by k; [] for any other folder."""
    if not os.path.isdir(cell_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(cell_dir)
             if (m := SEED_DIR.match(name)) and os.path.isdir(os.path.join(cell_dir, name))]
    return [os.path.join(cell_dir, name) for _, name in sorted(found)]


def mean_curve(series: Sequence[Series]) -> Series:
    """The mean of curves logged at possibly different steps: at each step any of them logged, the mean
    over those that logged it.

    Args:
      series: (steps, values) pairs.

    Returns:
      (steps int64 [M] sorted, the union of the steps; values float64 [M]).
    """
    if not series:
        return np.zeros([0], np.int64), np.zeros([0], np.float64)
    steps = np.unique(np.concatenate([np.asarray(s, np.int64) for s, _ in series]))
    total, count = np.zeros(len(steps), np.float64), np.zeros(len(steps), np.int64)
    for s, v in series:
        index = np.searchsorted(steps, np.asarray(s, np.int64))
        np.add.at(total, index, np.asarray(v, np.float64))
        np.add.at(count, index, 1)
    return steps, total / count


def _load_one(run_dir: str, label: str) -> Run:
    scalars = read_scalars(run_dir)
    diverged_at = None
    result = run_dir_lib.read_train_result(run_dir) or {}
    if result.get("status") == "diverged":
        diverged_at = int(result["step"])
    return Run(label, scalars, diverged_at)


def load_run(run_dir: str, label: str | None = None) -> Run:
    """A run's curves and, from its ``train_result.json`` if present, where it diverged; or, for a grid
    cell's folder holding ``seed<k>`` run folders (and no event file of its own), the mean curves of its
    seeds with the seeds' runs in ``Run.seeds``.

    Args:
      run_dir: a training model_dir, or a grid cell's folder of seed runs.
      label: legend text; default the folder's name.

    Raises:
      FileNotFoundError: no event file in the run (or in any seed run of the cell).
    """
    label = label or os.path.basename(os.path.normpath(run_dir))
    seeds = seed_dirs(run_dir) if not event_files(run_dir) else []
    if not seeds:
        return _load_one(run_dir, label)
    # A seed folder without event files has not logged yet (a grid still running): it has no curve.
    runs = [_load_one(path, os.path.basename(path)) for path in seeds if event_files(path)]
    if not runs:
        raise FileNotFoundError(f"no TensorBoard event file (events.out.tfevents.*) in any of {run_dir}'s seed "
                                f"folders ({', '.join(os.path.basename(p) for p in seeds)})")
    tags = sorted({tag for run in runs for tag in run.scalars})
    scalars = {tag: mean_curve([run.scalars[tag] for run in runs if tag in run.scalars]) for tag in tags}
    return Run(label, scalars, None, runs)


def _legend(run: Run) -> str:
    if not run.seeds:
        return run.label if run.diverged_at is None else f"{run.label} (diverged at step {run.diverged_at})"
    diverged = [seed.diverged_at for seed in run.seeds if seed.diverged_at is not None]
    text = f"{run.label} (mean of {len(run.seeds)} seeds"
    if diverged:
        text += f"; {len(diverged)} diverged at step{'s' if len(diverged) > 1 else ''} {', '.join(map(str, diverged))}"
    return text + ")"


def _plot_curve(ax, run: Run, tag: str, smoothing: float, color: str, *, linewidth: float, alpha: float = 1.0,
                label: str | None = None) -> None:
    """One run's curve of ``tag`` (EMA-smoothed for the fluctuation), an ``x`` where it diverged."""
    steps, values = run.scalars[tag]
    if tag == "grad_norm_fluctuation":
        values = ema(values, smoothing)
    ax.plot(steps, values, color=color, linewidth=linewidth, alpha=alpha, label=label)
    if run.diverged_at is not None and len(steps):
        ax.plot(steps[-1:], values[-1:], marker="x", markersize=9, color=color, alpha=alpha, linestyle="none")


def plot_landscape(runs: Sequence[Run], out_path: str, *, smoothing: float = 0.9, log_scale: bool = True,
                   title: str = "") -> str:
    """Draws loss, gradient norm and smoothed gradient-norm fluctuation of the runs into one PNG.

    Args:
      runs: one curve per run and panel, labelled with ``Run.label``; a cell over seeds (``Run.seeds``)
        draws each seed thin and semi-transparent and its mean curve thick, in one colour.
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
            color = f"C{index % 10}"
            for seed in run.seeds:  # thin, behind the mean
                if tag in seed.scalars:
                    _plot_curve(ax, seed, tag, smoothing, color, linewidth=0.7, alpha=0.35)
            _plot_curve(ax, run, tag, smoothing, color, linewidth=2.2 if run.seeds else 1.2, label=_legend(run))
        ax.set_title(panel_title.format(smoothing=smoothing), fontsize=10)
        ax.set_xlabel("training step")
        if log_scale:
            ax.set_yscale("log", nonpositive="mask")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    return plots.save_figure(fig, out_path, title)
