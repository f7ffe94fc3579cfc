"""``train(cfg, model_dir)``: the distributed custom training loop, top to bottom.

One step: every replica computes the gradient of its share of the MultiBox loss
(optionally XLA-compiled), normalized by the *global* number of positives; the
gradients are summed over replicas once; the global gradient norm decides whether the
update is applied (the divergence guard); then SGD applies it. Checkpoints hold the
model, optimizer, step and the input iterator, so a killed run resumes exactly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import shutil
import signal
import threading
import time
from typing import Dict

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.python.framework import config as tf_framework_config

from scratchdet_tf import config as config_lib
from scratchdet_tf import finetune, losses, optim, run_dir, training_log
from scratchdet_tf.data import pipeline
from scratchdet_tf.models import ssd


def _evaluate_and_log(cfg, model, anchors, writer, step: int, num_drawn: int = 4) -> Dict:
    """Periodic evaluation: metrics and a few validation images with drawn boxes to TensorBoard."""
    from scratchdet_tf import eval_lib, visualize  # evaluation is only needed when it is switched on
    from scratchdet_tf.data import readers

    metrics = eval_lib.evaluate(cfg, model, anchors, step=step)
    eval_lib.write_summaries(writer, metrics, step)
    predict = eval_lib.model_predict_fn(cfg, model, anchors)
    ds, info = readers.read(cfg.data.val_source, tfds_data_dir=cfg.data.tfds_data_dir, training=False)
    drawn = []
    for example in ds.take(num_drawn):
        image = example["image"].numpy()
        det = predict(image[None])
        keep = det["scores"][0] >= 0.3
        drawn.append(visualize.draw_detections(image, det["boxes"][0][keep], det["classes"][0][keep],
                                               det["scores"][0][keep], info.class_names))
    with writer.as_default(step=step):
        for i, image in enumerate(drawn):
            tf.summary.image(f"detections/{i}", image[None], step=step)
    writer.flush()
    return metrics


def get_strategy(train_cfg) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy named by ``train_cfg.strategy``.

    One instance per (kind, devices) and process: a second MirroredStrategy over the same
    devices would reuse collective-op keys of the first and fail with shape mismatches.
    """
    return _strategy(train_cfg.strategy, tuple(train_cfg.devices))


@functools.cache
def _strategy(kind: str, devices: tuple) -> tf.distribute.Strategy:
    devices = list(devices) or None
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()  # cluster from TF_CONFIG
    if kind == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if devices:
        return tf.distribute.OneDeviceStrategy(devices[0])
    return tf.distribute.get_strategy()


def _worker(strategy) -> tuple:
    """(worker index, number of workers) of this process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 0, 1
    return int(resolver.task_id or 0), resolver.cluster_spec().num_tasks(resolver.task_type or "worker")


def per_replica_batch_size(train_cfg, num_replicas: int) -> int:
    """The micro-batch one replica sees: global batch / (replicas * accumulation steps).

    Raises:
      config.ConfigError: when the global batch does not divide evenly.
    """
    parts = num_replicas * train_cfg.grad_accum_steps
    if train_cfg.batch_size % parts:
        raise config_lib.ConfigError(
            f"--train.batch_size={train_cfg.batch_size} is invalid: it must divide into {num_replicas} replicas x "
            f"{train_cfg.grad_accum_steps} accumulation steps")
    return train_cfg.batch_size // parts


def _restore_newest_readable(checkpoint: tf.train.Checkpoint, model_dir: str) -> str | None:
    """Restores the newest complete, readable checkpoint of ``model_dir``; None if it has none.

    The ``checkpoint`` index file is not trusted: the candidates are the checkpoint files themselves.
    A truncated or corrupt one is skipped with a warning naming it.

    Raises:
      run_dir.RunDirError: checkpoints exist but none can be read (nothing is touched).
    """
    candidates = run_dir.resume_candidates(model_dir)
    if not candidates:
        return None
    indexed = tf.train.latest_checkpoint(model_dir)
    if indexed != candidates[0]:
        logging.warning("%s's checkpoint index names %s, but the newest complete checkpoint is %s; resuming "
                        "from the files", model_dir, indexed, candidates[0])
    return run_dir.restore_first_readable(
        candidates, lambda prefix: checkpoint.restore(prefix).assert_existing_objects_matched(), model_dir)


def _save(manager: tf.train.CheckpointManager, step: int) -> str:
    """``manager.save`` at ``step``; a failed save (disk full, read-only) leaves no partial files behind.

    Raises:
      run_dir.RunDirError: naming the checkpoint and the reason; earlier checkpoints are intact.
    """
    prefix = os.path.join(manager.directory, f"ckpt-{step}")
    try:
        return manager.save(checkpoint_number=step)
    except (OSError, tf.errors.OpError) as err:
        run_dir.remove_partial_save(prefix)
        reason = getattr(err, "strerror", None) or getattr(err, "message", None) or str(err)
        # TF's op errors read "{{function_node ...}} <temp file>; No space left on device [Op:SaveV2]".
        reason = re.sub(r"\s*\[Op:\w+\]", "", reason.strip().splitlines()[0]).rstrip("; ").split("; ")[-1]
        raise run_dir.RunDirError(f"could not save checkpoint {prefix}: {reason}; "
                                  "the earlier checkpoints are intact") from None


def train(cfg: config_lib.Config, model_dir: str, *, allow_config_change: bool = False) -> Dict:
    """Trains until ``cfg.train.max_steps`` (resuming from ``model_dir``), divergence or SIGTERM/SIGINT.

    The chief holds ``model_dir``'s lock for the whole run (``run_dir.RunLock``). A relaunch resumes
    from the newest readable complete checkpoint (``run_dir.resume_candidates``), and may not change
    what the run computes unless ``allow_config_change`` (``run_dir.check_config``); nothing is
    written into ``model_dir`` before the config, the data source and the checkpoint have been read.
    SIGTERM or SIGINT (in the main thread) ends the run after the current step with a checkpoint at
    that step: status ``"interrupted"``, ``"signal"`` names it.

    Returns:
      ``{"step", "loss", "status": "finished" | "diverged" | "interrupted", "train_seconds", ...}``.

    Raises:
      config.ConfigError: a bad setting, or a changed configuration of an existing run.
      run_dir.RunDirError: the folder is owned by another trainer, or no checkpoint in it is readable,
        or a checkpoint cannot be saved (the message says why; earlier checkpoints stay intact).
    """
    with _StopOnSignal() as stop:
        return _train(cfg, model_dir, allow_config_change, stop)


class _StopOnSignal:
    """Records SIGTERM / SIGINT instead of dying, while installed (main thread only)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        if self.signum is not None:  # a second signal: the default action (end now, no checkpoint)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        logging.warning("received %s: stopping after the current step with a checkpoint (send it again to end "
                        "at once)", signal.Signals(signum).name)
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _train(cfg: config_lib.Config, model_dir: str, allow_config_change: bool, stop: _StopOnSignal) -> Dict:
    tcfg = cfg.train
    # --- setup ---
    keras.utils.set_random_seed(tcfg.seed)
    if tcfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    else:  # the setting is process-wide; an earlier deterministic run must not leak into this one
        # (TF 2.21 exports only the enable half; the disable half lives beside it.)
        tf_framework_config.disable_op_determinism()
    keras.mixed_precision.set_global_policy(tcfg.mixed_precision)
    strategy = get_strategy(tcfg)
    worker, num_workers = _worker(strategy)
    per_replica_batch_size(tcfg, strategy.num_replicas_in_sync)  # a batch that does not divide: ConfigError
    # The chief owns model_dir; the other workers write only their own scratch folders in it.
    lock = run_dir.RunLock(model_dir) if worker == 0 else contextlib.nullcontext()
    with lock:
        return _train_locked(cfg, model_dir, allow_config_change, stop, strategy, worker, num_workers)


def _train_locked(cfg, model_dir, allow_config_change, stop, strategy, worker, num_workers) -> Dict:
    tcfg = cfg.train
    is_chief = worker == 0
    num_replicas = strategy.num_replicas_in_sync
    local_replicas = num_replicas // num_workers
    replica_batch = per_replica_batch_size(tcfg, num_replicas)
    if is_chief:
        run_dir.check_config(model_dir, cfg, allow_config_change)
    logging.info("%d replica(s) on %d worker(s): global batch %d = %d per replica x %d replicas x %d accumulation",
                 num_replicas, num_workers, tcfg.batch_size, replica_batch, num_replicas, tcfg.grad_accum_steps)

    # --- model, optimizer, checkpoint ---
    with strategy.scope():
        model = ssd.build_model(cfg.model, cfg.anchors, sync_bn=tcfg.sync_bn)
        optimizer = optim.build_optimizer(tcfg)
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    anchors = ssd.model_anchors(model, cfg.anchors, cfg.model.image_size)
    decayed = optim.decayed_variables(model)

    # --- data: one host iterator per worker (checkpointable), split over local replicas ---
    dataset = pipeline.make_dataset(
        cfg.data, anchors, training=True, image_size=cfg.model.image_size,
        batch_size=replica_batch * local_replicas,
        input_context=tf.distribute.InputContext(num_workers, worker, num_replicas),
        iou_threshold=cfg.loss.iou_threshold, variances=cfg.anchors.variances, seed=tcfg.seed,
        neg_overlap=cfg.loss.neg_overlap,
    )
    iterator = iter(dataset)

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, iterator=iterator)
    write_dir = model_dir if is_chief else os.path.join(model_dir, f".worker{worker}")
    manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=tcfg.keep_checkpoints)
    latest = _restore_newest_readable(checkpoint, model_dir)
    if latest:
        logging.info("resumed from %s at step %d", latest, int(step.numpy()))
    elif tcfg.init_checkpoint:
        # Weights only; an 81-class COCO model maps onto 21 VOC classes (SPEC §7).
        init = finetune.load_init_checkpoint(model, tcfg.init_checkpoint, cfg)
        logging.info("initialized weights from %s", init)

    # --- step ---
    fp16 = tcfg.mixed_precision == "mixed_float16"

    def loss_scale():
        return tf.cast(optimizer.dynamic_scale, tf.float32) if fp16 else tf.constant(1.0)

    def grads_of_batch(images, cls_targets, box_targets, num_pos_global):
        # Per replica: the gradient of this replica's share of the global objective.
        with tf.GradientTape() as tape:
            out = model(images, training=True)
            sums = losses.multibox_loss(out["cls_logits"], out["box_deltas"], cls_targets, box_targets,
                                        neg_pos_ratio=cfg.loss.neg_pos_ratio)
            cls_loss = sums["cls_loss_sum"] / num_pos_global
            box_loss = cfg.loss.loc_weight * sums["box_loss_sum"] / num_pos_global
            # Coupled L2 (optim.py); summed over replicas it counts once.
            objective = cls_loss + box_loss + optim.l2_penalty(decayed, tcfg.weight_decay) / num_replicas
            scaled = optimizer.scale_loss(objective)
        grads = tape.gradient(scaled, model.trainable_variables)
        return grads, {"cls_loss": cls_loss, "box_loss": box_loss}

    if tcfg.jit_compile:
        # XLA compiles only the per-replica forward/backward; the all-reduce and the update
        # stay outside (compiling anything that syncs replicas fails under MirroredStrategy).
        grads_of_batch = tf.function(grads_of_batch, jit_compile=True)

    def replica_step(batch):
        ctx = tf.distribute.get_replica_context()
        num_pos = tf.reduce_sum(tf.cast(batch["cls_targets"] > 0, tf.float32))
        num_pos_global = tf.maximum(ctx.all_reduce(tf.distribute.ReduceOp.SUM, num_pos), 1.0)
        grads, stats = grads_of_batch(batch["image"], batch["cls_targets"], batch["box_targets"], num_pos_global)
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)  # the one all-reduce of the step
        return grads, stats

    def split_for_replicas(batch):
        def value_fn(ctx):
            index = ctx.replica_id_in_sync_group % local_replicas
            return tf.nest.map_structure(lambda t: tf.split(t, local_replicas)[index], batch)

        return strategy.experimental_distribute_values_from_function(value_fn)

    @tf.function
    def compute_gradients(iterator):
        per_replica = split_for_replicas(next(iterator))
        grads, stats = strategy.run(replica_step, args=(per_replica,))
        stats = {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in stats.items()}
        return grads, stats

    @tf.function
    def add_gradients(a, b):
        return strategy.run(lambda x, y: [u + v for u, v in zip(x, y)], args=(a, b))

    @tf.function
    def gradient_norm(grads):
        # Every replica holds the same summed gradient; unscale fp16 and average accumulation.
        norms = strategy.run(lambda g: tf.linalg.global_norm(g) / (loss_scale() * tcfg.grad_accum_steps),
                             args=(grads,))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, norms, axis=None)

    @tf.function
    def apply_gradients(grads):
        def apply(g):
            g = [x / tcfg.grad_accum_steps for x in g]
            optimizer.apply_gradients(zip(g, model.trainable_variables))

        strategy.run(apply, args=(grads,))

    if is_chief:  # config, data and checkpoint are read: now the run folder may be written
        from scratchdet_tf import config_flags  # writes config.json + flags.cfg

        config_flags.write_run_files(cfg, model_dir)
    previous = os.path.join(model_dir, "train_result.json")
    if int(step.numpy()) >= tcfg.max_steps and os.path.isfile(previous):
        with open(previous) as f:  # nothing left to train: report the run that finished it
            return {**json.load(f), "steps_this_run": 0}

    # --- loop ---
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "train")) if is_chief else None
    eval_writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval")) if is_chief else None
    start_step = int(step.numpy())
    bad_in_a_row, skipped, status = 0, 0, "finished"
    prev_norm, history = None, {"loss": math.nan}
    t_start = t_log = t_warm = time.time()
    eval_time = 0.0
    curves = training_log.TrainingLog(model_dir if is_chief else None, start_step)
    images_since_log = 0
    while int(step.numpy()) < tcfg.max_steps:
        grads, stats = compute_gradients(iterator)
        for _ in range(tcfg.grad_accum_steps - 1):
            more, more_stats = compute_gradients(iterator)
            grads = add_gradients(grads, more)
            stats = {k: stats[k] + more_stats[k] for k in stats}
        stats = {k: float(v) / tcfg.grad_accum_steps for k, v in stats.items()}
        loss = stats["cls_loss"] + stats["box_loss"]
        norm = float(gradient_norm(grads))
        if fp16:  # the loss-scale optimizer skips (and rescales on) overflowing gradients itself
            finite = math.isfinite(loss)
            apply_gradients(grads)
        else:
            finite = math.isfinite(loss) and math.isfinite(norm)
            if finite:
                apply_gradients(grads)
        if not finite:
            skipped += 1
            bad_in_a_row += 1
            logging.warning("step %d: non-finite loss %s / gradient norm %s, update skipped (%d in a row)",
                            int(step.numpy()) + 1, loss, norm, bad_in_a_row)
        else:
            bad_in_a_row = 0
        step.assign_add(1)
        current = int(step.numpy())
        images_since_log += tcfg.batch_size
        if bad_in_a_row >= tcfg.max_bad_steps:
            status = "diverged"
            logging.error("diverged at step %d: %d consecutive non-finite steps; last good checkpoint kept",
                          current, bad_in_a_row)
            break
        if finite and math.isfinite(norm):
            fluctuation = abs(norm - prev_norm) if prev_norm is not None else 0.0
            prev_norm = norm
            history = {"loss": loss, **stats, "grad_norm": norm, "grad_norm_fluctuation": fluctuation}
        if current % tcfg.log_every_steps == 0 or current == tcfg.max_steps:
            now = time.time()
            rate = images_since_log / max(now - t_log, 1e-9)
            lr = float(optimizer.learning_rate)
            eta = (tcfg.max_steps - current) * tcfg.batch_size / max(rate, 1e-9)
            logging.info("step %d/%d  loss %.4f (cls %.4f box %.4f)  lr %.5g  |g| %.3g  %.1f img/s  ETA %s",
                         current, tcfg.max_steps, history["loss"], history.get("cls_loss", math.nan),
                         history.get("box_loss", math.nan), lr, history.get("grad_norm", math.nan), rate,
                         time.strftime("%H:%M:%S", time.gmtime(eta)))
            curves.append(current, time.time() - t_start - eval_time, lr=lr, images_per_sec=rate,
                          **{k: history[k] for k in ("loss", "cls_loss", "box_loss") if k in history})
            if writer:
                with writer.as_default(step=current):
                    for name, value in history.items():
                        tf.summary.scalar(name, value)
                    tf.summary.scalar("learning_rate", lr)
                    tf.summary.scalar("images_per_sec", rate)
                    tf.summary.scalar("skipped_steps", skipped)
                writer.flush()
            t_log, images_since_log = now, 0
        if current % tcfg.checkpoint_every_steps == 0 or current == tcfg.max_steps or stop.signum:
            _save(manager, current)
        if current == start_step + 1:
            t_warm = time.time()  # throughput excludes the first step (tracing, graph build)
        if tcfg.eval_every_steps and current % tcfg.eval_every_steps == 0 and is_chief:
            t_eval = time.time()
            metrics = _evaluate_and_log(cfg, model, anchors, eval_writer, current)
            headline = {k: v for k, v in metrics.items() if k != "per_class"}
            logging.info("step %d eval: %s", current, headline)
            curves.append(current, t_eval - t_start - eval_time, eval=headline)
            eval_time += time.time() - t_eval
        if stop.signum:
            status = "interrupted"
            logging.warning("%s: saved %s at step %d; rerun the same command to resume",
                            signal.Signals(stop.signum).name, manager.latest_checkpoint, current)
            break
    train_seconds = time.time() - t_start - eval_time
    timed_steps = int(step.numpy()) - start_step - 1
    images_per_sec = None
    if timed_steps > 0:
        images_per_sec = round(timed_steps * tcfg.batch_size / max(time.time() - t_warm - eval_time, 1e-9), 2)

    if not is_chief:
        shutil.rmtree(write_dir, ignore_errors=True)
    # BN moving statistics follow each worker's own data; the trainable weights must agree.
    weights_digest = float(sum(np.sum(np.abs(w.numpy())) for w in model.trainable_weights))
    last_loss = history["loss"] if math.isfinite(history["loss"]) else None
    result = {"step": int(step.numpy()), "loss": last_loss, "status": status,
              "steps_this_run": int(step.numpy()) - start_step, "skipped_steps": skipped,
              "train_seconds": round(train_seconds, 2), "images_per_sec": images_per_sec,
              "worker": worker, "weights_l1": weights_digest}
    if stop.signum:
        result["signal"] = signal.Signals(stop.signum).name
    if is_chief:
        with open(os.path.join(model_dir, "train_result.json"), "w") as f:
            json.dump(result, f)
    return result
