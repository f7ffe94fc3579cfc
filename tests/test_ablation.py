"""The ablation grid runner: trains and evaluates cells, tabulates them, reuses finished cells."""

import json
import os

import pytest
from conftest import ROOT, run_tool

from scratchdet_tf import ablation
from scratchdet_tf.training import train_lib

CELLS = ("table1_none_lr0.001", "table1_both_lr0.05")


@pytest.fixture(scope="module")
def grid(shapes_dir, tmp_path_factory):
    """A 2-cell Table 1 grid, 2 steps each, on tiny models; the no-BN cell is forced to diverge."""
    root = tmp_path_factory.mktemp("ablation")
    data = shapes_dir
    config_dir = root / "configs"
    config_dir.mkdir()
    for name in CELLS:  # the real flagfiles, plus a huge lr on the no-BN cell so that it diverges
        paper_cfg = os.path.join(ROOT, ablation.ABLATION_DIR, name + ".cfg")
        lines = [f"--flagfile={paper_cfg}"] + (["--train.learning_rate=1e30"] if "none" in name else [])
        (config_dir / f"{name}.cfg").write_text("\n".join(lines) + "\n")
    overrides = [f"--data.train_source=shapes:{data}", f"--data.val_source=shapes:{data}", "--model.num_classes=5",
                 "--model.width=0.0625", "--model.image_size=64", "--anchors.steps=", "--train.batch_size=4",
                 "--train.max_bad_steps=1", "--eval.batch_size=4"]
    out_dir = str(root / "grid")
    report = ablation.run_grid("table1", out_dir, steps=2, overrides=overrides, config_dir=str(config_dir),
                               only=CELLS, train_eval_source=f"shapes:{data}:train")
    return {"report": report, "overrides": overrides, "config_dir": str(config_dir), "out_dir": out_dir,
            "train_eval_source": f"shapes:{data}:train"}


@pytest.mark.slow
def test_grid_table_has_a_row_per_cell_with_divergence_and_paper_numbers(grid):
    rows = {row["name"]: row for row in grid["report"]["rows"]}
    assert rows["table1_none_lr0.001"]["status"] == "diverged" and rows["table1_none_lr0.001"]["mAP_07"] is None
    assert rows["table1_both_lr0.05"]["status"] == "finished" and rows["table1_both_lr0.05"]["step"] == 2
    assert 0.0 <= rows["table1_both_lr0.05"]["mAP_07"] <= 1.0
    assert rows["table1_both_lr0.05"]["train_mAP_07"] is not None
    with open(grid["report"]["markdown"]) as f:
        table = f.read()
    none_row = next(line for line in table.splitlines() if "`table1_none_lr0.001`" in line)
    both_row = next(line for line in table.splitlines() if "`table1_both_lr0.05`" in line)
    assert f"diverged at step {rows['table1_none_lr0.001']['step']}" in none_row and "| 67.6 |" in none_row
    assert "finished (2 steps)" in both_row and "| 78.7 |" in both_row
    with open(grid["report"]["json"]) as f:
        assert [row["name"] for row in json.load(f)["rows"]] == list(CELLS)


@pytest.mark.slow
def test_finished_cells_are_reused_without_training(grid, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(train_lib, "train", no_training)
    again = ablation.run_grid("table1", grid["out_dir"], steps=2, overrides=grid["overrides"],
                              config_dir=grid["config_dir"], only=CELLS, train_eval_source=grid["train_eval_source"])
    assert all(row["reused"] for row in again["rows"])
    assert [row["mAP_07"] for row in again["rows"]] == [row["mAP_07"] for row in grid["report"]["rows"]]


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
    assert result["cells"] == 2 and result["diverged"] == ["table1_none_lr0.001"]
    assert "diverged at step" in run.stdout
