"""A training run's folder: its files, one live owner, the checkpoint to resume from, the config it was made with.

The one module that knows the folder's file names (``CONFIG_FILE``, ``FLAGS_FILE``,
``TRAIN_RESULT_FILE``, ``ckpt-N``) and reads and writes them:
- ``write_config`` / ``load_config``: ``config.json`` and the re-runnable ``flags.cfg``;
  ``write_train_result`` / ``read_train_result``: the training tool's result line.
- ``restore_model``: the run's network with the newest readable (or a named) checkpoint.

- ``RunLock``: an exclusive ``flock`` on ``model_dir/.lock``. The kernel drops it when the owner
  dies in any way (crash, SIGKILL, lost session), so a dead trainer never leaves it stuck; a second
  live trainer gets ``RunDirError`` naming the owner's pid, host and start time.
- ``resume_candidates``: the complete checkpoints of the folder, newest first, found from the
  files themselves (``ckpt-N.index`` plus every data shard it names), so a deleted or stale
  ``checkpoint`` index file never makes a rerun start over on top of them.
- ``check_config``: a relaunch may change how long and how often the run trains, evaluates and
  saves, but not what it computes, unless the caller allows it.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import re
import shutil
import socket
import time
from typing import Callable, Dict, List, NamedTuple, Sequence

import numpy as np
from absl import logging

from scratchdet_tf import config as config_lib
from scratchdet_tf.config import flagfile

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
FLAGS_FILE = "flags.cfg"  # the same config as a flagfile: --flagfile=<run>/flags.cfg re-runs it
TRAIN_RESULT_FILE = "train_result.json"
BEST_DIR = "best"  # the best checkpoint by validation metric: a run folder of its own (training/best.py)
# Settings a resumed run may change without asking: the schedule's length, logging and saving cadence,
# evaluation and export settings. Everything else changes what the run computes.
RESUMABLE_CHANGES = frozenset({
    "train.max_steps", "train.checkpoint_every_steps", "train.eval_every_steps", "train.log_every_steps",
    "train.keep_checkpoints", "train.max_bad_steps", "train.patience",
})
RESUMABLE_SECTIONS = ("eval", "export")
_CKPT = re.compile(r"^ckpt-(\d+)\.index$")


class RunDirError(OSError):
    """The run folder cannot be used as asked (owned by another trainer, unreadable, ambiguous).

    An ``OSError``, so tools that report file problems in one line report these the same way.
    """


class RunLock:
    """Context manager holding the exclusive lock of ``model_dir`` (created if needed)."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._file = None
        self._created = False

    def __enter__(self) -> RunLock:
        if os.path.exists(self.model_dir) and not os.path.isdir(self.model_dir):
            raise RunDirError(f"--model_dir {self.model_dir!r} exists and is not a folder")
        try:
            self._created = not os.path.isdir(self.model_dir)
            os.makedirs(self.model_dir, exist_ok=True)
            handle = open(self.path, "a+")
        except OSError as err:
            raise RunDirError(f"cannot use --model_dir {self.model_dir!r}: {err.strerror or err}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise RunDirError(f"{self.model_dir!r} is in use by another trainer ({owner}); wait for it to end or "
                              "use another --model_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())}\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
            if self._created and os.listdir(self.model_dir) == [LOCK_FILE]:  # a new run that wrote nothing
                shutil.rmtree(self.model_dir, ignore_errors=True)


def _shards_present(prefix: str) -> bool:
    """Whether every data shard of a checkpoint exists (``<prefix>.data-<i>-of-<n>``, i < n)."""
    shards = glob.glob(glob.escape(prefix) + ".data-*-of-*")
    if not shards:
        return False
    total = int(shards[0].rsplit("-of-", 1)[1])
    return len(shards) == total


def resume_candidates(model_dir: str) -> List[str]:
    """Checkpoint prefixes in ``model_dir`` with an index and all data shards, newest step first."""
    if not os.path.isdir(model_dir):
        return []
    found = []
    for name in os.listdir(model_dir):
        match = _CKPT.match(name)
        prefix = os.path.join(model_dir, name[: -len(".index")])
        if match and os.path.isfile(os.path.join(model_dir, name)) and _shards_present(prefix):
            found.append((int(match.group(1)), prefix))
    return [prefix for _, prefix in sorted(found, reverse=True)]


def restore_first_readable(prefixes: Sequence[str], restore: Callable[[str], object], model_dir: str) -> str:
    """Calls ``restore(prefix)`` on each prefix in turn until one reads; returns that prefix.

    A checkpoint whose files are truncated or corrupt (TF raises ``IndexError`` "Read less bytes
    than requested", ``DataLossError`` for a bad checksum, ...) is skipped with a warning naming it.
    Any other error (a checkpoint of another model) propagates: that is not a damaged file.

    Raises:
      RunDirError: no prefix could be read, listing each with its reason.
    """
    import tensorflow as tf  # only restoring needs it

    damaged = (IndexError, tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.NotFoundError)
    failures = []
    for prefix in prefixes:
        try:
            restore(prefix)
            return prefix
        except damaged as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            logging.warning("checkpoint %s is unreadable (%s); trying the previous one", prefix, reason)
            failures.append(f"{os.path.basename(prefix)}: {reason}")
    raise RunDirError(f"no readable checkpoint in {model_dir!r} ({'; '.join(failures)}); nothing was changed")


def restore_newest(checkpoint, model_dir: str) -> str | None:
    """Restores a ``tf.train.Checkpoint`` from the newest complete, readable checkpoint of ``model_dir``.

    The ``checkpoint`` index file is not trusted: the candidates are the checkpoint files themselves.
    A truncated or corrupt one is skipped with a warning naming it.

    Returns:
      The prefix restored; None if ``model_dir`` has no checkpoint.

    Raises:
      RunDirError: checkpoints exist but none can be read (nothing is touched).
    """
    import tensorflow as tf  # only restoring needs it

    candidates = resume_candidates(model_dir)
    if not candidates:
        return None
    indexed = tf.train.latest_checkpoint(model_dir)
    if indexed != candidates[0]:
        logging.warning("%s's checkpoint index names %s, but the newest complete checkpoint is %s; resuming "
                        "from the files", model_dir, indexed, candidates[0])
    return restore_first_readable(
        candidates, lambda prefix: checkpoint.restore(prefix).assert_existing_objects_matched(), model_dir)


def save_checkpoint(manager, step: int) -> str:
    """``manager.save`` (a ``tf.train.CheckpointManager``) at ``step``; a failed save leaves no partial files.

    Raises:
      RunDirError: naming the checkpoint and the reason (disk full, read-only); earlier checkpoints are intact.
    """
    import tensorflow as tf  # only saving needs it

    prefix = os.path.join(manager.directory, f"ckpt-{step}")
    try:
        return manager.save(checkpoint_number=step)
    except (OSError, tf.errors.OpError) as err:
        remove_partial_save(prefix)
        reason = getattr(err, "strerror", None) or getattr(err, "message", None) or str(err)
        # TF's op errors read "{{function_node ...}} <temp file>; No space left on device [Op:SaveV2]".
        reason = re.sub(r"\s*\[Op:\w+\]", "", reason.strip().splitlines()[0]).rstrip("; ").split("; ")[-1]
        raise RunDirError(f"could not save checkpoint {prefix}: {reason}; the earlier checkpoints are intact") from None


def remove_partial_save(prefix: str) -> None:
    """Removes what an interrupted save of ``prefix`` left (TF writes ``<prefix>_temp/`` first)."""
    for leftover in glob.glob(glob.escape(prefix) + "_temp*"):
        shutil.rmtree(leftover, ignore_errors=True) if os.path.isdir(leftover) else os.remove(leftover)


def config_differences(old: Dict, new: Dict) -> List[str]:
    """``section.name: old -> new`` for every setting that differs between two ``config.to_dict`` trees."""
    out = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section, {}), new.get(section, {})
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                out.append(f"{section}.{name}: {a.get(name)!r} -> {b.get(name)!r}")
    return out


def check_config(model_dir: str, cfg: config_lib.Config, allow_change: bool = False) -> None:
    """Refuses a relaunch that would replace ``model_dir/config.json`` by a different computation.

    Raises:
      config.ConfigError: naming the changed settings, unless ``allow_change`` (or only the
        ``RESUMABLE_CHANGES`` / eval / export settings changed, or there is no config yet).
      RunDirError: the existing ``config.json`` is unreadable.
    """
    path = os.path.join(model_dir, CONFIG_FILE)
    if allow_change or not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError) as err:
        raise RunDirError(f"{path} is unreadable ({err}); fix or remove it, or use another --model_dir") from None
    new = json.loads(json.dumps(config_lib.to_dict(cfg)))  # tuples as the file has them: lists
    changed = [d for d in config_differences(old, new)
               if d.split(":")[0] not in RESUMABLE_CHANGES and d.split(".")[0] not in RESUMABLE_SECTIONS]
    if not old.get("data", {}).get("class_names"):  # runs made before the names were stored took the data's too
        changed = [d for d in changed if not d.startswith("data.class_names:")]
    if changed:
        raise config_lib.ConfigError(
            f"{model_dir!r} holds a run with another configuration ({'; '.join(changed)}); use another --model_dir, "
            "or pass --allow_config_change to continue it with the new one")


# --- the run's files ---


def write_config(cfg: config_lib.Config, model_dir: str) -> None:
    """Writes ``config.json`` and the re-runnable ``flags.cfg`` into ``model_dir``."""
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, CONFIG_FILE), "w") as f:
        json.dump(config_lib.to_dict(cfg), f, indent=2)
        f.write("\n")
    with open(os.path.join(model_dir, FLAGS_FILE), "w") as f:
        f.write(flagfile.text(cfg))


def has_config(model_dir: str) -> bool:
    """Whether ``model_dir`` holds a run's ``config.json``."""
    return os.path.isfile(os.path.join(model_dir, CONFIG_FILE))


def load_config(model_dir: str) -> config_lib.Config:
    """The ``config.json`` a training run wrote into ``model_dir``.

    Raises:
      FileNotFoundError: naming the missing file.
    """
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {model_dir!r} a training model_dir?")
    with open(path) as f:
        return config_lib.from_dict(json.load(f))


def write_train_result(model_dir: str, result: Dict) -> None:
    """Writes the training result (``train_lib.train``'s return value) as ``train_result.json``."""
    with open(os.path.join(model_dir, TRAIN_RESULT_FILE), "w") as f:
        json.dump(result, f)


def read_train_result(model_dir: str) -> Dict | None:
    """``train_result.json`` of a run; None if the run has not written one."""
    path = os.path.join(model_dir, TRAIN_RESULT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# --- reading a run's model back ---


class Restored(NamedTuple):
    cfg: config_lib.Config
    model: object  # keras.Model
    anchors: np.ndarray  # float32 [A, 4] normalized yxyx, in the model's prediction order
    checkpoint: str  # the checkpoint prefix that was read
    step: int


def checkpoint_step(prefix: str) -> int:
    """The step number in a CheckpointManager prefix such as ``.../ckpt-500``."""
    tail = os.path.basename(prefix).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def restore_model(model_dir: str, checkpoint: str | None = None, cfg: config_lib.Config | None = None
                  ) -> Restored:
    """Builds the run's model and reads its weights (optimizer and iterator state are skipped).

    Args:
      model_dir: a training run's folder (config.json + checkpoints).
      checkpoint: a checkpoint prefix; default: the newest in ``model_dir``.
      cfg: use this config instead of ``model_dir/config.json``.

    Without ``checkpoint``, the newest complete checkpoint on disk is read (the ``checkpoint``
    index file is not needed); a truncated or corrupt one is skipped with a warning naming it.

    Raises:
      FileNotFoundError: no config or no checkpoint, naming the folder.
      RunDirError: checkpoints exist but none is readable, or the named one is not.
    """
    import tensorflow as tf  # reading the files above needs no TensorFlow

    from scratchdet_tf.models import ssd

    cfg = cfg or load_config(model_dir)
    candidates = [checkpoint] if checkpoint else resume_candidates(model_dir)
    if not candidates:
        raise FileNotFoundError(f"no checkpoint in {model_dir!r}")
    model = ssd.build_model(cfg.model, cfg.anchors)
    checkpoint = restore_first_readable(
        candidates, lambda prefix: tf.train.Checkpoint(model=model).read(prefix).expect_partial(), model_dir)
    anchors = ssd.model_anchors(model, cfg.anchors, cfg.model.image_size)
    return Restored(cfg, model, anchors, checkpoint, checkpoint_step(checkpoint))
