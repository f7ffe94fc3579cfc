"""Runs a paper ablation grid (Table 1 or Table 2) over seeds: trains and evaluates every run, writes a Markdown table.

    python tools/ablate.py --grid=table2 --steps=300 --seeds=2 --key_seeds=3 --size_metrics \
        --out_dir=runs/table2_mini --data.train_source=shapes:data/shapes --data.val_source=shapes:data/shapes \
        --model.num_classes=5 --model.width=0.125 --model.image_size=128 --train.batch_size=16 --anchors.steps=

Every cell is its flagfile in configs/ablations/ with the dotted config flags given here applied after it
and --train.max_steps=<steps>. Each cell runs --seeds seeds (--train.seed=0..seeds-1; the key cells, on
which the paper's claims rest, max(--seeds, --key_seeds)), each in <out_dir>/<cell>/seed<k>. A run whose
folder already holds its result is reused, so an interrupted grid resumes. --size_metrics also scores
every finished run with the COCO metric on the validation source (AP_S / AP_M / AP_L columns; a shapes:
or coco: source is scored against its instances JSON). Writes <out_dir>/<grid>.md (one row per cell:
mean ± sample sd [min–max] over the finished runs, diverged runs with their steps, the grid's cost in
minutes in the title) and <grid>.json (every run and every cell); the last line is one JSON object
{"grid", "markdown", "json", "cells", "runs", "seeds", "diverged", "seconds", "minutes"}.
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
flags.DEFINE_integer("seeds", 1, "Runs per cell, with --train.seed=0..seeds-1.", lower_bound=1)
flags.DEFINE_integer("key_seeds", 0, "Runs per key cell (the ones the paper's claims rest on), if more than "
                     "--seeds.", lower_bound=0)
flags.DEFINE_bool("size_metrics", False, "Also evaluate every finished run with the COCO metric on the "
                  "validation source: AP_S / AP_M / AP_L columns.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    try:
        report = ablation.run_grid(FLAGS.grid, FLAGS.out_dir, steps=FLAGS.steps,
                                   overrides=config_flags.given_config_args(FLAGS), config_dir=FLAGS.config_dir,
                                   only=FLAGS.cells, train_eval_source=FLAGS.train_eval_source,
                                   seeds=FLAGS.seeds, key_seeds=FLAGS.key_seeds, size_metrics=FLAGS.size_metrics)
    except (config.ConfigError, flags.Error, OSError, ValueError) as e:
        sys.exit(f"ablate.py: error: {e}")
    with open(report["markdown"]) as f:
        print(f.read())
    print(json.dumps({"grid": report["grid"], "markdown": report["markdown"], "json": report["json"],
                      "cells": len(report["rows"]), "runs": len(report["runs"]), "seeds": report["seeds"],
                      "diverged": [row["name"] for row in report["rows"] if row["diverged"]],
                      "seconds": report["seconds"], "minutes": report["minutes"]}))


def run():
    """``scratchdet ablate`` and ``python tools/ablate.py``."""
    config_flags.run_main(main, __doc__)


if __name__ == "__main__":
    run()
