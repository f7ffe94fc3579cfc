"""Which classes a run detects: taken from the training data, checked against the config.

``resolve(cfg)`` is called when training starts: it reads the training source's class names (annotation
files or TFDS metadata, no images), fills ``model.num_classes`` (0 = from the data) and stores the
names in ``data.class_names``, so that the run's ``config.json`` names its classes and evaluation,
export and the ``Detector`` need no data. A config that disagrees with the data is an error before
anything is trained.

``for_config(cfg)`` gives a config's names: ``data.class_names`` when set (every run trained since the
names are stored), else the training source's, else ``class_1`` .. ``class_C`` (``unnamed``) with a
warning. An export stores the result (``export/info.py`` reads it back from an export).
"""

from __future__ import annotations

from typing import Tuple

from absl import logging

from scratchdet_tf import config as config_lib
from scratchdet_tf.data import readers


def unnamed(num_classes: int) -> Tuple[str, ...]:
    """``class_1`` .. ``class_C``: the names of a model whose classes are not known."""
    return tuple(f"class_{k + 1}" for k in range(num_classes))


def resolve(cfg: config_lib.Config, *, check_val: bool = False) -> config_lib.Config:
    """``cfg`` with ``model.num_classes`` and ``data.class_names`` taken from its training source.

    Args:
      cfg: a run's config; ``model.num_classes`` 0 means "as many as the data has", and a given
        ``data.class_names`` is the fixed class list the data must use (see ``readers.read``).
      check_val: also check that ``data.val_source`` has the same classes (periodic evaluation).

    Returns:
      The config with both set (unchanged when they already agree with the data).

    Raises:
      config.ConfigError: ``model.num_classes`` is set and differs from the data's count, or the
        validation source has other classes; the message names the source and both lists.
      ValueError / FileNotFoundError: the source cannot be read, or its classes differ from a given
        ``data.class_names`` (a VOC object outside that list is reported when the data is read, before the
        first step, naming the class and the file).
    """
    data = cfg.data
    names = tuple(readers.source_info(data.train_source, tfds_data_dir=data.tfds_data_dir,
                                      class_names=data.class_names).class_names)
    _check_names(names, data.train_source)
    given = cfg.model.num_classes
    if given and given != len(names):
        raise config_lib.ConfigError(
            f"--model.num_classes={given} but the training data {data.train_source!r} has {len(names)} classes "
            f"({_shown(names)}); set --model.num_classes={len(names)}, or 0 to take it from the data")
    if check_val and data.val_source:
        _, val_info = readers.read(data.val_source, tfds_data_dir=data.tfds_data_dir, training=False, decode=False,
                                   class_names=names)
        if tuple(val_info.class_names) != names:  # readers raise first for most sources; TFDS metadata may not
            raise config_lib.ConfigError(
                f"the validation data {data.val_source!r} has classes ({_shown(val_info.class_names)}) but the "
                f"training data {data.train_source!r} has ({_shown(names)})")
    return config_lib.replace(cfg, model__num_classes=len(names), data__class_names=names)


def for_config(cfg) -> Tuple[str, ...]:
    """The C = ``cfg.model.num_classes`` class names of a run's config, in label order (see the module doc)."""
    if cfg.data.class_names:
        return tuple(cfg.data.class_names)
    try:
        names = tuple(readers.source_info(cfg.data.train_source, tfds_data_dir=cfg.data.tfds_data_dir).class_names)
        if len(names) == cfg.model.num_classes:
            return names
        logging.warning("%r has %d classes, the model %d; using class_1..class_%d", cfg.data.train_source,
                        len(names), cfg.model.num_classes, cfg.model.num_classes)
    except (OSError, ValueError, ImportError) as err:
        logging.warning("class names of %r unavailable (%s); using class_1..class_%d",
                        cfg.data.train_source, err, cfg.model.num_classes)
    return unnamed(cfg.model.num_classes)


def _check_names(names, source: str) -> None:
    """Names a run can store and report by: distinct (results are keyed by name), non-empty, and expressible
    in flag text (``flags.cfg`` lists them comma-separated)."""
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise config_lib.ConfigError(f"{source!r} names classes more than once: {duplicates}; class names must "
                                     "be distinct")
    bad = [n for n in names if not n or "," in n or "\n" in n or n != n.strip()]
    if bad:
        raise config_lib.ConfigError(f"{source!r} has class names a run cannot store: {bad} (empty, with a comma "
                                     "or a newline, or with spaces around them); rename them in the data")


def _shown(names, limit: int = 12) -> str:
    more = f", ... {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
