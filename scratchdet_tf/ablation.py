"""Grids of training runs (paper Tables 1 and 2): train and evaluate every cell over seeds, then tabulate.

A grid is a list of ``Cell``s, each one flagfile in ``configs/ablations/`` plus the paper's number
for it (docs/PAPER.md#results). ``run_grid`` trains every cell with ``train_lib.train`` once per seed
(``--train.seed=k``, k = 0 .. seeds-1; the ``key`` cells, on which the paper's claims rest, get
``key_seeds``), each run in its own folder ``<out_dir>/<cell name>/seed<k>``. It evaluates the finished
runs with ``runner.evaluate`` (a diverged run has no detector worth scoring): VOC07 mAP on the validation
source, optionally on the training images (``train_eval_source``) and, with ``size_metrics``, the COCO
stats AP / AP_S / AP_M / AP_L on the validation source. ``aggregate`` reduces each cell's runs to mean,
sample standard deviation and range over its finished runs, keeping the diverged runs and their steps;
``run_grid`` writes ``<out_dir>/<grid>.md`` (one row per cell) and ``<grid>.json`` (every run and every
cell). Runs are independent: a folder that already holds the run's ``train_result.json`` (and, for a
finished run, its evaluations' ``metrics.json``) at the requested step is reused, so an interrupted grid
resumes where it stopped.
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
SEED_DIR = "seed{}"  # a run's folder inside its cell's: <out_dir>/<cell>/seed<k>
COCO_EVAL_DIR = "eval_coco"  # a finished run's COCO evaluation (size_metrics), beside eval/ (VOC)
SIZE_METRICS = ("AP", "APs", "APm", "APl")  # coco_metric.COCO_STAT_NAMES: overall, small, medium, large
# The numbers aggregated over a cell's finished runs, in the JSON's order.
AGGREGATED = ("loss", "mAP_07", "train_mAP_07", "train_seconds") + SIZE_METRICS


@dataclasses.dataclass(frozen=True)
class Cell:
    """One grid entry: a flagfile, a human label, the paper's VOC07 mAP (None: NAN in the paper) and whether
    one of the paper's claims rests on it (``key``: such a cell runs ``max(seeds, key_seeds)`` seeds)."""

    name: str  # flagfile stem, also the cell's folder name
    label: str
    paper_map: float | None
    key: bool = False


def _table1() -> List[Cell]:
    # docs/PAPER.md#results Table 1, "scratch" rows: mAP at lr 0.001, 0.01, 0.05; None = NAN (diverged).
    paper = {"none": (67.6, None, None), "head": (71.0, 75.6, None),
             "backbone": (72.8, 77.8, 78.0), "both": (71.8, 77.3, 78.7)}
    where = {"none": "no BN", "head": "BN head only", "backbone": "BN backbone only", "both": "BN backbone + head"}
    # Key cells, the ones the paper's Table 1 claims rest on: without BN training diverges at a large lr
    # (none lr 0.01 is NAN while none lr 0.001 trains), BN lets training take lr 0.05 (both, backbone),
    # and BN in the backbone matters more than in the head (head lr 0.05 is NAN, backbone lr 0.05 is 78.0).
    key = {"table1_none_lr0.001", "table1_none_lr0.01", "table1_head_lr0.05", "table1_backbone_lr0.05",
           "table1_both_lr0.05"}
    return [Cell(name, f"{where[bn]}, lr {lr}", paper[bn][i], name in key)
            for bn in paper for i, lr in enumerate(("0.001", "0.01", "0.05"))
            for name in (f"table1_{bn}_lr{lr}",)]


def _table2() -> List[Cell]:
    # docs/PAPER.md#results Table 2 (first-conv stride, root block) and Fig. 3 (b) ResNet-18-A.
    rows = (("s2_7x7", 73.1), ("s2_3x3", 73.2), ("s2_3x3x2", 74.9), ("s2_3x3x3", 75.4), ("s1_7x7", 77.6),
            ("s1_3x3", 77.8), ("s1_3x3x2", 78.1), ("s1_3x3x3", 78.5), ("s1_3x3x4", 78.4), ("s1_3x3x5", 78.5))
    # Key cells, the ones the paper's Table 2 claims rest on: stride 1 beats stride 2 in the first conv
    # (s1 vs s2 at the same root), and the 3x3x3 root block beats the 7x7 conv (at either stride).
    key = {"s2_7x7", "s1_7x7", "s2_3x3x3", "s1_3x3x3"}
    cells = [Cell(f"table2_{row}", f"first conv stride {row[1]}, root {row[3:]}", paper, row in key)
             for row, paper in rows]
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
    # Training stores the classes it took from the data; a cell that leaves them to the data matches them.
    classes = dict(model__num_classes=cfg.model.num_classes or old.model.num_classes,
                   data__class_names=cfg.data.class_names or old.data.class_names)
    if config.replace(old, train__max_steps=cfg.train.max_steps, eval=cfg.eval) != config.replace(cfg, **classes):
        raise ValueError(f"{model_dir}/config.json is a different run than this grid cell; delete {model_dir} "
                         "or choose another --out_dir")


def _evaluation(cfg: config.Config, model_dir: str, folder: str, source: str, step: int, restore) -> tuple:
    """(metrics, reused) of a finished run on ``source`` in ``<model_dir>/<folder>``: its ``metrics.json`` if
    that holds this step and source, else a fresh ``runner.evaluate`` (the model from ``restore()``)."""
    metrics_path = os.path.join(model_dir, folder, runner.METRICS_FILE)
    metrics = _read_json(metrics_path)
    if metrics is not None and metrics.get("step") == step and metrics.get("source") == source:
        return metrics, True
    restored = restore()
    metrics = runner.evaluate(cfg, restored.model, restored.anchors, source=source,
                              output_dir=os.path.dirname(metrics_path), step=restored.step)
    metrics["source"] = source
    report.write_metrics_json(metrics_path, metrics)
    return metrics, False


def _size_metric(metrics: Dict, name: str) -> float | None:
    # COCOeval reports -1 for a size range without ground-truth boxes: no number, not a score.
    value = metrics.get(name)
    return None if value is None or value < 0 else value


def run_cell(cell: Cell, cfg: config.Config, model_dir: str, train_eval_source: str = "",
             size_metrics: bool = False) -> Dict:
    """Trains (or resumes, or reuses) one run of a cell and evaluates it unless it diverged.

    Args:
      cell: the grid entry.
      cfg: the run's config (its ``train.seed`` is the run's seed).
      model_dir: the run's folder.
      train_eval_source: also evaluate on this source (the training images, to measure how well the
        optimizer fits them), into ``<model_dir>/eval_train``; "" to skip.
      size_metrics: also evaluate on ``cfg.data.val_source`` with the COCO metric (``eval.metric=coco``:
        against the source's instances JSON for ``shapes:`` and ``coco:`` sources) into
        ``<model_dir>/eval_coco``, for AP by object size.

    Returns:
      ``{"name", "label", "paper_map", "key", "seed", "model_dir", "status", "step", "loss", "mAP_07",
      "train_mAP_07", "train_seconds", "reused"}``, plus with ``size_metrics`` ``"AP", "APs", "APm", "APl"``;
      the mAPs and APs are fractions, None for a diverged run (or no ``train_eval_source``, or no
      ground-truth box of that size).
    """
    _check_same_run(cfg, model_dir)
    result = run_dir.read_train_result(model_dir)
    done = result is not None and (result["status"] == "diverged" or result["step"] >= cfg.train.max_steps)
    reused = done
    if not done:
        logging.info("cell %s seed %d: training to step %d in %s", cell.name, cfg.train.seed, cfg.train.max_steps,
                     model_dir)
        keras.backend.clear_session()
        result = train_lib.train(cfg, model_dir)
    if run_dir.has_config(model_dir):  # what training computed: the classes taken from the data filled in
        cfg = config.replace(cfg, model=run_dir.load_config(model_dir).model,
                             data=run_dir.load_config(model_dir).data)
    restored = []

    def restore():  # the trained model, read back once for all its evaluations
        if not restored:
            keras.backend.clear_session()
            restored.append(run_dir.restore_model(model_dir, cfg=cfg))
        return restored[0]

    evaluations = [("mAP_07", cfg, cfg.data.val_source, "eval"), ("train_mAP_07", cfg, train_eval_source, "eval_train")]
    if size_metrics:
        evaluations.append(("coco", config.replace(cfg, eval__metric="coco"), cfg.data.val_source, COCO_EVAL_DIR))
    values = {key: None for key in ("mAP_07", "train_mAP_07") + (SIZE_METRICS if size_metrics else ())}
    for key, eval_cfg, source, folder in evaluations:
        if result["status"] != "finished" or not source:
            continue
        metrics, was_reused = _evaluation(eval_cfg, model_dir, folder, source, result["step"], restore)
        reused = reused and was_reused
        if key == "coco":
            values.update({name: _size_metric(metrics, name) for name in SIZE_METRICS})
        else:
            values[key] = metrics["mAP_07"]
    return {"name": cell.name, "label": cell.label, "paper_map": cell.paper_map, "key": cell.key,
            "seed": cfg.train.seed, "model_dir": model_dir, "status": result["status"], "step": result["step"],
            "loss": result["loss"], **values, "train_seconds": result.get("train_seconds"), "reused": reused}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summarize(values: Sequence) -> Dict | None:
    """``{"n", "mean", "sd", "min", "max"}`` of the finite numbers among ``values`` (None entries are skipped);
    ``sd`` is the sample standard deviation (n - 1), None for a single value. None when there is no number."""
    numbers = [float(v) for v in values if _finite(v)]
    if not numbers:
        return None
    n = len(numbers)
    mean = sum(numbers) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in numbers) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "sd": sd, "min": min(numbers), "max": max(numbers)}


def _status(runs: Sequence[Dict]) -> str:
    """``finished 3/3``, ``diverged 2/2 at steps 12, 15`` or ``diverged 1/3 (step 40); 2 finished``."""
    n = len(runs)
    diverged = [r["step"] for r in runs if r["status"] == "diverged"]
    counts: Dict[str, int] = {}
    for r in runs:
        if r["status"] != "diverged":
            counts[r["status"]] = counts.get(r["status"], 0) + 1
    steps = ", ".join(map(str, diverged))
    plural = "s" if len(diverged) > 1 else ""
    others = "; ".join(f"{k} {status}" for status, k in counts.items())
    if len(diverged) == n:
        return f"diverged {n}/{n} at step{plural} {steps}"
    if diverged:
        return f"diverged {len(diverged)}/{n} (step{plural} {steps}); {others}"
    if counts.get("finished") == n:
        return f"finished {n}/{n}"
    finished = counts.pop("finished", 0)
    others = "; ".join(f"{k} {status}" for status, k in counts.items())
    return f"finished {finished}/{n}; {others}"


def aggregate_cell(runs: Sequence[Dict]) -> Dict:
    """One cell's runs (``run_cell`` results, one per seed) reduced to one row.

    Returns:
      ``{"name", "label", "paper_map", "key", "seeds": [k, ...], "runs": n, "finished": count,
      "diverged": [{"seed", "step"}, ...], "status": text (see ``markdown_table``), "stats": {name: summarize(...)
      or None}, "reused"}``; ``stats`` holds ``AGGREGATED`` names (loss, mAP_07, train_mAP_07, train_seconds and,
      if the runs carry them, AP, APs, APm, APl), each over the finished runs only.
    """
    first = runs[0]
    finished = [r for r in runs if r["status"] == "finished"]
    stats = {name: summarize([r.get(name) for r in finished]) for name in AGGREGATED
             if name not in SIZE_METRICS or any(name in r for r in runs)}
    return {"name": first["name"], "label": first["label"], "paper_map": first["paper_map"],
            "key": first.get("key", False), "seeds": [r.get("seed") for r in runs], "runs": len(runs),
            "finished": len(finished),
            "diverged": [{"seed": r.get("seed"), "step": r["step"]} for r in runs if r["status"] == "diverged"],
            "status": _status(runs), "stats": stats, "reused": all(r.get("reused", False) for r in runs)}


def aggregate(runs: Sequence[Dict]) -> List[Dict]:
    """``aggregate_cell`` of each cell's runs, cells in the order of their first run."""
    cells: Dict[str, List[Dict]] = {}
    for r in runs:
        cells.setdefault(r["name"], []).append(r)
    return [aggregate_cell(group) for group in cells.values()]


def _fmt_number(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def _fmt_percent(stats: Dict | None, spread: bool = True) -> str:
    """``72.3 ± 1.2 [71.0–73.5]`` (percent); ``72.3 ± –`` for one run; ``–`` for none."""
    if stats is None:
        return "–"
    mean = f"{100.0 * stats['mean']:.1f}"
    if not spread:
        return mean
    if stats["n"] < 2:
        return f"{mean} ± –"
    return f"{mean} ± {100.0 * stats['sd']:.1f} [{100.0 * stats['min']:.1f}–{100.0 * stats['max']:.1f}]"


def markdown_table(rows: Sequence[Dict], title: str = "") -> str:
    """One Markdown row per cell: config, setting, seeds, final loss (mean), held-out mAP_07 (%) as
    ``mean ± sd [min–max]`` over the finished runs, the train-set mAP_07 likewise and the COCO AP_S / AP_M /
    AP_L means when the rows have them, status, paper mAP.

    Args:
      rows: ``aggregate`` rows (``run_cell`` results are aggregated first).
      title: bold line above the table.
    """
    if rows and "stats" not in rows[0]:
        rows = aggregate(rows)
    with_train = any(row["stats"].get("train_mAP_07") is not None for row in rows)
    with_sizes = any(name in row["stats"] for row in rows for name in SIZE_METRICS)
    header = ["config", "setting", "seeds", "final loss", "mAP_07 (%)"]
    header += ["train-set mAP_07 (%)"] if with_train else []
    header += ["AP_S (%)", "AP_M (%)", "AP_L (%)"] if with_sizes else []
    header += ["status", "paper mAP (%)"]
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        stats = row["stats"]
        loss = stats.get("loss")
        cells = [f"`{row['name']}`", row["label"], f"{row['runs']}" + (" (key)" if row.get("key") else ""),
                 _fmt_number(None if loss is None else loss["mean"], ".3g"), _fmt_percent(stats.get("mAP_07"))]
        cells += [_fmt_percent(stats.get("train_mAP_07"))] if with_train else []
        cells += [_fmt_percent(stats.get(name), spread=False) for name in ("APs", "APm", "APl")] if with_sizes else []
        cells += [row["status"], "NAN (diverged)" if row["paper_map"] is None else f"{row['paper_map']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
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


def cell_seeds(cell: Cell, seeds: int, key_seeds: int = 0) -> range:
    """The seeds a cell runs: 0 .. seeds-1, or 0 .. max(seeds, key_seeds)-1 for a key cell."""
    return range(max(seeds, key_seeds) if cell.key else seeds)


def run_grid(grid: str, out_dir: str, *, steps: int, overrides: Sequence[str] = (),
             config_dir: str = ABLATION_DIR, only: Sequence[str] = (), train_eval_source: str = "",
             seeds: int = 1, key_seeds: int = 0, size_metrics: bool = False) -> Dict:
    """Trains and evaluates every cell of a grid over seeds; writes ``<out_dir>/<grid>.md`` and ``<grid>.json``.

    Args:
      grid: "table1" or "table2".
      out_dir: each run trains in ``<out_dir>/<cell name>/seed<k>``.
      steps: ``--train.max_steps`` of every run.
      overrides: ``--section.name=value`` flags applied to every cell after its flagfile (data source,
        width, image size, ...). ``--train.max_steps`` is set from ``steps`` after them, and the flagfile's
        lr schedule is shrunk to ``steps`` (``scaled_boundaries``) unless ``--train.lr_boundaries`` is given.
      config_dir: folder of the cells' flagfiles.
      only: run just these cell names (default all).
      train_eval_source: also evaluate every finished run on this source (its training images, e.g.
        ``shapes:<dir>:train``): how well the optimizer fit them. "" skips it.
      seeds: runs per cell, with ``--train.seed`` 0 .. seeds-1.
      key_seeds: runs per key cell (``Cell.key``) if more than ``seeds``.
      size_metrics: also score every finished run with the COCO metric on the validation source (AP,
        AP_S, AP_M, AP_L columns).

    Returns:
      ``{"grid", "steps", "seeds", "key_seeds", "size_metrics", "overrides", "lr_boundaries",
      "train_eval_source", "runs": [run_cell results], "rows": [aggregate rows, one per cell], "seconds",
      "minutes" (the grid's wall time), "train_minutes" (the runs' training time summed, reused runs
      included), "hardware", "markdown", "json"}``.

    Raises:
      ValueError: an unknown grid or cell name, seeds < 1, a reused folder holding a different run, or a
        cell folder holding a run of its own (the layout before seed folders).
    """
    if seeds < 1 or key_seeds < 0:
        raise ValueError(f"seeds={seeds}, key_seeds={key_seeds} is invalid: need seeds >= 1 and key_seeds >= 0")
    cells = grid_cells(grid)
    unknown = set(only) - {c.name for c in cells}
    if unknown:
        raise ValueError(f"cells {sorted(unknown)} are not in grid {grid}: {[c.name for c in cells]}")
    cells = [c for c in cells if not only or c.name in only]
    keep_schedule = any(o.startswith("--train.lr_boundaries") for o in overrides)
    plan = []  # (cell, config, model_dir) of every run
    for cell in cells:  # every flagfile parses before the first cell trains: a typo fails fast
        path = os.path.join(config_dir, cell.name + ".cfg")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found (grid {grid}, cell {cell.name})")
        cell_dir = os.path.join(out_dir, cell.name)
        if run_dir.has_config(cell_dir) or run_dir.read_train_result(cell_dir) is not None:
            raise ValueError(f"{cell_dir} holds a run of its own (the layout before seed folders): move its "
                             f"files into {os.path.join(cell_dir, SEED_DIR.format(0))} to reuse it as seed 0")
        cfg = cell_config(path, overrides)
        boundaries = cfg.train.lr_boundaries if keep_schedule else scaled_boundaries(
            cfg.train.lr_boundaries, cfg.train.max_steps, steps)
        cfg = config.replace(cfg, train__max_steps=steps, train__lr_boundaries=boundaries)
        plan += [(cell, config.replace(cfg, train__seed=k), os.path.join(cell_dir, SEED_DIR.format(k)))
                 for k in cell_seeds(cell, seeds, key_seeds)]
    os.makedirs(out_dir, exist_ok=True)
    start = time.time()
    runs = [run_cell(cell, cfg, model_dir, train_eval_source, size_metrics) for cell, cfg, model_dir in plan]
    rows = aggregate(runs)
    seconds = time.time() - start
    train_minutes = sum(r["train_seconds"] or 0.0 for r in runs) / 60.0
    schedules = sorted({cfg.train.lr_boundaries for _, cfg, _ in plan})
    summary = {"grid": grid, "steps": steps, "seeds": seeds, "key_seeds": key_seeds, "size_metrics": size_metrics,
               "overrides": list(overrides), "lr_boundaries": [list(b) for b in schedules],
               "train_eval_source": train_eval_source, "runs": runs, "rows": rows, "seconds": round(seconds, 1),
               "minutes": round(seconds / 60.0, 2), "train_minutes": round(train_minutes, 2),
               "hardware": hardware(), "markdown": os.path.join(out_dir, f"{grid}.md"),
               "json": os.path.join(out_dir, f"{grid}.json")}
    most = max([len(cell_seeds(cell, seeds, key_seeds)) for cell in cells], default=seeds)
    kinds = {cfg.train.lr_schedule for _, cfg, _ in plan}
    schedule = ("cosine lr" if kinds == {"cosine"} else
                f"lr x0.1 at steps {' / '.join(','.join(map(str, b)) for b in schedules)}")
    title = (f"{grid}: {steps} steps, {schedule}, "
             f"{' '.join(overrides)}; seeds 0..{seeds - 1} per cell"
             + (f", 0..{most - 1} on key cells" if most > seeds else ""))
    if train_eval_source:
        title += f"; train-set mAP on {train_eval_source}"
    if size_metrics:
        title += "; AP_S/AP_M/AP_L: COCO AP by object size on the validation source, mean over finished runs"
    reused = sum(bool(r["reused"]) for r in runs)
    title += (f"; cost {summary['minutes']:.1f} wall minutes, {summary['train_minutes']:.1f} train minutes "
              f"summed over {len(runs)} runs" + (f" ({reused} reused from earlier)" if reused else "")
              + f", on {hardware()}")
    with open(summary["markdown"], "w") as f:
        f.write(markdown_table(rows, title))
    with open(summary["json"], "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    return summary
