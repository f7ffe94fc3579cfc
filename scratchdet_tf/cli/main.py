"""``scratchdet <command> [flags]``: the console entry point over the same code as ``tools/<command>.py``.

    scratchdet train --flagfile=configs/shapes_demo.cfg --model_dir=runs/demo
    scratchdet eval --model_dir=runs/demo
    scratchdet --help
"""

from __future__ import annotations

import importlib
import sys

# command -> (module in scratchdet_tf.cli, one line of help)
COMMANDS = {
    "train": ("train", "train a detector (resumes from the newest checkpoint)"),
    "eval": ("eval", "evaluate a run, an export, or devkit/COCO result files"),
    "export": ("export", "write a SavedModel and TFLite files from a run"),
    "detect": ("detect", "draw detections of an export on images"),
    "benchmark": ("benchmark", "speed: targets, detect, infer, eval, input, train"),
    "demo": ("demo", "the synthetic-shapes demo: data, training, evaluation, export, drawings"),
    "make-shapes": ("make_shapes", "write the synthetic shapes dataset"),
    "model-summary": ("model_summary", "parameters, MACs and feature maps of a config's network"),
    "ablate": ("ablate", "run an ablation grid of the paper (table1, table2)"),
    "plot-landscape": ("plot_landscape", "draw the loss-landscape panels of training runs"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: scratchdet <command> [flags]   (scratchdet <command> --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    command = argv[1].replace("_", "-")
    if command not in COMMANDS:
        sys.stderr.write(f"scratchdet: unknown command {argv[1]!r}\n\n{usage()}\n")
        sys.exit(2)
    module = importlib.import_module(f"scratchdet_tf.cli.{COMMANDS[command][0]}")
    sys.argv = [f"scratchdet {command}", *argv[2:]]
    module.run()


if __name__ == "__main__":
    main()
