"""``train(cfg, model_dir)``: the distributed custom training loop, top to bottom.

One step: every replica computes the gradient of its share of the MultiBox loss
(optionally XLA-compiled), normalized by the *global* number of positives; the
gradients are summed over replicas once; the global gradient norm decides whether the
update is applied (the divergence guard); then SGD applies it. Checkpoints hold the
model, optimizer, step and the input iterator, so a killed run resumes exactly.

Beside it: ``strategy`` (which devices, how a batch splits), ``progress`` (logging, timing,
curves), ``stop_signal`` (SIGTERM / SIGINT), ``run_dir`` (the folder's files and checkpoints);
periodic evaluation is ``evaluation.runner.evaluate_during_training``.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from typing import Dict

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.python.framework import config as tf_framework_config

from scratchdet_tf import config as config_lib
from scratchdet_tf import run_dir
from scratchdet_tf.data import class_names, pipeline
from scratchdet_tf.models import ssd
from scratchdet_tf.training import best as best_lib
from scratchdet_tf.training import finetune, losses, optim, progress, stop_signal
from scratchdet_tf.training import strategy as strategy_lib


def train(cfg: config_lib.Config, model_dir: str, *, allow_config_change: bool = False) -> Dict:
    """Trains until ``cfg.train.max_steps`` (resuming from ``model_dir``), divergence or SIGTERM/SIGINT.

    The chief holds ``model_dir``'s lock for the whole run (``run_dir.RunLock``). A relaunch resumes
    from the newest readable complete checkpoint (``run_dir.resume_candidates``), and may not change
    what the run computes unless ``allow_config_change`` (``run_dir.check_config``); nothing is
    written into ``model_dir`` before the config, the data source and the checkpoint have been read.
    SIGTERM or SIGINT (in the main thread) ends the run after the current step with a checkpoint at
    that step: status ``"interrupted"``, ``"signal"`` names it.

    The classes come from the training data (``class_names.resolve``: ``model.num_classes`` 0 is the
    data's count, and the names are stored in ``config.json``). With ``train.eval_every_steps`` the
    run evaluates on ``data.val_source`` every that many steps and at its last step, keeps the best
    checkpoint in ``model_dir/best/`` (``best``) and, with ``train.patience``, stops early
    (status ``"early_stopped"``). At the end the chief draws ``training_curves.png``.

    Returns:
      ``{"step", "loss", "status": "finished" | "diverged" | "interrupted" | "early_stopped",
      "train_seconds", ..., "best": {"step", "metric", "value", "dir"} (with periodic evaluation)}``.

    Raises:
      config.ConfigError: a bad setting, or a changed configuration of an existing run.
      run_dir.RunDirError: the folder is owned by another trainer, or no checkpoint in it is readable,
        or a checkpoint cannot be saved (the message says why; earlier checkpoints stay intact).
    """
    tcfg = cfg.train
    # --- setup: seeds, precision, devices; the chief owns model_dir ---
    keras.utils.set_random_seed(tcfg.seed)
    if tcfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    else:  # the setting is process-wide; an earlier deterministic run must not leak into this one
        # (TF 2.21 exports only the enable half; the disable half lives beside it.)
        tf_framework_config.disable_op_determinism()
    keras.mixed_precision.set_global_policy(tcfg.mixed_precision)
    strategy = strategy_lib.get_strategy(tcfg)
    worker, num_workers = strategy_lib.worker_of(strategy)
    is_chief = worker == 0
    num_replicas = strategy.num_replicas_in_sync
    local_replicas = num_replicas // num_workers
    replica_batch = strategy_lib.per_replica_batch_size(tcfg, num_replicas)  # ConfigError if it does not divide
    logging.info("%d replica(s) on %d worker(s): global batch %d = %d per replica x %d replicas x %d accumulation",
                 num_replicas, num_workers, tcfg.batch_size, replica_batch, num_replicas, tcfg.grad_accum_steps)
    if tcfg.patience and num_workers > 1:  # only the chief evaluates, so only it would know when to stop
        raise config_lib.ConfigError(f"--train.patience={tcfg.patience} is invalid: early stopping runs on one "
                                     "worker only (multi-worker runs keep the best checkpoint without it)")
    cfg = class_names.resolve(cfg, check_val=bool(tcfg.eval_every_steps) and worker == 0)  # the chief evaluates
    logging.info("%d classes: %s", cfg.model.num_classes, ", ".join(cfg.data.class_names))
    # The other workers write only their own scratch folders in it.
    with stop_signal.StopOnSignal() as stop, (run_dir.RunLock(model_dir) if is_chief else contextlib.nullcontext()):
        if is_chief:
            run_dir.check_config(model_dir, cfg, allow_config_change)

        # --- model, optimizer ---
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

        # --- checkpoint: resume, or start from --train.init_checkpoint's weights ---
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, iterator=iterator)
        write_dir = model_dir if is_chief else os.path.join(model_dir, f".worker{worker}")
        manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=tcfg.keep_checkpoints)
        latest = run_dir.restore_newest(checkpoint, model_dir)
        if latest:
            logging.info("resumed from %s at step %d", latest, int(step.numpy()))
        elif tcfg.init_checkpoint:
            # Weights only; an 81-class COCO model maps onto 21 VOC classes (docs/PAPER.md#coco-to-voc).
            init = finetune.load_init_checkpoint(model, tcfg.init_checkpoint, cfg)
            logging.info("initialized weights from %s", init)

        # --- step ---
        fp16 = tcfg.mixed_precision == "mixed_float16"

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

        def compute_gradients(iterator):
            per_replica = strategy_lib.split_for_replicas(strategy, next(iterator), local_replicas)
            grads, stats = strategy.run(replica_step, args=(per_replica,))
            return grads, strategy_lib.sum_over_replicas(strategy, stats)

        def apply_gradients(grads):
            def apply(g):
                optimizer.apply_gradients(zip([x / tcfg.grad_accum_steps for x in g], model.trainable_variables))

            strategy.run(apply, args=(grads,))
            return tf.constant(True)

        @tf.function
        def train_step(iterator):
            # One update in one graph call: the summed gradient of grad_accum_steps micro-batches, its
            # global norm, and the update unless the divergence guard skips it.
            grads, stats = compute_gradients(iterator)
            for _ in range(tcfg.grad_accum_steps - 1):
                more, more_stats = compute_gradients(iterator)
                grads = strategy.run(lambda a, b: [u + v for u, v in zip(a, b)], args=(grads, more))
                stats = {k: stats[k] + more_stats[k] for k in stats}
            stats = {k: v / tcfg.grad_accum_steps for k, v in stats.items()}
            # Every replica holds the same summed gradient; unscale fp16 and average accumulation.
            scale = tf.cast(optimizer.dynamic_scale, tf.float32) if fp16 else 1.0
            norms = strategy.run(lambda g: tf.linalg.global_norm(g) / (scale * tcfg.grad_accum_steps), args=(grads,))
            norm = strategy.reduce(tf.distribute.ReduceOp.MEAN, norms, axis=None)
            # The divergence guard: a non-finite step is not applied (fp16: the loss-scale optimizer
            # skips overflowing gradients and lowers its scale itself, so only the loss is checked).
            finite = tf.math.is_finite(stats["cls_loss"] + stats["box_loss"])
            if not fp16:
                finite = finite & tf.math.is_finite(norm)
            tf.cond(finite | fp16, lambda: apply_gradients(grads), lambda: tf.constant(False))
            step.assign_add(1)
            return stats, norm, finite

        if is_chief:  # config, data and checkpoint are read: now the run folder may be written
            run_dir.write_config(cfg, model_dir)
        previous = run_dir.read_train_result(model_dir)
        best = best_lib.BestCheckpoint(model_dir, cfg, model, step) if tcfg.eval_every_steps and is_chief else None
        finished = int(step.numpy()) >= tcfg.max_steps or (best is not None and best.patience_spent(int(step.numpy())))
        if finished and previous is not None:  # nothing left to train: report that run
            if int(step.numpy()) < tcfg.max_steps:
                logging.warning("%s stopped early at step %d (no better %s since step %d, --train.patience=%d); "
                                "raise the patience or delete the folder to train on", model_dir,
                                int(step.numpy()), best.metric, best.best["step"], tcfg.patience)
            return {**previous, "steps_this_run": 0}

        # --- loop ---
        start_step = int(step.numpy())
        report = progress.Progress(model_dir, start_step, tcfg, optimizer, is_chief=is_chief)
        eval_writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval")) if is_chief else None
        skipped, bad_in_a_row, status = 0, 0, "finished"
        while int(step.numpy()) < tcfg.max_steps:
            stats, norm, finite = train_step(iterator)
            stats, norm, finite = {k: float(v) for k, v in stats.items()}, float(norm), bool(finite)
            skipped, bad_in_a_row = (skipped, 0) if finite else (skipped + 1, bad_in_a_row + 1)
            current = int(step.numpy())
            if not finite:
                logging.warning("step %d: non-finite loss %s / gradient norm %s, update skipped (%d in a row)",
                                current, stats["cls_loss"] + stats["box_loss"], norm, bad_in_a_row)
            if bad_in_a_row >= tcfg.max_bad_steps:
                status = "diverged"
                logging.error("diverged at step %d: %d consecutive non-finite steps; last good checkpoint kept",
                              current, bad_in_a_row)
                break
            report.step_done(current, stats, norm, skipped)
            if current % tcfg.checkpoint_every_steps == 0 or current == tcfg.max_steps or stop.signum:
                run_dir.save_checkpoint(manager, current)
            if best is not None and (current % tcfg.eval_every_steps == 0 or current == tcfg.max_steps):
                with report.paused():
                    from scratchdet_tf.evaluation import runner  # evaluation is only needed when it is switched on

                    metrics = runner.evaluate_during_training(cfg, model, anchors, eval_writer, current,
                                                              output_dir=os.path.join(model_dir, "eval"))
                    report.eval_done(current, metrics)
                    best.update(current, metrics)
                if best.patience_spent(current) and current < tcfg.max_steps:
                    status = "early_stopped"
                    logging.warning("step %d: no better %s in the last %d evaluations (--train.patience); stopping "
                                    "with the best from step %d in %s", current, best.metric, tcfg.patience,
                                    best.best["step"], best.folder)
                    if run_dir.checkpoint_step(manager.latest_checkpoint or "") != current:
                        run_dir.save_checkpoint(manager, current)
                    break
            if stop.signum:
                status = "interrupted"
                logging.warning("%s: saved %s at step %d; rerun the same command to resume", stop.name,
                                manager.latest_checkpoint, current)
                break

        # --- result ---
        if not is_chief:
            shutil.rmtree(write_dir, ignore_errors=True)
        final_step = int(step.numpy())
        # BN moving statistics follow each worker's own data; the trainable weights must agree.
        weights_digest = float(sum(np.sum(np.abs(w.numpy())) for w in model.trainable_weights))
        result = {"step": final_step, "loss": report.last["loss"] if math.isfinite(report.last["loss"]) else None,
                  "status": status, "steps_this_run": final_step - start_step, "skipped_steps": skipped,
                  "train_seconds": round(report.train_seconds(), 2),
                  "images_per_sec": report.images_per_sec(final_step), "worker": worker,
                  "weights_l1": weights_digest}
        if stop.signum:
            result["signal"] = stop.name
        if best is not None and best.summary():
            result["best"] = best.summary()
        if is_chief:
            run_dir.write_train_result(model_dir, result)
            report.draw_curves(cfg)
        return result
