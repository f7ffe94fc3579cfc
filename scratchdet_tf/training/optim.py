"""SGD with the paper's schedule (linear warm-up, multi-step decay) or cosine decay; Caffe-style coupled L2.

Weight decay is *coupled* (Caffe/PyTorch): the gradient gets ``wd * w`` before SGD momentum,
not Keras 3's decoupled ``weight_decay``. It is applied through the loss
(``0.5 * wd * sum(w^2)`` has gradient ``wd * w``), so it sees the same loss scaling and
replica/accumulation averaging as the data term. Scope as Caffe's (docs/PAPER.md#weight-decay): conv kernels
and backbone BN scale/shift decay; head BN and conv biases do not.
"""

from __future__ import annotations

import math
from typing import List, Sequence

import keras
import tensorflow as tf


def _warmup(step, warmup_steps: int, warmup_factor: float):
    """The linear warm-up multiplier: ``warmup_factor`` at step 0, 1 from ``warmup_steps`` on."""
    if not warmup_steps:
        return 1.0
    alpha = tf.minimum(step / warmup_steps, 1.0)
    return warmup_factor + (1.0 - warmup_factor) * alpha


@keras.saving.register_keras_serializable(package="scratchdet_tf")
class WarmupMultiStep(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step): linear warm-up from ``base * warmup_factor``, then ×``decay`` at each boundary.

    Caffe's "multistep" policy: lr = base * decay ** (number of boundaries <= step).
    """

    def __init__(self, base_lr: float, boundaries: Sequence[int], decay: float = 0.1,
                 warmup_steps: int = 0, warmup_factor: float = 1.0 / 3.0):
        self.base_lr = float(base_lr)
        self.boundaries = [int(b) for b in boundaries]
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        passed = tf.zeros([], tf.float32)
        for b in self.boundaries:
            passed += tf.cast(step >= b, tf.float32)
        return self.base_lr * tf.pow(self.decay, passed) * _warmup(step, self.warmup_steps, self.warmup_factor)

    def get_config(self):
        return {"base_lr": self.base_lr, "boundaries": self.boundaries, "decay": self.decay,
                "warmup_steps": self.warmup_steps, "warmup_factor": self.warmup_factor}


@keras.saving.register_keras_serializable(package="scratchdet_tf")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step): linear warm-up from ``base * warmup_factor`` to ``base``, then a half cosine from
    ``base`` down to ``base * final_factor`` at ``total_steps`` (held there after).

    The cosine starts where the warm-up ends: lr = f + (1 - f) * (1 + cos(pi * t)) / 2 times
    ``base``, t = (step - warmup_steps) / (total_steps - warmup_steps), f = ``final_factor``.
    """

    def __init__(self, base_lr: float, total_steps: int, final_factor: float = 0.01,
                 warmup_steps: int = 0, warmup_factor: float = 1.0 / 3.0):
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.final_factor = float(final_factor)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        span = max(self.total_steps - self.warmup_steps, 1)
        t = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
        f = self.final_factor
        lr = self.base_lr * (f + (1.0 - f) * 0.5 * (1.0 + tf.cos(math.pi * t)))
        return lr * _warmup(step, self.warmup_steps, self.warmup_factor)

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps, "final_factor": self.final_factor,
                "warmup_steps": self.warmup_steps, "warmup_factor": self.warmup_factor}


def learning_rate_schedule(train_cfg) -> keras.optimizers.schedules.LearningRateSchedule:
    """The schedule of a ``config.TrainConfig``: ``lr_schedule`` "multistep" (the paper) or "cosine"."""
    if train_cfg.lr_schedule == "cosine":
        return WarmupCosine(train_cfg.learning_rate, train_cfg.max_steps, train_cfg.lr_final_factor,
                            train_cfg.warmup_steps, train_cfg.warmup_factor)
    return WarmupMultiStep(train_cfg.learning_rate, train_cfg.lr_boundaries, train_cfg.lr_decay,
                           train_cfg.warmup_steps, train_cfg.warmup_factor)


class PreReducedSGD(keras.optimizers.SGD):
    """SGD fed gradients already summed over replicas: ``train_lib`` all-reduces once per step
    (it needs the global gradient for its norm), so Keras must not sum them again."""

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)


def build_optimizer(train_cfg) -> keras.optimizers.Optimizer:
    """SGD momentum on the schedule; wrapped in dynamic loss scaling for ``mixed_float16``."""
    sgd = PreReducedSGD(learning_rate_schedule(train_cfg), momentum=train_cfg.momentum, name="sgd")
    if train_cfg.mixed_precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(sgd)
    return sgd


def decayed_variables(model: keras.Model) -> List:
    """Variables under weight decay: conv kernels, and BN gamma/beta outside the head.

    Head BN scale/shift and conv biases are not decayed (docs/PAPER.md#weight-decay, Caffe ``decay_mult: 0``).
    """
    decayed = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            decayed.append(layer.kernel)
        elif isinstance(layer, keras.layers.BatchNormalization) and not layer.name.startswith("head_"):
            decayed += [w for w in (layer.gamma, layer.beta) if w is not None]
        elif layer.trainable_weights and not isinstance(layer, keras.layers.BatchNormalization):
            decayed += list(layer.trainable_weights)  # e.g. the L2Norm scale (Caffe default decay 1)
    return decayed


def l2_penalty(variables: Sequence, weight_decay: float):
    """0.5 * wd * sum(w^2), float32: its gradient is the coupled decay term wd * w."""
    if not weight_decay or not variables:
        return tf.zeros([], tf.float32)
    return 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables])
