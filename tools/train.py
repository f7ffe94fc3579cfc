"""Trains a ScratchDet/SSD detector.

    python tools/train.py --flagfile=configs/scratchdet300_r34_voc07.cfg --model_dir=runs/r34_voc07

Resumes from the newest checkpoint in --model_dir. Last line: one JSON object
{"step": ..., "loss": ..., "status": "finished" | "diverged", ...}; exit status 1 when diverged.
"""

import json
import sys

import _bootstrap  # noqa: F401  (sys.path for a source checkout)

from absl import app, flags, logging

from scratchdet_tf import config, config_flags, train_lib

FLAGS = flags.FLAGS
config_flags.define_flags(FLAGS)
flags.DEFINE_string("model_dir", None, "Where checkpoints, logs, config.json and flags.cfg go.", required=True)


def main(argv):
    del argv
    cfg = config_flags.config_or_exit(FLAGS)
    logging.set_verbosity(logging.INFO)
    try:
        result = train_lib.train(cfg, FLAGS.model_dir)
    except (config.ConfigError, FileNotFoundError) as e:  # bad config combination or data: one clear line
        sys.stderr.write(f"FATAL {type(e).__name__}: {e}\n")
        sys.exit(1)
    if result["status"] == "diverged":
        print(f"diverged at step {result['step']}", file=sys.stderr)
    print(json.dumps(result))
    if result["status"] != "finished":
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: config_flags.parse_argv(argv, FLAGS))
