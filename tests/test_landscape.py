"""Optimization-landscape plots: reading TensorBoard scalars back, the EMA, the PNG and the tool."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_tool

from scratchdet_tf import landscape, plots


def write_run(run_dir, points, diverged_at=None):
    """Scalars as train_lib writes them: tf.summary.scalar into <run_dir>/train at each step."""
    writer = tf.summary.create_file_writer(os.path.join(run_dir, "train"))
    with writer.as_default():
        for step, values in points:
            for tag, value in values.items():
                tf.summary.scalar(tag, value, step=step)
    writer.close()
    if diverged_at is not None:
        with open(os.path.join(run_dir, "train_result.json"), "w") as f:
            json.dump({"status": "diverged", "step": diverged_at}, f)


def curve(steps, scale):
    return [(s, {"loss": scale / s, "grad_norm": 2.0 * scale / s, "grad_norm_fluctuation": 0.1 * s,
                 "learning_rate": 0.05}) for s in steps]


@pytest.fixture
def runs(tmp_path):
    stable, diverged = str(tmp_path / "stable"), str(tmp_path / "diverged")
    write_run(stable, curve([10, 20, 30, 40], 8.0))
    write_run(diverged, curve([10, 20], 5.0), diverged_at=27)
    return stable, diverged


def test_reader_returns_each_tag_in_step_order_with_the_written_values(runs):
    scalars = landscape.read_scalars(runs[0])
    assert set(scalars) == set(landscape.TAGS)  # learning_rate was not asked for
    steps, values = scalars["loss"]
    np.testing.assert_array_equal(steps, [10, 20, 30, 40])
    np.testing.assert_allclose(values, [0.8, 0.4, 8.0 / 30, 0.2], rtol=1e-6)


def test_a_step_logged_again_after_a_resume_keeps_the_newer_value(tmp_path):
    write_run(str(tmp_path), [(10, {"loss": 1.0}), (20, {"loss": 2.0})])
    write_run(str(tmp_path), [(20, {"loss": 5.0}), (30, {"loss": 6.0})])  # a second events file
    steps, values = landscape.read_scalars(str(tmp_path), ("loss",))["loss"]
    np.testing.assert_array_equal(steps, [10, 20, 30])
    np.testing.assert_allclose(values, [1.0, 5.0, 6.0])


def test_missing_event_files_are_an_error_naming_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        landscape.read_scalars(str(tmp_path))


def test_ema_is_debiased_like_tensorboard():
    # a = 0.5: s1 = 0.5*1 / (1 - 0.5) = 1;  s2 = (0.25 + 1.5) / (1 - 0.25) = 7/3.
    np.testing.assert_allclose(landscape.ema(np.array([1.0, 3.0]), 0.5), [1.0, 7.0 / 3.0])
    np.testing.assert_array_equal(landscape.ema(np.array([4.0, 1.0]), 0.0), [4.0, 1.0])
    with pytest.raises(ValueError, match="smoothing=1"):
        landscape.ema(np.array([1.0]), 1.0)


def test_diverged_run_ends_where_it_diverged_and_the_png_is_written(runs, tmp_path):
    stable, diverged = (landscape.load_run(path) for path in runs)
    assert (stable.diverged_at, diverged.diverged_at) == (None, 27)
    assert diverged.scalars["loss"][0][-1] == 20 and stable.label == "stable"
    out = landscape.plot_landscape([stable, diverged], str(tmp_path / "figs" / "landscape.png"), title="t")
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cell(tmp_path):
    """A grid cell run over two seeds (<cell>/seed0, <cell>/seed1) logged at different steps; seed 1 diverged."""
    cell_dir = tmp_path / "table1_none_lr0.01"
    seed0 = [(10, {"loss": 4.0, "grad_norm": 1.0, "grad_norm_fluctuation": 0.5}),
             (20, {"loss": 3.0, "grad_norm": 2.0, "grad_norm_fluctuation": 0.25}),
             (30, {"loss": 2.0, "grad_norm": 4.0, "grad_norm_fluctuation": 0.125})]
    seed1 = [(10, {"loss": 6.0, "grad_norm": 3.0, "grad_norm_fluctuation": 1.5}),
             (20, {"loss": 9.0, "grad_norm": 8.0, "grad_norm_fluctuation": 2.5})]
    write_run(str(cell_dir / "seed0"), seed0)
    write_run(str(cell_dir / "seed1"), seed1, diverged_at=25)
    (cell_dir / "seed2").mkdir()  # a seed that has not logged yet: no curve
    return str(cell_dir), seed0, seed1


def test_a_cell_folder_of_seeds_loads_as_the_mean_over_the_seeds_that_logged_each_step(cell):
    cell_dir, seed0, seed1 = cell
    run = landscape.load_run(cell_dir, "no BN, lr 0.01")
    assert [seed.label for seed in run.seeds] == ["seed0", "seed1"] and run.diverged_at is None
    assert [seed.diverged_at for seed in run.seeds] == [None, 25]
    for tag in landscape.TAGS:
        by_step = {}
        for step, values in seed0 + seed1:
            by_step.setdefault(step, []).append(values[tag])
        steps, values = run.scalars[tag]
        np.testing.assert_array_equal(steps, [10, 20, 30])
        np.testing.assert_allclose(values, [np.mean(by_step[s]) for s in (10, 20, 30)], rtol=1e-6)
    assert landscape.load_run(os.path.join(cell_dir, "seed0")).seeds == []  # a plain run folder
    with pytest.raises(FileNotFoundError, match="seed2"):
        landscape.load_run(os.path.join(cell_dir, "seed2"))


def test_a_cell_draws_thin_seed_curves_and_a_thick_labelled_mean(cell, runs, tmp_path, monkeypatch):
    figures = []
    save = plots.save_figure

    def keep(fig, out_path, title=""):
        figures.append(fig)
        return save(fig, out_path, title)

    monkeypatch.setattr(plots, "save_figure", keep)
    mean = landscape.load_run(cell[0], "no BN")
    out = landscape.plot_landscape([landscape.load_run(runs[0]), mean], str(tmp_path / "cell.png"))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    loss_axes = figures[0].axes[0]
    assert [t.get_text() for t in loss_axes.get_legend().get_texts()] == [
        "stable", "no BN (mean of 2 seeds; 1 diverged at step 25)"]
    lines = [line for line in loss_axes.get_lines() if line.get_linestyle() != "None"]  # curves, not x marks
    stable, seed0, seed1, mean_line = lines
    assert seed0.get_linewidth() < stable.get_linewidth() < mean_line.get_linewidth()
    assert seed0.get_alpha() < 1 and seed1.get_alpha() < 1 and mean_line.get_alpha() in (None, 1.0)
    assert seed0.get_color() == seed1.get_color() == mean_line.get_color() != stable.get_color()
    np.testing.assert_allclose(mean_line.get_ydata(), mean.scalars["loss"][1])


def test_tool_plots_the_runs_and_ends_with_one_json_line(runs, cell, tmp_path):
    out = str(tmp_path / "fig.png")
    run = run_tool("plot_landscape", f"--runs={runs[0]},{runs[1]},{cell[0]}", "--labels=BN,no BN,no BN seeds",
                   f"--out={out}", timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"out": out, "runs": 3}
    assert os.path.getsize(out) > 0
