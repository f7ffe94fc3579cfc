"""The ``tf.distribute`` plumbing of training: which strategy, which worker, how a batch splits over replicas."""

from __future__ import annotations

import functools
from typing import Tuple

import tensorflow as tf

from scratchdet_tf import config as config_lib


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


def worker_of(strategy: tf.distribute.Strategy) -> Tuple[int, int]:
    """(worker index, number of workers) of this process; worker 0 is the chief."""
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


def split_for_replicas(strategy: tf.distribute.Strategy, batch, local_replicas: int):
    """A worker's host batch (a nest of [local_replicas * b, ...] tensors) as per-replica values of [b, ...]."""
    def value_fn(ctx):
        index = ctx.replica_id_in_sync_group % local_replicas
        return tf.nest.map_structure(lambda t: tf.split(t, local_replicas)[index], batch)

    return strategy.experimental_distribute_values_from_function(value_fn)


def sum_over_replicas(strategy: tf.distribute.Strategy, values: dict) -> dict:
    """{name: per-replica scalar} -> {name: the sum over replicas}."""
    return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in values.items()}
