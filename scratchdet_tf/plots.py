"""Figures as PNG files: the training curves of one run (losses and validation mAP against steps and
seconds), and the Agg-canvas figure helpers the other plots share."""

from __future__ import annotations

import os
from typing import Dict, List


def plot_training_curves(records: List[Dict], out_path: str, *, metric: str = "mAP_07",
                         plateau: float | None = None, target: float | None = None, title: str = "") -> str:
    """Draws a run's ``training_log`` records into one PNG: two panels, against steps and seconds.

    Each panel shows the classification and box losses (left axis) and the validation
    ``metric`` of the evaluation records (right axis, dots), with optional dashed lines at the
    constant-classifier loss ``plateau`` and at a ``target`` metric.

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
    fig = new_figure(12, 4.2)
    for ax, x_key, x_label in zip(fig.subplots(1, 2), ("step", "seconds"), ("training step", "training seconds")):
        for key, color in (("cls_loss", "C0"), ("box_loss", "C1")):
            points = [(r[x_key], r[key]) for r in train if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), color=color, linewidth=1.3, label=key.replace("_", " "))
        if plateau is not None:
            ax.axhline(plateau, color="C0", linestyle="--", linewidth=0.9,
                       label=f"constant classifier ({plateau:.2f})")
        ax.set_xlabel(x_label)
        ax.set_ylabel("loss per positive")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
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
