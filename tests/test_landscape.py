"""Optimization-landscape plots: reading TensorBoard scalars back, the EMA, the PNG and the tool."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_tool

from scratchdet_tf import landscape


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


def test_tool_plots_the_runs_and_ends_with_one_json_line(runs, tmp_path):
    out = str(tmp_path / "fig.png")
    run = run_tool("plot_landscape", f"--runs={runs[0]},{runs[1]}", "--labels=BN,no BN", f"--out={out}",
                   timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"out": out, "runs": 2}
    assert os.path.getsize(out) > 0
