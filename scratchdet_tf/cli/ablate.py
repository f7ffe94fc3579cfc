"""Runs a paper ablation grid (Table 1 or Table 2): trains and evaluates every cell, writes a Markdown table.

    python tools/ablate.py --grid=table1 --steps=300 --out_dir=runs/table1_mini \
        --data.train_source=shapes:data/shapes --data.val_source=shapes:data/shapes --model.num_classes=5 \
        --model.width=0.125 --model.image_size=128 --train.batch_size=16 --anchors.steps=

Every cell is its flagfile in configs/ablations/ with the dotted config flags given here applied after it
and --train.max_steps=<steps>; it trains in <out_dir>/<cell>. A cell whose folder already holds its
result is reused, so an interrupted grid resumes. Writes <out_dir>/<grid>.md and <grid>.json; the last
line is one JSON object {"grid", "markdown", "json", "cells", "diverged", "seconds"}.
"""

import json
import sys

from absl import app, flags, logging

from scratchdet_tf import ablation, config
from scratchdet_tf.cli import config_flags

FLAGS = flags.FLAGS
config_flags.define_flags(FLAGS)
flags.DEFINE_enum("grid", None, ["table1", "table2"], "Which grid: table1 (BN x lr) or table2 (ResNet-18 roots).",
                  required=True)
flags.DEFINE_integer("steps", None, "Training steps of every cell (--train.max_steps).", required=True)
flags.DEFINE_string("out_dir", None, "Each cell trains in <out_dir>/<cell>; the tables go here.", required=True)
flags.DEFINE_list("cells", [], "Run only these cells (flagfile stems, e.g. table1_none_lr0.05).")
flags.DEFINE_string("config_dir", ablation.ABLATION_DIR, "Folder of the cells' flagfiles.")
flags.DEFINE_string("train_eval_source", "", "Also evaluate each cell on these (training) images, e.g. "
                    "shapes:data/shapes:train; adds a train-set mAP column.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    try:
        report = ablation.run_grid(FLAGS.grid, FLAGS.out_dir, steps=FLAGS.steps,
                                   overrides=config_flags.given_config_args(FLAGS), config_dir=FLAGS.config_dir,
                                   only=FLAGS.cells,
                                   train_eval_source=FLAGS.train_eval_source)
    except (config.ConfigError, flags.Error, OSError, ValueError) as e:
        sys.exit(f"ablate.py: error: {e}")
    with open(report["markdown"]) as f:
        print(f.read())
    print(json.dumps({"grid": report["grid"], "markdown": report["markdown"], "json": report["json"],
                      "cells": len(report["rows"]),
                      "diverged": [row["name"] for row in report["rows"] if row["status"] == "diverged"],
                      "seconds": report["seconds"]}))


def run():
    """``scratchdet ablate`` and ``python tools/ablate.py``."""
    config_flags.run_main(main, __doc__)


if __name__ == "__main__":
    run()
