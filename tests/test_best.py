"""The best checkpoint (``training/best.py``) and early stopping, in the class and in a real training run."""

import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config, tiny_train_config

from scratchdet_tf import run_dir
from scratchdet_tf.evaluation import runner
from scratchdet_tf.models import ssd
from scratchdet_tf.training import best as best_lib
from scratchdet_tf.training import train_lib


def _keeper(model_dir, **train):
    cfg = tiny_config(train__eval_every_steps=10, **{f"train__{k}": v for k, v in train.items()})
    model = ssd.build_model(cfg.model, cfg.anchors)
    return best_lib.BestCheckpoint(str(model_dir), cfg, model, tf.Variable(0, dtype=tf.int64)), model


def test_only_a_better_metric_replaces_the_best_and_it_restores_as_a_run(tmp_path):
    keeper, model = _keeper(tmp_path)
    assert keeper.metric == "mAP_07" and keeper.summary() is None
    assert keeper.update(10, {"mAP_07": 0.2, "mAP_area": 0.25})
    saved = [w.numpy() for w in model.weights]
    for w in model.trainable_weights:  # training goes on
        w.assign(w + 1.0)
    assert not keeper.update(20, {"mAP_07": 0.2})  # equal is not better
    assert not keeper.update(30, {"mAP_07": 0.1})
    assert not keeper.update(40, {"mAP_07": math.nan})
    folder = tmp_path / run_dir.BEST_DIR
    assert json.loads((folder / best_lib.BEST_FILE).read_text())["step"] == 10
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("ckpt-")) == [
        "ckpt-10.data-00000-of-00001", "ckpt-10.index"]
    keras.backend.clear_session()
    restored = run_dir.restore_model(str(folder))  # config.json + checkpoint: a run folder of its own
    assert restored.step == 10
    for a, b in zip(restored.model.weights, saved):
        np.testing.assert_array_equal(a.numpy(), b)
    assert keeper.update(50, {"mAP_07": 0.3})
    assert best_lib.read(str(tmp_path))["step"] == 50 and not os.path.exists(str(folder) + ".tmp")


def test_patience_counts_evaluations_since_the_best_and_survives_a_restart(tmp_path):
    keeper, _ = _keeper(tmp_path, patience=2)
    assert not keeper.patience_spent(100)  # nothing evaluated yet
    keeper.update(10, {"mAP_07": 0.5})
    assert not keeper.patience_spent(20) and keeper.patience_spent(30)
    again, _ = _keeper(tmp_path, patience=2)  # a resumed run reads best.json
    assert again.summary()["step"] == 10 and again.patience_spent(30)


def test_a_swap_cut_short_by_a_crash_is_completed_on_read(tmp_path):
    keeper, _ = _keeper(tmp_path)
    keeper.update(10, {"mAP_07": 0.5})
    folder = str(tmp_path / run_dir.BEST_DIR)
    os.rename(folder, folder + ".tmp")  # the moment between removing the old best and renaming the new one
    assert best_lib.read(str(tmp_path))["step"] == 10 and os.path.isdir(folder)


@pytest.mark.slow
def test_training_keeps_the_best_and_stops_when_patience_runs_out(shapes_dir, tmp_path, monkeypatch):
    scripted = iter([0.1, 0.3, 0.2, 0.25, 0.9, 0.9])
    evaluated = []

    def fake_evaluation(cfg, model, anchors, writer, step, **kwargs):
        evaluated.append(step)
        return {"mAP_07": next(scripted), "mAP_area": 0.0, "num_images": 4}

    monkeypatch.setattr(runner, "evaluate_during_training", fake_evaluation)
    cfg = tiny_train_config(shapes_dir, max_steps=10, eval_every_steps=1, patience=2, checkpoint_every_steps=5)
    model_dir = str(tmp_path / "run")
    result = train_lib.train(cfg, model_dir)
    # Best at step 2 (0.3); steps 3 and 4 bring nothing better: stop at 4 with a checkpoint there.
    assert evaluated == [1, 2, 3, 4]
    assert result["status"] == "early_stopped" and result["step"] == 4
    assert result["best"] == {"step": 2, "metric": "mAP_07", "value": 0.3,
                              "dir": os.path.join(model_dir, run_dir.BEST_DIR)}
    assert run_dir.restore_model(model_dir).step == 4 and run_dir.restore_model(result["best"]["dir"]).step == 2
    assert os.path.getsize(os.path.join(model_dir, "training_curves.png")) > 10_000
    again = train_lib.train(cfg, model_dir)  # the same command again: nothing left to do
    assert again["steps_this_run"] == 0 and again["status"] == "early_stopped" and evaluated == [1, 2, 3, 4]


def test_a_crash_after_moving_the_old_best_aside_keeps_the_old_best(tmp_path):
    keeper, _ = _keeper(tmp_path)
    keeper.update(10, {"mAP_07": 0.5})
    folder = str(tmp_path / run_dir.BEST_DIR)
    os.rename(folder, folder + ".old")  # the new one was never completed
    assert best_lib.read(str(tmp_path))["step"] == 10


def test_a_best_of_zero_does_not_start_the_patience_count(tmp_path):
    keeper, _ = _keeper(tmp_path, patience=1)
    keeper.update(10, {"mAP_07": 0.0})  # still on the plateau
    assert not keeper.patience_spent(50)
    keeper.update(60, {"mAP_07": 0.01})
    assert not keeper.patience_spent(60) and keeper.patience_spent(70)
