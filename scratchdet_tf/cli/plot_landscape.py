"""Plots the optimization landscape of training runs (paper Figures 1 and 7) into one PNG.

    python tools/plot_landscape.py --runs=runs/table1_mini/table1_none_lr0.001,runs/table1_mini/table1_both_lr0.01 \
        --labels="no BN lr 0.001,BN both lr 0.01" --out=docs/landscape_mini.png

    python tools/plot_landscape.py --runs=runs/table1_seeds/table1_none_lr0.001,runs/table1_seeds/table1_both_lr0.05 \
        --labels="no BN lr 0.001,BN both lr 0.05" --out=docs/landscape_seeds.png

Three panels from each run's TensorBoard scalars (<run>/train): training loss, gradient L2 norm, and the
gradient-norm fluctuation smoothed by a debiased exponential moving average (--smoothing). Diverged runs
end where they diverged (marked x). A --runs folder holding seed<k> run folders (a cell of
tools/ablate.py --seeds=n) draws each seed thin and semi-transparent and the mean over the seeds that logged
each step thick, labelled "<label> (mean of n seeds)". Last line: one JSON object {"out": ..., "runs": n}.
"""

import json
import sys

from absl import app, flags

from scratchdet_tf import landscape
from scratchdet_tf.cli import config_flags

flags.DEFINE_list("runs", None, "Training model_dirs, or grid cell folders of seed<k> runs (drawn as their "
                  "mean curve), comma-separated.", required=True)
flags.DEFINE_list("labels", [], "Legend labels, one per run (default: the folder names).")
flags.DEFINE_string("out", None, "PNG to write.", required=True)
flags.DEFINE_float("smoothing", 0.9, "EMA factor in [0, 1) for the fluctuation panel.")
flags.DEFINE_bool("log_scale", True, "Logarithmic y axes.")
flags.DEFINE_string("title", "", "Figure title.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.labels and len(FLAGS.labels) != len(FLAGS.runs):
        raise app.UsageError(f"{len(FLAGS.labels)} --labels for {len(FLAGS.runs)} --runs")
    labels = FLAGS.labels or [None] * len(FLAGS.runs)
    try:
        runs = [landscape.load_run(path, label) for path, label in zip(FLAGS.runs, labels)]
        out = landscape.plot_landscape(runs, FLAGS.out, smoothing=FLAGS.smoothing, log_scale=FLAGS.log_scale,
                                       title=FLAGS.title)
    except (OSError, ValueError) as e:
        sys.exit(f"plot_landscape.py: error: {e}")
    print(json.dumps({"out": out, "runs": len(runs)}))


def run():
    """``scratchdet plot_landscape`` and ``python tools/plot_landscape.py``."""
    config_flags.run_main(main, __doc__)


if __name__ == "__main__":
    run()
