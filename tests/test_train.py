"""The training loop: distribution, XLA, resume, divergence guard, multi-worker, paper-config smoke."""

import glob
import json
import os
import signal
import socket
import subprocess
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import ROOT, cli_flags, run_tool, tiny_train_config, tool_command

from scratchdet_tf import config, run_dir
from scratchdet_tf.cli import config_flags
from scratchdet_tf.config import flagfile
from scratchdet_tf.data import pipeline, shapes
from scratchdet_tf.models import ssd
from scratchdet_tf.training import losses, optim, train_lib


def weights(model_dir):
    keras.backend.clear_session()
    return run_dir.restore_model(model_dir).model.get_weights()


@pytest.mark.slow
def test_two_mirrored_replicas_agree_with_one_device_on_the_same_global_batch(shapes_dir, tmp_path):
    # Without BN nothing couples the images of a batch, so 2 replicas x 2 images must reproduce
    # one device x 4 images: loss normalized by the global positives, one gradient sum, one update.
    def cfg(**train):
        return config.replace(tiny_train_config(shapes_dir, learning_rate=1e-3, **train), model__backbone_bn=False,
                              model__head_bn=False)

    one = train_lib.train(cfg(), str(tmp_path / "one"))
    two = train_lib.train(cfg(strategy="mirrored", devices=("/cpu:0", "/cpu:1")), str(tmp_path / "two"))
    assert one["step"] == two["step"] == 2
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    for a, b in zip(weights(tmp_path / "one"), weights(tmp_path / "two")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_synchronized_bn_over_two_replicas_matches_one_device_bn(shapes_dir, tmp_path):
    one = train_lib.train(tiny_train_config(shapes_dir, max_steps=1, sync_bn=True), str(tmp_path / "one"))
    two = train_lib.train(tiny_train_config(shapes_dir, max_steps=1, sync_bn=True, strategy="mirrored",
                                   devices=("/cpu:0", "/cpu:1")), str(tmp_path / "two"))
    # Keras' synchronized BN computes moments as E[x^2] - E[x]^2: equal up to float rounding.
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
    assert two["weights_l1"] == pytest.approx(one["weights_l1"], rel=1e-4)


@pytest.mark.slow
def test_xla_and_plain_steps_give_the_same_loss(shapes_dir, tmp_path):
    plain = train_lib.train(tiny_train_config(shapes_dir, max_steps=1), str(tmp_path / "plain"))
    xla = train_lib.train(tiny_train_config(shapes_dir, max_steps=1, jit_compile=True, deterministic=False),
                          str(tmp_path / "xla"))
    assert xla["loss"] == pytest.approx(plain["loss"], rel=1e-4)


@pytest.mark.slow
def test_resumed_run_continues_at_its_step_and_ends_with_the_same_weights(shapes_dir, tmp_path):
    whole = train_lib.train(tiny_train_config(shapes_dir, max_steps=4), str(tmp_path / "whole"))
    first = train_lib.train(tiny_train_config(shapes_dir, max_steps=2), str(tmp_path / "split"))
    second = train_lib.train(tiny_train_config(shapes_dir, max_steps=4), str(tmp_path / "split"))
    assert (first["step"], second["step"], second["steps_this_run"]) == (2, 4, 2)
    assert second["loss"] == whole["loss"]
    for a, b in zip(weights(tmp_path / "whole"), weights(tmp_path / "split")):
        np.testing.assert_array_equal(a, b)


def test_run_writes_config_json_and_a_rerunnable_flagfile(shapes_dir, tmp_path):
    cfg = tiny_train_config(shapes_dir, max_steps=1)
    train_lib.train(cfg, str(tmp_path))
    fv = flags.FlagValues()
    config_flags.define_flags(fv)
    fv(["prog"] + flagfile.expand([f"--flagfile={tmp_path / 'flags.cfg'}"]))
    assert config_flags.config_from_flags(fv) == run_dir.load_config(str(tmp_path))
    # What the run computes is the given config with its classes taken from the data.
    assert run_dir.load_config(str(tmp_path)) == config.replace(cfg, data__class_names=shapes.CLASS_NAMES)
    assert glob.glob(str(tmp_path / "train" / "events.out.tfevents.*"))


@pytest.mark.slow
def test_periodic_eval_writes_metrics_and_drawn_images_to_tensorboard(shapes_dir, tmp_path):
    import tensorflow as tf

    result = train_lib.train(tiny_train_config(shapes_dir, max_steps=2, eval_every_steps=2), str(tmp_path))
    assert result["status"] == "finished"
    tags = set()
    for path in glob.glob(str(tmp_path / "eval" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    assert {"eval/mAP_07", "eval/mAP_area", "detections/0"} <= tags
    train_tags = set()
    for path in glob.glob(str(tmp_path / "train" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            train_tags |= {v.tag for v in event.summary.value}
    assert {"loss", "cls_loss", "box_loss", "learning_rate", "images_per_sec", "grad_norm",
            "grad_norm_fluctuation", "skipped_steps"} <= train_tags


@pytest.mark.slow
def test_divergence_guard_skips_non_finite_steps_and_keeps_the_last_good_checkpoint(shapes_dir, tmp_path,
                                                                                        monkeypatch):
    good = train_lib.train(tiny_train_config(shapes_dir, max_steps=2), str(tmp_path))
    before = weights(tmp_path)
    real_loss = losses.multibox_loss

    def nan_loss(*args, **kwargs):
        sums = real_loss(*args, **kwargs)
        return {**sums, "cls_loss_sum": sums["cls_loss_sum"] * float("nan")}

    monkeypatch.setattr(losses, "multibox_loss", nan_loss)
    bad = train_lib.train(tiny_train_config(shapes_dir, max_steps=20, max_bad_steps=3), str(tmp_path))
    assert good["status"] == "finished" and bad["status"] == "diverged"
    assert bad["step"] == 5 and bad["skipped_steps"] == 3  # diverged at step 5: steps 3, 4, 5 were bad
    assert os.path.basename(run_dir.restore_model(str(tmp_path)).checkpoint) == "ckpt-2"
    for a, b in zip(before, weights(tmp_path)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_init_checkpoint_loads_weights_but_starts_at_step_zero(shapes_dir, tmp_path):
    train_lib.train(tiny_train_config(shapes_dir, max_steps=2), str(tmp_path / "source"))
    source_weights = weights(tmp_path / "source")
    cfg = tiny_train_config(shapes_dir, max_steps=1, learning_rate=1e-12, weight_decay=0.0,
                   init_checkpoint=str(tmp_path / "source"))
    result = train_lib.train(cfg, str(tmp_path / "target"))
    assert result["step"] == 1 and result["steps_this_run"] == 1
    # lr ~ 0: the one step leaves the conv kernels as loaded (BN moving statistics do move).
    for a, b in zip(source_weights, weights(tmp_path / "target")):
        if a.ndim == 4:
            np.testing.assert_allclose(a, b, atol=1e-9)


def test_batch_that_does_not_divide_over_replicas_is_a_config_error(shapes_dir, tmp_path):
    cfg = tiny_train_config(shapes_dir, batch_size=3, strategy="mirrored", devices=("/cpu:0", "/cpu:1"))
    with pytest.raises(config.ConfigError, match="--train.batch_size=3"):
        train_lib.train(cfg, str(tmp_path))


def _train_args(shapes_dir, model_dir, *extra):
    """tools/train.py's arguments for the tiny training config (logging at the default interval)."""
    cfg = tiny_train_config(shapes_dir, log_every_steps=config.TrainConfig.log_every_steps)
    return [f"--model_dir={model_dir}", *cli_flags(cfg), *extra]


def _last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sigkilled_run_resumes_with_nothing_lost(shapes_dir, tmp_path):
    steps = ["--train.max_steps=6", "--train.checkpoint_every_steps=2"]
    whole = run_tool("train", *_train_args(shapes_dir, tmp_path / "whole", *steps))
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(tool_command("train", *_train_args(shapes_dir, killed_dir, *steps,
                                                               "--train.log_every_steps=1")),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not glob.glob(str(killed_dir / "ckpt-2.index")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_tool("train", *_train_args(shapes_dir, killed_dir, *steps))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _last_json(resumed.stdout)["step"] == 6
    assert _last_json(resumed.stdout)["steps_this_run"] < 6
    assert _last_json(resumed.stdout)["weights_l1"] == _last_json(whole.stdout)["weights_l1"]


@pytest.mark.slow
def test_train_tool_exits_nonzero_and_says_diverged(shapes_dir, tmp_path):
    run = run_tool("train", *_train_args(shapes_dir, tmp_path, "--train.max_steps=30", "--train.max_bad_steps=2",
                                         "--train.learning_rate=1e30"))
    assert run.returncode == 1
    result = _last_json(run.stdout)
    assert result["status"] == "diverged"
    assert f"diverged at step {result['step']}" in run.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_multi_worker_run_keeps_replicas_in_sync(shapes_dir, tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            tool_command("train", *_train_args(shapes_dir, tmp_path, "--train.max_steps=3",
                                               "--train.strategy=multi_worker")),
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    chief, worker = (_last_json(out) for out, _ in outs)
    assert chief["step"] == worker["step"] == 3
    assert (chief["worker"], worker["worker"]) == (0, 1)
    assert chief["weights_l1"] == worker["weights_l1"]
    assert os.path.basename(run_dir.restore_model(str(tmp_path)).checkpoint) == "ckpt-3"


# Every paper config, and of the ablation grids each BN placement at the largest lr and the Table 2 roots at
# both ends (7x7 and 3x3x3 at stride 2 and 1, the deepest root, no max-pool): the other cells change only the
# lr or the root depth in between, and every config is built at its real size in test_models (a training step
# costs ~12 s each, and the suite has a time budget).
PAPER_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "scratchdet300_*.cfg")) + [
    os.path.join(ROOT, "configs", "ablations", f"{name}.cfg") for name in (
        "table1_none_lr0.05", "table1_head_lr0.05", "table1_backbone_lr0.05", "table1_both_lr0.05",
        "table2_s2_7x7", "table2_s2_3x3x3", "table2_s1_7x7", "table2_s1_3x3x3", "table2_s1_3x3x5",
        "fig3_resnet18a")])


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_paper_config_trains_two_steps_at_its_real_size(path, shapes_dir, tmp_path):
    fv = flags.FlagValues()
    config_flags.define_flags(fv)
    fv(["prog"] + flagfile.expand([
        f"--flagfile={path}", f"--data.train_source=shapes:{shapes_dir}", "--train.batch_size=2",
        "--train.max_steps=2", "--train.init_checkpoint=", "--model.num_classes=0"]))
    cfg = config_flags.config_from_flags(fv)
    keras.backend.clear_session()
    result = train_lib.train(cfg, str(tmp_path))
    assert cfg.model.image_size == 300
    assert result["status"] == "finished" and result["step"] == 2 and np.isfinite(result["loss"])


def test_one_fused_training_step_equals_a_plain_eager_sgd_step(shapes_dir, tmp_path):
    # train()'s step runs as one graph (gradient, norm, guarded update); the same update written
    # eagerly, op by op, on the same first batch must give the same weights.
    cfg = tiny_train_config(shapes_dir, max_steps=1, weight_decay=5e-4, momentum=0.9, checkpoint_every_steps=1)
    train_lib.train(cfg, str(tmp_path))
    trained = weights(tmp_path)

    keras.utils.set_random_seed(cfg.train.seed)  # what train() does before building
    model = ssd.build_model(cfg.model, cfg.anchors)
    optimizer = optim.build_optimizer(cfg.train)
    optimizer.build(model.trainable_variables)
    anchors = ssd.model_anchors(model, cfg.anchors, cfg.model.image_size)
    batch = next(iter(pipeline.make_dataset(
        cfg.data, anchors, training=True, image_size=cfg.model.image_size, batch_size=cfg.train.batch_size,
        input_context=tf.distribute.InputContext(1, 0, 1), iou_threshold=cfg.loss.iou_threshold,
        variances=cfg.anchors.variances, seed=cfg.train.seed, neg_overlap=cfg.loss.neg_overlap)))
    with tf.GradientTape() as tape:
        out = model(batch["image"], training=True)
        loss = losses.multibox_loss_normalized(out["cls_logits"], out["box_deltas"], batch["cls_targets"],
                                               batch["box_targets"], cfg.loss.neg_pos_ratio, cfg.loss.loc_weight)
        loss += optim.l2_penalty(optim.decayed_variables(model), cfg.train.weight_decay)
    grads = tape.gradient(loss, model.trainable_variables)
    initial = [w.numpy() for w in model.weights]
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    plain = [w.numpy() for w in model.weights]
    assert len(trained) == len(plain)
    # The step's change of every weight (and BN statistic) agrees up to float32 summation order:
    # within 0.1 % of the change, plus 1e-7 per element (float32 rounding of O(1) values).
    moved = 0
    for got, want, start in zip(trained, plain, initial):
        error = np.linalg.norm((got - start) - (want - start))
        assert error <= 1e-3 * np.linalg.norm(want - start) + 1e-7 * np.sqrt(start.size), (error, start.shape)
        moved += np.linalg.norm(want - start) > 1e-4
    assert moved > len(plain) // 2  # the step did change most tensors: the comparison is not vacuous
