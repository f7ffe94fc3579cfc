"""Which class names a run's model predicts: the one lookup from a config.

``data.class_names`` when set, else the names of the training source (read from its annotation
files or TFDS metadata, no images), else ``class_1`` .. ``class_C`` (``unnamed``) with a warning.
An export stores the result (``export/info.py`` reads it back from an export).
"""

from __future__ import annotations

from typing import Tuple

from absl import logging

from scratchdet_tf.data import readers


def unnamed(num_classes: int) -> Tuple[str, ...]:
    """``class_1`` .. ``class_C``: the names of a model whose classes are not known."""
    return tuple(f"class_{k + 1}" for k in range(num_classes))


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
