"""Grids of training runs (paper Tables 1 and 2): train and evaluate every cell, then tabulate.

A grid is a list of ``Cell``s, each one flagfile in ``configs/ablations/`` plus the paper's number
for it (docs/PAPER.md#results). ``run_grid`` trains every cell with ``train_lib.train`` in its own folder
``<out_dir>/<cell name>``, evaluates the finished ones with ``runner.evaluate`` (a diverged cell
has no detector worth scoring) and writes ``<out_dir>/<grid>.md`` and ``<grid>.json``. Cells are
independent: a folder that already holds the run's ``train_result.json`` (and, for a finished run,
``eval/metrics.json``) at the requested step is reused, so an interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from typing import Dict, List, Sequence

import keras
from absl import logging

from scratchdet_tf import config, run_dir
from scratchdet_tf.config import flagfile
from scratchdet_tf.evaluation import report, runner
from scratchdet_tf.training import train_lib

ABLATION_DIR = os.path.join("configs", "ablations")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One grid entry: a flagfile, a human label and the paper's VOC07 mAP (None: NAN in the paper)."""

    name: str  # flagfile stem, also the cell's folder name
    label: str
    paper_map: float | None


def _table1() -> List[Cell]:
    # docs/PAPER.md#results Table 1, "scratch" rows: mAP at lr 0.001, 0.01, 0.05; None = NAN (diverged).
    paper = {"none": (67.6, None, None), "head": (71.0, 75.6, None),
             "backbone": (72.8, 77.8, 78.0), "both": (71.8, 77.3, 78.7)}
    where = {"none": "no BN", "head": "BN head only", "backbone": "BN backbone only", "both": "BN backbone + head"}
    return [Cell(f"table1_{bn}_lr{lr}", f"{where[bn]}, lr {lr}", paper[bn][i])
            for bn in paper for i, lr in enumerate(("0.001", "0.01", "0.05"))]


def _table2() -> List[Cell]:
    # docs/PAPER.md#results Table 2 (first-conv stride, root block) and Fig. 3 (b) ResNet-18-A.
    rows = (("s2_7x7", 73.1), ("s2_3x3", 73.2), ("s2_3x3x2", 74.9), ("s2_3x3x3", 75.4), ("s1_7x7", 77.6),
            ("s1_3x3", 77.8), ("s1_3x3x2", 78.1), ("s1_3x3x3", 78.5), ("s1_3x3x4", 78.4), ("s1_3x3x5", 78.5))
    cells = [Cell(f"table2_{key}", f"first conv stride {key[1]}, root {key[3:]}", paper) for key, paper in rows]
    return cells + [Cell("fig3_resnet18a", "ResNet-18-A (7x7 stride 2, no max-pool)", 75.3)]


def grid_cells(grid: str) -> List[Cell]:
    """The cells of ``"table1"`` (BN placement x lr, 12 cells) or ``"table2"`` (ResNet-18 roots, 11 cells).

    Raises:
      ValueError: an unknown grid name.
    """
    grids = {"table1": _table1, "table2": _table2}
    if grid not in grids:
        raise ValueError(f"--grid={grid} is invalid: allowed values are {', '.join(grids)}")
    return grids[grid]()


def cell_config(path: str, overrides: Sequence[str] = ()) -> config.Config:
    """The config of a flagfile with ``--section.name=value`` overrides after it (the last one wins).

    Raises:
      flagfile.FlagfileError: a missing flagfile or an unknown flag, naming it.
      config.ConfigError: an invalid value, naming the flag.
    """
    return flagfile.parse([f"--flagfile={path}", *overrides])


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _check_same_run(cfg: config.Config, model_dir: str) -> None:
    """A reused folder must hold this very run (only the step budget and evaluation settings may differ)."""
    if not run_dir.has_config(model_dir):
        return
    old = run_dir.load_config(model_dir)
    if config.replace(old, train__max_steps=cfg.train.max_steps, eval=cfg.eval) != cfg:
        raise ValueError(f"{model_dir}/config.json is a different run than this grid cell; delete {model_dir} "
                         "or choose another --out_dir")


def run_cell(cell: Cell, cfg: config.Config, model_dir: str, train_eval_source: str = "") -> Dict:
    """Trains (or resumes, or reuses) one cell and evaluates it unless it diverged.

    Args:
      cell: the grid entry.
      cfg: its config.
      model_dir: its folder.
      train_eval_source: also evaluate on this source (the training images, to measure how well the
        optimizer fits them), into ``<model_dir>/eval_train``; "" to skip.

    Returns:
      ``{"name", "label", "paper_map", "status", "step", "loss", "mAP_07", "train_mAP_07", "train_seconds",
      "reused"}``; the mAPs are fractions, None for a diverged cell (or no ``train_eval_source``).
    """
    _check_same_run(cfg, model_dir)
    result = run_dir.read_train_result(model_dir)
    done = result is not None and (result["status"] == "diverged" or result["step"] >= cfg.train.max_steps)
    reused = done
    if not done:
        logging.info("cell %s: training to step %d in %s", cell.name, cfg.train.max_steps, model_dir)
        keras.backend.clear_session()
        result = train_lib.train(cfg, model_dir)
    maps = {}
    for key, source, folder in (("mAP_07", cfg.data.val_source, "eval"),
                                ("train_mAP_07", train_eval_source, "eval_train")):
        maps[key] = None
        if result["status"] != "finished" or not source:
            continue
        metrics_path = os.path.join(model_dir, folder, runner.METRICS_FILE)
        metrics = _read_json(metrics_path)
        if metrics is None or metrics.get("step") != result["step"] or metrics.get("source") != source:
            keras.backend.clear_session()
            restored = run_dir.restore_model(model_dir, cfg=cfg)
            metrics = runner.evaluate(cfg, restored.model, restored.anchors, source=source,
                                        output_dir=os.path.dirname(metrics_path), step=restored.step)
            metrics["source"] = source
            report.write_metrics_json(metrics_path, metrics)
            reused = False
        maps[key] = metrics["mAP_07"]
    return {"name": cell.name, "label": cell.label, "paper_map": cell.paper_map, "status": result["status"],
            "step": result["step"], "loss": result["loss"], **maps, "train_seconds": result.get("train_seconds"),
            "reused": reused}


def _fmt_number(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def markdown_table(rows: Sequence[Dict], title: str = "") -> str:
    """The rows of ``run_grid`` as a Markdown table: config, setting, loss, mAP(s), status, paper."""
    with_train = any(row.get("train_mAP_07") is not None for row in rows)
    lines = [f"**{title}**", ""] if title else []
    lines += ["| config | setting | final loss | mAP_07 (%) |" + (" train-set mAP_07 (%) |" if with_train else "")
              + " status | paper mAP (%) |",
              "|---|---|---|---|" + ("---|" if with_train else "") + "---|---|"]
    for row in rows:
        status = (f"diverged at step {row['step']}" if row["status"] == "diverged"
                  else f"{row['status']} ({row['step']} steps)")
        maps = [row["mAP_07"]] + ([row.get("train_mAP_07")] if with_train else [])
        maps = " | ".join(_fmt_number(None if m is None else 100.0 * m, ".1f") for m in maps)
        paper = "NAN (diverged)" if row["paper_map"] is None else f"{row['paper_map']:.1f}"
        lines.append(f"| `{row['name']}` | {row['label']} | {_fmt_number(row['loss'], '.3g')} | {maps} | "
                     f"{status} | {paper} |")
    return "\n".join(lines) + "\n"


def hardware() -> str:
    """One line naming this machine's CPU and core count, for the record."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPU(s), {platform.system()}"


def scaled_boundaries(boundaries: Sequence[int], max_steps: int, steps: int) -> tuple:
    """The paper's multi-step schedule shrunk to a short run: each boundary at the same fraction of training.

    VOC's 45k/75k/95k of 100k become 180/300/380 of 400 steps. Boundaries that round to 0 or coincide
    are dropped.
    """
    scaled = (int(round(b * steps / max_steps)) for b in boundaries)
    return tuple(sorted({b for b in scaled if b > 0}))


def run_grid(grid: str, out_dir: str, *, steps: int, overrides: Sequence[str] = (),
             config_dir: str = ABLATION_DIR, only: Sequence[str] = (), train_eval_source: str = "") -> Dict:
    """Trains and evaluates every cell of a grid; writes ``<out_dir>/<grid>.md`` and ``<grid>.json``.

    Args:
      grid: "table1" or "table2".
      out_dir: each cell trains in ``<out_dir>/<cell name>``.
      steps: ``--train.max_steps`` of every cell.
      overrides: ``--section.name=value`` flags applied to every cell after its flagfile (data source,
        width, image size, ...). ``--train.max_steps`` is set from ``steps`` after them, and the flagfile's
        lr schedule is shrunk to ``steps`` (``scaled_boundaries``) unless ``--train.lr_boundaries`` is given.
      config_dir: folder of the cells' flagfiles.
      only: run just these cell names (default all).
      train_eval_source: also evaluate every finished cell on this source (its training images, e.g.
        ``shapes:<dir>:train``): how well the optimizer fit them. "" skips it.

    Returns:
      ``{"grid", "steps", "overrides", "lr_boundaries", "train_eval_source", "rows": [run_cell results],
      "seconds", "hardware", "markdown", "json"}``.

    Raises:
      ValueError: an unknown grid or cell name, or a reused folder holding a different run.
    """
    cells = grid_cells(grid)
    unknown = set(only) - {c.name for c in cells}
    if unknown:
        raise ValueError(f"cells {sorted(unknown)} are not in grid {grid}: {[c.name for c in cells]}")
    cells = [c for c in cells if not only or c.name in only]
    keep_schedule = any(o.startswith("--train.lr_boundaries") for o in overrides)
    configs = []
    for cell in cells:  # every flagfile parses before the first cell trains: a typo fails fast
        path = os.path.join(config_dir, cell.name + ".cfg")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found (grid {grid}, cell {cell.name})")
        cfg = cell_config(path, overrides)
        boundaries = cfg.train.lr_boundaries if keep_schedule else scaled_boundaries(
            cfg.train.lr_boundaries, cfg.train.max_steps, steps)
        configs.append(config.replace(cfg, train__max_steps=steps, train__lr_boundaries=boundaries))
    os.makedirs(out_dir, exist_ok=True)
    start = time.time()
    rows = [run_cell(cell, cfg, os.path.join(out_dir, cell.name), train_eval_source)
            for cell, cfg in zip(cells, configs)]
    schedules = sorted({cfg.train.lr_boundaries for cfg in configs})
    summary = {"grid": grid, "steps": steps, "overrides": list(overrides),
              "lr_boundaries": [list(b) for b in schedules], "train_eval_source": train_eval_source,
              "rows": rows, "seconds": round(time.time() - start, 1), "hardware": hardware(),
              "markdown": os.path.join(out_dir, f"{grid}.md"), "json": os.path.join(out_dir, f"{grid}.json")}
    title = (f"{grid}: {steps} steps, lr x0.1 at steps {' / '.join(','.join(map(str, b)) for b in schedules)}, "
             f"{' '.join(overrides)}")
    if train_eval_source:
        title += f"; train-set mAP on {train_eval_source}"
    with open(summary["markdown"], "w") as f:
        f.write(markdown_table(rows, title))
    with open(summary["json"], "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    return summary
