"""Figures as PNG files: the training curves of one run (losses, learning rate and validation mAP against
steps and seconds), per-class precision-recall curves, a detection confusion matrix, and the Agg-canvas
figure helpers the other plots share. matplotlib loads on the first figure."""

from __future__ import annotations

import math
import os
from typing import Dict, List, Sequence

import numpy as np


def plot_training_curves(records: List[Dict], out_path: str, *, metric: str = "mAP_07",
                         plateau: float | None = None, target: float | None = None, title: str = "") -> str:
    """Draws a run's ``training_log`` records into one PNG: two columns, against steps and seconds.

    Each column's main panel shows the classification, box and total losses (left axis) and the
    validation ``metric`` of the evaluation records (right axis, dots), with optional dashed lines at the
    constant-classifier loss ``plateau`` and at a ``target`` metric. When the records carry ``"lr"``, a
    small panel below each shows the learning rate (log scale) and the figure is taller (12 x 5.6 in
    instead of 12 x 4.2).

    Args:
      records: ``training_log.read(model_dir)``.
      out_path: the PNG to write (its folder is created).
      metric: evaluation key to draw.
      plateau: loss level of the input-independent classifier (``losses.constant_classifier_loss``).
      target: metric level to mark.
      title: figure title.

    Returns:
      ``out_path``.
    """
    train = [r for r in records if "cls_loss" in r]
    evals = [r for r in records if metric in r.get("eval", {})]
    with_lr = any(r.get("lr") is not None for r in train)
    fig = new_figure(12, 5.6 if with_lr else 4.2)
    if with_lr:
        axes = fig.subplots(2, 2, sharex="col", gridspec_kw={"height_ratios": (3, 1)})
        loss_axes, lr_axes = axes[0], axes[1]
    else:
        loss_axes, lr_axes = fig.subplots(1, 2), (None, None)
    x_axes = (("step", "training step"), ("seconds", "training seconds"))
    for ax, lr_ax, (x_key, x_label) in zip(loss_axes, lr_axes, x_axes):
        _draw_losses(ax, train, x_key, plateau)
        _draw_metric(ax, evals, x_key, metric, target)
        ax.set_xlabel("" if lr_ax else x_label)
        if lr_ax is not None:
            _draw_lr(lr_ax, train, x_key)
            lr_ax.set_xlabel(x_label)
    return save_figure(fig, out_path, title)


def _draw_losses(ax, train: List[Dict], x_key: str, plateau: float | None) -> None:
    for key, color, label in (("cls_loss", "C0", "cls loss"), ("box_loss", "C1", "box loss"),
                              ("loss", "C7", "total loss")):
        points = [(r[x_key], r[key]) for r in train if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), color=color, linewidth=1.3 if key != "loss" else 0.9, label=label)
    if plateau is not None:
        ax.axhline(plateau, color="C0", linestyle="--", linewidth=0.9, label=f"constant classifier ({plateau:.2f})")
    ax.set_ylabel("loss per positive")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)


def _draw_metric(ax, evals: List[Dict], x_key: str, metric: str, target: float | None) -> None:
    """The validation metric on a right axis of ``ax``, and one legend for both axes."""
    right = ax.twinx()
    if evals:
        right.plot([r[x_key] for r in evals], [r["eval"][metric] for r in evals], color="C2", marker="o",
                   linewidth=1.0, label=f"val {metric}")
    if target is not None:
        right.axhline(target, color="C2", linestyle=":", linewidth=0.9, label=f"{metric} {target:g}")
    right.set_ylim(0, 1)
    right.set_ylabel(f"validation {metric}")
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="center right")


def _draw_lr(ax, train: List[Dict], x_key: str) -> None:
    points = [(r[x_key], r["lr"]) for r in train if r.get("lr") is not None]
    if points:
        ax.plot(*zip(*points), color="C4", linewidth=1.2)
    if any(lr > 0 for _, lr in points):
        ax.set_yscale("log")
    ax.set_ylabel("learning rate", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)


def plot_pr_curves(curves: Dict[str, tuple], out_path: str, *, aps: Dict[str, float] | None = None,
                   title: str = "precision-recall") -> str:
    """Draws per-class precision-recall curves into one PNG: one small panel per class, in label order.

    Panels fill a grid of at most 10 columns (about square: 20 classes 4 x 5, 80 classes 9 x 9), smaller
    panels and fonts above 20 classes; each panel's title names the class and, when given, its AP (x100).
    A class with an empty curve says "no ground truth".

    Args:
      curves: {class name: (recall float [K], precision float [K])}, e.g. ``VocEvaluator.curves()``.
      out_path: the PNG to write (its folder is created).
      aps: {class name: AP in 0..1} for the panel titles (nan or missing: none shown).
      title: figure title.

    Returns:
      ``out_path``.
    """
    names = list(curves)
    cols = max(1, min(10, math.ceil(math.sqrt(len(names)))))
    rows = max(1, math.ceil(len(names) / cols))
    panel, font = (2.4, 9) if len(names) <= 20 else (1.5, 6)
    fig = new_figure(cols * panel, rows * panel + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        recall, precision = (np.asarray(v, np.float64) for v in curves[name])
        ap = (aps or {}).get(name)
        if recall.size:
            ax.plot(np.concatenate([[0.0], recall]), np.concatenate([precision[:1], precision]), color="C0",
                    linewidth=1.0)
        else:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", fontsize=font, color="0.5")
        label = name if ap is None or math.isnan(ap) else f"{name}  AP {100 * ap:.1f}"
        ax.set_title(label, fontsize=font)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=font - 1)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for ax in axes[(rows - 1) * cols:]:
        ax.set_xlabel("recall", fontsize=font)
    for ax in axes[::cols]:
        ax.set_ylabel("precision", fontsize=font)
    return save_figure(fig, out_path, title)


def plot_confusion_matrix(matrix, class_names: Sequence[str], out_path: str, *, normalize: bool = False,
                          title: str = "confusion matrix") -> str:
    """Draws a detection confusion matrix ``matrix[predicted, true]`` (``evaluation.confusion``) as a PNG.

    Rows are predicted classes, columns true classes, each with a last "background" entry (row: missed
    ground truth; column: false positive detections). Cells show their counts (or fractions when
    ``normalize``) up to 30 classes; with more only the colors.

    Args:
      matrix: int [C + 1, C + 1].
      class_names: C names in label order.
      out_path: the PNG to write (its folder is created).
      normalize: divide each column by its sum: the fraction of each true class (or of the false
        positives) given each predicted class.
      title: figure title.

    Returns:
      ``out_path``.

    Raises:
      ValueError: the matrix is not [C + 1, C + 1].
    """
    matrix = np.asarray(matrix, np.float64)
    labels = list(class_names) + ["background"]
    if matrix.shape != (len(labels), len(labels)):
        raise ValueError(f"matrix {matrix.shape} does not fit {len(class_names)} classes + background")
    values = matrix / np.maximum(matrix.sum(0, keepdims=True), 1) if normalize else matrix
    n = len(labels)
    side = min(max(4.0, 0.45 * n + 2.0), 24.0)
    font = 8 if n <= 21 else (6 if n <= 31 else 4)
    fig = new_figure(side + 1.0, side)
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(values.max(), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if n <= 31:
        threshold = (1 if normalize else max(values.max(), 1)) / 2
        for (i, j), value in np.ndenumerate(values):
            if matrix[i, j]:
                text = f"{value:.2f}" if normalize else f"{int(value)}"
                ax.text(j, i, text, ha="center", va="center", fontsize=font - 1,
                        color="white" if value > threshold else "black")
    ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("true class")
    ax.set_ylabel("predicted class")
    return save_figure(fig, out_path, title)


def new_figure(width: float, height: float):
    """A matplotlib Figure (inches, 100 dpi) on the Agg canvas: no pyplot state, no global backend switch."""
    from matplotlib import figure as figure_lib
    from matplotlib.backends import backend_agg

    fig = figure_lib.Figure(figsize=(width, height), dpi=100)
    backend_agg.FigureCanvasAgg(fig)
    return fig


def save_figure(fig, out_path: str, title: str = "") -> str:
    """Titles (when given), lays out and writes ``fig`` to ``out_path`` (its folder is created); returns the path."""
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path)
    return out_path
