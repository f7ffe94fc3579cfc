"""Exports a training run as a serving SavedModel (+ optional TFLite models).

    python tools/export.py --model_dir=runs/demo --export_dir=exports/demo/1 [--tflite=fp32,int8]
        [--calibration_source=shapes:data/shapes | --calibration_dir=DIR]

Config comes from <model_dir>/config.json; dotted flags given on the command line override it
(e.g. --export.max_detections=50 --eval.score_threshold=0.05; --tflite is --export.tflite).
int8 is calibrated on --export.num_calibration_images images of --calibration_source (a data URI,
default: the run's data.val_source) or of the image folder --calibration_dir.
Last line: {"export_dir": ..., "step": ..., "saved_model_bytes": ..., "tflite_bytes": {mode: n},
"tflite_failed": [modes]}. Each TFLite mode converts in a process of its own: one that fails or crashes
is reported on stderr, the SavedModel and the other modes are still written, and the exit status is 1.
"""

import json
import os
import sys

from absl import app, flags

from scratchdet_tf import config, run_dir
from scratchdet_tf.cli import config_flags
from scratchdet_tf.data import class_names as class_names_lib
from scratchdet_tf.export import calibration, info, saved_model, tflite

flags.DEFINE_string("model_dir", None, "Training run folder (config.json + checkpoints).")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix to export; default: the newest in --model_dir.")
flags.DEFINE_string("export_dir", None, "Output folder (a TF Serving version folder, e.g. exports/demo/1).")
flags.DEFINE_list("tflite", None, f"TFLite modes to write, any of {','.join(config.TFLITE_MODES)} (= --export.tflite).")
flags.DEFINE_enum("tflite_nms", "fast", ["fast", "regular"],
                  "TFLite NMS: fast (class-agnostic, any thread count) or regular (per class, as the SavedModel; "
                  "LiteRT computes it correctly only with 1 thread or >= num_classes threads).")
flags.DEFINE_string("calibration_source", None, "int8 calibration data URI (default: the run's data.val_source).")
flags.DEFINE_string("calibration_dir", None, "int8 calibration from a folder of images instead.")
FLAGS = flags.FLAGS
config_flags.define_flags(FLAGS)


def _calibration_images(cfg: config.Config):
    folder, source = FLAGS.calibration_dir, FLAGS.calibration_source or cfg.data.val_source
    if folder and not os.path.isdir(folder):
        raise FileNotFoundError(f"--calibration_dir={folder} is not a folder")

    def images():
        if folder:
            return calibration.folder_images(folder)
        return calibration.source_images(source, cfg.data.tfds_data_dir)

    return calibration.representative_images(images, cfg.model.image_size, cfg.export.num_calibration_images)


def _saved_model_bytes(export_dir: str) -> int:
    """Bytes of saved_model.pb, variables/ and assets/ (what TF Serving loads)."""
    total = os.path.getsize(os.path.join(export_dir, "saved_model.pb"))
    for part in ("variables", "assets"):
        for root, _, names in os.walk(os.path.join(export_dir, part)):
            total += sum(os.path.getsize(os.path.join(root, name)) for name in names)
    return total


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.model_dir or not FLAGS.export_dir:
        raise app.UsageError("--model_dir and --export_dir are required")
    try:
        cfg = config_flags.run_config(FLAGS.model_dir, FLAGS)
        if FLAGS.tflite is not None:
            cfg = config.replace(cfg, export__tflite=tuple(FLAGS.tflite))
        restored = run_dir.restore_model(FLAGS.model_dir, FLAGS.checkpoint, cfg)
    except (OSError, ValueError) as err:  # missing or unreadable run, bad config: one line
        sys.exit(f"export.py: error: {err}")
    written = saved_model.export_saved_model(restored.model, restored.anchors, cfg, FLAGS.export_dir,
                                             class_names_lib.for_config(cfg),
                                             checkpoint=restored.checkpoint, step=restored.step)
    saved_model_bytes = _saved_model_bytes(FLAGS.export_dir)
    print(f"SavedModel of {restored.checkpoint} (step {restored.step}): {FLAGS.export_dir} "
          f"({saved_model_bytes / 1e6:.1f} MB, {len(written['class_names'])} classes)")
    written = {}
    if cfg.export.tflite:
        try:
            representative = _calibration_images(cfg) if "int8" in cfg.export.tflite else None
            written = tflite.export_tflite(restored.model, restored.anchors, cfg, FLAGS.export_dir,
                                           cfg.export.tflite, representative,
                                           use_regular_nms=FLAGS.tflite_nms == "regular")
        except (OSError, ValueError) as err:
            sys.exit(f"export.py: error: TFLite export failed: {err}")
        for mode, entry in written.items():
            print(f"TFLite {mode}: {os.path.join(FLAGS.export_dir, entry['file'])} ({entry['bytes'] / 1e6:.2f} MB)")
    failed = info.read_info(FLAGS.export_dir).get("tflite_failed", {}) if cfg.export.tflite else {}
    for reason in failed.values():
        print(f"export.py: error: {reason}", file=sys.stderr)
    print(json.dumps({"export_dir": FLAGS.export_dir, "step": restored.step, "saved_model_bytes": saved_model_bytes,
                      "tflite_bytes": {mode: entry["bytes"] for mode, entry in written.items()},
                      "tflite_failed": sorted(failed)}))
    if failed:  # the SavedModel and the other files are written; the run still did not do all it was asked
        sys.exit(1)


def run():
    """``scratchdet export`` and ``python tools/export.py``."""
    config_flags.run_main(main, __doc__)


if __name__ == "__main__":
    run()
