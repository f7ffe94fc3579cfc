"""Trains a ScratchDet/SSD detector.

    python tools/train.py --flagfile=configs/scratchdet300_r34_voc07.cfg --model_dir=runs/r34_voc07

Resumes from the newest readable checkpoint in --model_dir (one trainer per folder: a second launch
exits 1 naming the owner). SIGTERM / SIGINT: the current step ends, a checkpoint is saved at it, exit
status 128 + the signal number; rerun the same command to resume. Last line: one JSON object
{"step": ..., "loss": ..., "status": "finished" | "early_stopped" | "diverged" | "interrupted", ...,
"best": {...} with periodic evaluation}; exit status 0 when finished or stopped early (--train.patience),
1 when diverged or on a user error (one line, FATAL ...).
"""

import json
import signal
import sys

from absl import flags, logging

from scratchdet_tf.cli import config_flags
from scratchdet_tf.training import train_lib

FLAGS = flags.FLAGS
config_flags.define_flags(FLAGS)
flags.DEFINE_string("model_dir", None, "Where checkpoints, logs, config.json and flags.cfg go.", required=True)
flags.DEFINE_bool("allow_config_change", False, "Continue a run in --model_dir with a configuration that changes "
                  "what it computes (anything but its length, logging, saving, evaluation and export settings).")


def main(argv):
    del argv
    cfg = config_flags.config_or_exit(FLAGS)
    logging.set_verbosity(logging.INFO)
    try:
        result = train_lib.train(cfg, FLAGS.model_dir, allow_config_change=FLAGS.allow_config_change)
    except (ValueError, OSError) as e:  # user errors (config, data, run folder; each names its culprit): one line
        sys.stderr.write(f"FATAL {type(e).__name__}: {e}\n")
        sys.exit(1)
    if result["status"] == "diverged":
        print(f"diverged at step {result['step']}", file=sys.stderr)
    print(json.dumps(result))
    if result["status"] == "interrupted":  # the shell's convention for a process ended by a signal
        sys.exit(128 + getattr(signal, result["signal"]))
    if result["status"] not in ("finished", "early_stopped"):
        sys.exit(1)


def run():
    """``scratchdet train`` and ``python tools/train.py``."""
    config_flags.run_main(main, __doc__)


if __name__ == "__main__":
    run()
