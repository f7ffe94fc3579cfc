"""The ablation grid runner: trains and evaluates cells over seeds, aggregates and tabulates them, reuses
finished runs."""

import json
import os

import numpy as np
import pytest
from conftest import ROOT, run_tool

from scratchdet_tf import ablation, run_dir
from scratchdet_tf.evaluation import runner
from scratchdet_tf.training import train_lib

CELLS = ("table1_none_lr0.001", "table1_both_lr0.05")


@pytest.fixture(scope="module")
def grid(shapes_dir, tmp_path_factory):
    """A 2-cell Table 1 grid, 1 seed, 2 steps each, on tiny models, with the COCO size metrics; the no-BN cell
    is forced to diverge."""
    root = tmp_path_factory.mktemp("ablation")
    data = shapes_dir
    config_dir = root / "configs"
    config_dir.mkdir()
    for name in CELLS:  # the real flagfiles, plus a huge lr on the no-BN cell so that it diverges
        paper_cfg = os.path.join(ROOT, ablation.ABLATION_DIR, name + ".cfg")
        lines = [f"--flagfile={paper_cfg}"] + (["--train.learning_rate=1e30"] if "none" in name else [])
        (config_dir / f"{name}.cfg").write_text("\n".join(lines) + "\n")
    overrides = [f"--data.train_source=shapes:{data}", f"--data.val_source=shapes:{data}", "--model.num_classes=0",
                 "--model.width=0.0625", "--model.image_size=64", "--anchors.steps=", "--train.batch_size=4",
                 "--train.max_bad_steps=1", "--eval.batch_size=4"]
    out_dir = str(root / "grid")
    report = ablation.run_grid("table1", out_dir, steps=2, overrides=overrides, config_dir=str(config_dir),
                               only=CELLS, train_eval_source=f"shapes:{data}:train", size_metrics=True)
    return {"report": report, "overrides": overrides, "config_dir": str(config_dir), "out_dir": out_dir,
            "train_eval_source": f"shapes:{data}:train"}


@pytest.mark.slow
def test_grid_table_has_a_row_per_cell_with_divergence_and_paper_numbers(grid):
    runs = {run["name"]: run for run in grid["report"]["runs"]}
    none, both = runs["table1_none_lr0.001"], runs["table1_both_lr0.05"]
    assert none["status"] == "diverged" and none["mAP_07"] is None and none["APs"] is None
    assert both["status"] == "finished" and both["step"] == 2 and both["seed"] == 0
    assert both["model_dir"] == os.path.join(grid["out_dir"], "table1_both_lr0.05", "seed0")
    assert 0.0 <= both["mAP_07"] <= 1.0 and both["train_mAP_07"] is not None
    assert 0.0 <= both["AP"] <= 1.0  # COCOeval against the shapes split's instances JSON
    with open(os.path.join(both["model_dir"], "eval_coco", "metrics.json")) as f:
        assert json.load(f)["AP"] == both["AP"]
    with open(grid["report"]["markdown"]) as f:
        table = f.read()
    none_row = next(line for line in table.splitlines() if "`table1_none_lr0.001`" in line)
    both_row = next(line for line in table.splitlines() if "`table1_both_lr0.05`" in line)
    assert f"diverged 1/1 at step {none['step']}" in none_row and "| 67.6 |" in none_row
    assert "finished 1/1" in both_row and "| 78.7 |" in both_row
    assert f"| {100 * both['mAP_07']:.1f} ± – |" in both_row  # one seed: no spread
    assert "AP_S (%) | AP_M (%) | AP_L (%)" in table and "wall minutes" in table
    with open(grid["report"]["json"]) as f:
        saved = json.load(f)
    assert [row["name"] for row in saved["rows"]] == list(CELLS)
    assert [run["name"] for run in saved["runs"]] == list(CELLS)


@pytest.mark.slow
def test_finished_cells_are_reused_without_training(grid, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(train_lib, "train", no_training)
    again = ablation.run_grid("table1", grid["out_dir"], steps=2, overrides=grid["overrides"],
                              config_dir=grid["config_dir"], only=CELLS, train_eval_source=grid["train_eval_source"])
    assert all(run["reused"] for run in again["runs"]) and all(row["reused"] for row in again["rows"])
    assert [run["mAP_07"] for run in again["runs"]] == [run["mAP_07"] for run in grid["report"]["runs"]]


@pytest.mark.slow
def test_a_folder_holding_another_run_is_an_error_naming_it(grid):
    with pytest.raises(ValueError, match="table1_both_lr0.05.*different run"):
        ablation.run_grid("table1", grid["out_dir"], steps=2, overrides=grid["overrides"] + ["--model.width=0.125"],
                          config_dir=grid["config_dir"], only=CELLS[1:])


def test_paper_cell_tables_match_spec_section_8():
    table1 = {cell.name: cell.paper_map for cell in ablation.grid_cells("table1")}
    assert len(table1) == 12 and table1["table1_both_lr0.05"] == 78.7 and table1["table1_head_lr0.05"] is None
    assert [name for name, value in table1.items() if value is None] == [
        "table1_none_lr0.01", "table1_none_lr0.05", "table1_head_lr0.05"]
    table2 = ablation.grid_cells("table2")
    assert len(table2) == 11 and table2[-1].paper_map == 75.3
    for cell in ablation.grid_cells("table1") + table2:
        assert os.path.isfile(os.path.join(ROOT, ablation.ABLATION_DIR, cell.name + ".cfg")), cell.name
    with pytest.raises(ValueError, match="--grid=table9"):
        ablation.grid_cells("table9")


@pytest.mark.slow
def test_paper_schedule_shrinks_to_the_same_fractions_of_a_short_run(grid):
    assert ablation.scaled_boundaries((45_000, 75_000, 95_000), 100_000, 400) == (180, 300, 380)
    assert ablation.scaled_boundaries((45_000, 75_000, 95_000), 100_000, 2) == (1, 2)
    assert grid["report"]["lr_boundaries"] == [[1, 2]]


@pytest.mark.slow
def test_tool_reuses_the_grid_and_ends_with_one_json_line(grid):
    run = run_tool("ablate", "--grid=table1", "--steps=2", f"--out_dir={grid['out_dir']}",
                   f"--cells={','.join(CELLS)}", f"--config_dir={grid['config_dir']}",
                   f"--train_eval_source={grid['train_eval_source']}", *grid["overrides"])
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["cells"] == 2 and result["runs"] == 2 and result["seeds"] == 1
    assert result["diverged"] == ["table1_none_lr0.001"] and result["minutes"] >= 0
    assert "diverged 1/1 at step" in run.stdout


# ------------------------------------------------------------------ seeds and aggregation, without training


def run_row(seed, status="finished", step=100, loss=None, map07=None, **extra):
    """A hand-made ``run_cell`` result of cell ``c``."""
    return {"name": "c", "label": "cell c", "paper_map": 70.0, "key": False, "seed": seed, "status": status,
            "step": step, "loss": loss, "mAP_07": map07, "train_mAP_07": None, "train_seconds": 60.0 * (seed + 1),
            "reused": False, **extra}


def test_aggregation_is_the_mean_sample_sd_and_range_of_the_finished_runs():
    maps, losses = [0.70, 0.74, 0.79], [1.5, 1.2, 1.35]
    runs = [run_row(k, loss=loss, map07=m, APs=m / 2) for k, (m, loss) in enumerate(zip(maps, losses))]
    runs.insert(1, run_row(3, status="diverged", step=40))
    row = ablation.aggregate_cell(runs)
    assert row["runs"] == 4 and row["finished"] == 3 and row["seeds"] == [0, 3, 1, 2]
    assert row["diverged"] == [{"seed": 3, "step": 40}]
    assert row["status"] == "diverged 1/4 (step 40); 3 finished"
    for name, values in (("mAP_07", maps), ("loss", losses), ("APs", np.array(maps) / 2),
                         ("train_seconds", [60.0, 120.0, 180.0])):  # the diverged run's are left out
        stats = row["stats"][name]
        assert stats["n"] == 3
        np.testing.assert_allclose([stats["mean"], stats["sd"], stats["min"], stats["max"]],
                                   [np.mean(values), np.std(values, ddof=1), np.min(values), np.max(values)])
    assert row["stats"]["train_mAP_07"] is None and "APl" not in row["stats"]  # only the numbers the runs have
    line = next(x for x in ablation.markdown_table([row]).splitlines() if "`c`" in x)
    m = 100 * np.array(maps)
    assert f"| {m.mean():.1f} ± {m.std(ddof=1):.1f} [{m.min():.1f}–{m.max():.1f}] |" in line
    assert f"| {np.mean(losses):.3g} |" in line and "| 4 |" in line and "| 70.0 |" in line


def test_all_diverged_one_seed_and_other_statuses_read_plainly():
    diverged = ablation.aggregate_cell([run_row(0, "diverged", 12), run_row(1, "diverged", 15)])
    assert diverged["status"] == "diverged 2/2 at steps 12, 15" and diverged["finished"] == 0
    assert diverged["stats"]["mAP_07"] is None and diverged["stats"]["loss"] is None
    single = ablation.aggregate_cell([run_row(0, loss=2.0, map07=0.5)])
    assert single["status"] == "finished 1/1"
    assert single["stats"]["mAP_07"] == {"n": 1, "mean": 0.5, "sd": None, "min": 0.5, "max": 0.5}
    table = ablation.markdown_table([diverged, single])
    assert "| – | – | diverged 2/2 at steps 12, 15 |" in table and "| 2 | 50.0 ± – | finished 1/1 |" in table
    mixed = ablation.aggregate_cell([run_row(0, map07=0.5, loss=1.0), run_row(1, "interrupted", 7)])
    assert mixed["status"] == "finished 1/2; 1 interrupted"


def test_key_cells_are_the_ones_the_papers_claims_rest_on():
    key = {cell.name for cell in ablation.grid_cells("table1") + ablation.grid_cells("table2") if cell.key}
    assert key == {"table1_none_lr0.001", "table1_none_lr0.01", "table1_head_lr0.05", "table1_backbone_lr0.05",
                   "table1_both_lr0.05", "table2_s2_7x7", "table2_s1_7x7", "table2_s2_3x3x3", "table2_s1_3x3x3"}


@pytest.fixture
def fake_training(monkeypatch):
    """train_lib.train, run_dir.restore_model and runner.evaluate replaced by stand-ins that record their calls:
    the no-BN lr 0.001 cell diverges at seed 1 (step 3 + seed), everything else finishes with known numbers."""
    calls = {"train": [], "evaluate": []}

    def train(cfg, model_dir):
        seed = cfg.train.seed
        calls["train"].append((model_dir, seed))
        diverges = "none_lr0.001" in model_dir and seed == 1
        result = {"step": 3 + seed if diverges else cfg.train.max_steps, "status": "diverged" if diverges else
                  "finished", "loss": None if diverges else 1.0 + seed, "train_seconds": 30.0 * (seed + 1)}
        os.makedirs(model_dir, exist_ok=True)
        with open(os.path.join(model_dir, run_dir.TRAIN_RESULT_FILE), "w") as f:
            json.dump(result, f)
        return result

    def restore_model(model_dir, checkpoint=None, cfg=None):
        step = run_dir.read_train_result(model_dir)["step"]
        return run_dir.Restored(cfg, model_dir, None, "ckpt", step)

    def evaluate(cfg, model, anchors, *, source=None, output_dir=None, step=None, **kwargs):
        seed = cfg.train.seed
        calls["evaluate"].append((cfg.eval.metric, source, output_dir, cfg.train.seed))
        if cfg.eval.metric == "coco":
            return {"AP": 0.3 + seed / 100, "APs": -1.0, "APm": 0.2 + seed / 100, "APl": 0.4, "AP50": 0.5,
                    "step": step}
        return {"mAP_07": 0.6 + seed / 100, "step": step}

    monkeypatch.setattr(train_lib, "train", train)
    monkeypatch.setattr(run_dir, "restore_model", restore_model)
    monkeypatch.setattr(runner, "evaluate", evaluate)
    return calls


FAST_OVERRIDES = ("--data.train_source=shapes:/nowhere", "--data.val_source=shapes:/nowhere")


def test_every_seed_trains_in_its_folder_with_its_seed_and_key_cells_get_key_seeds(fake_training, tmp_path):
    out = str(tmp_path / "grid")
    cells = ("table1_none_lr0.001", "table1_head_lr0.01")  # a key cell and another
    report = ablation.run_grid("table1", out, steps=5, overrides=FAST_OVERRIDES, only=cells, seeds=2, key_seeds=3)
    folder = lambda cell, k: os.path.join(out, cell, f"seed{k}")  # noqa: E731
    expected = [(folder(cells[0], k), k) for k in range(3)] + [(folder(cells[1], k), k) for k in range(2)]
    assert fake_training["train"] == expected
    assert [(run["model_dir"], run["seed"]) for run in report["runs"]] == expected
    for model_dir, _ in expected:
        assert os.path.isfile(os.path.join(model_dir, run_dir.TRAIN_RESULT_FILE))
    # Only finished runs are evaluated, each on the validation source with its own seed's config.
    assert fake_training["evaluate"] == [
        ("voc07", "shapes:/nowhere", os.path.join(model_dir, "eval"), k) for model_dir, k in expected if
        model_dir != folder(cells[0], 1)]
    key_row, other_row = report["rows"]
    assert key_row["key"] and key_row["seeds"] == [0, 1, 2] and not other_row["key"] and other_row["seeds"] == [0, 1]
    assert key_row["status"] == "diverged 1/3 (step 4); 2 finished" and other_row["status"] == "finished 2/2"
    np.testing.assert_allclose(key_row["stats"]["mAP_07"]["mean"], np.mean([0.60, 0.62]))
    assert report["train_minutes"] == pytest.approx((30 + 60 + 90 + 30 + 60) / 60, abs=0.01)
    with open(report["markdown"]) as f:
        table = f.read()
    assert "| 3 (key) |" in table and f"{report['train_minutes']:.1f} train minutes summed over 5 runs" in table
    # A second call trains and evaluates nothing: every run folder is reused.
    fake_training["train"].clear()
    fake_training["evaluate"].clear()
    again = ablation.run_grid("table1", out, steps=5, overrides=FAST_OVERRIDES, only=cells, seeds=2, key_seeds=3)
    assert fake_training["train"] == [] and fake_training["evaluate"] == []
    assert all(run["reused"] for run in again["runs"]) and again["rows"][0]["stats"] == key_row["stats"]


def test_size_metrics_score_each_finished_run_with_coco_into_eval_coco(fake_training, tmp_path):
    out = str(tmp_path / "grid")
    report = ablation.run_grid("table2", out, steps=5, overrides=FAST_OVERRIDES, only=("table2_s1_3x3",),
                               seeds=2, key_seeds=3, size_metrics=True)  # not a key cell: 2 seeds
    coco = [call for call in fake_training["evaluate"] if call[0] == "coco"]
    assert coco == [("coco", "shapes:/nowhere", os.path.join(out, "table2_s1_3x3", f"seed{k}", "eval_coco"), k)
                    for k in range(2)]
    run = report["runs"][1]
    assert run["APs"] is None  # COCOeval's -1: no ground-truth box of that size
    assert (run["AP"], run["APm"], run["APl"]) == pytest.approx((0.31, 0.21, 0.4))
    stats = report["rows"][0]["stats"]
    np.testing.assert_allclose([stats["APm"]["mean"], stats["APm"]["sd"]], [0.205, np.std([0.2, 0.21], ddof=1)])
    assert stats["APs"] is None
    table = ablation.markdown_table(report["rows"])
    assert "| AP_S (%) | AP_M (%) | AP_L (%) |" in table and "| – | 20.5 | 40.0 |" in table
    assert "AP_S" not in ablation.markdown_table(ablation.aggregate([run_row(0, loss=1.0, map07=0.5)]))


def test_bad_seed_counts_and_a_cell_folder_holding_an_old_run_are_errors(fake_training, tmp_path):
    with pytest.raises(ValueError, match="seeds=0"):
        ablation.run_grid("table1", str(tmp_path), steps=5, overrides=FAST_OVERRIDES, seeds=0)
    old = tmp_path / "table1_both_lr0.05"
    old.mkdir()
    (old / run_dir.TRAIN_RESULT_FILE).write_text('{"status": "finished", "step": 5}')
    with pytest.raises(ValueError, match="table1_both_lr0.05.*seed0"):
        ablation.run_grid("table1", str(tmp_path), steps=5, overrides=FAST_OVERRIDES, only=("table1_both_lr0.05",))
    assert fake_training["train"] == []
