"""The demo: synthetic shapes data → train → evaluate → export a SavedModel → draw detections.

    python tools/demo.py --flagfile=configs/shapes_demo.cfg --model_dir=runs/shapes_demo

Writes the shapes dataset if its folder is missing, resumes training if --model_dir has a
checkpoint. Last line: {"mAP_07": ..., "mAP_area": ..., "train_seconds": ..., ...}.
"""

import glob
import json
import os
import sys
import time

from absl import flags, logging
from PIL import Image

from scratchdet_tf import plots, run_dir
from scratchdet_tf.cli import config_flags
from scratchdet_tf.data import shapes
from scratchdet_tf.detector import Detector
from scratchdet_tf.evaluation import runner
from scratchdet_tf.export import saved_model
from scratchdet_tf.training import losses, train_lib, training_log

FLAGS = flags.FLAGS
config_flags.define_flags(FLAGS)
flags.DEFINE_string("model_dir", "runs/shapes_demo", "Run folder: checkpoints, eval, export, drawings.")
flags.DEFINE_integer("num_drawn", 8, "Validation images to draw detections on.")
flags.DEFINE_float("target_map", 0.9, "mAP level whose first pass (in training seconds) the result reports.")


def main(argv):
    del argv
    cfg = config_flags.config_or_exit(FLAGS)
    logging.set_verbosity(logging.INFO)
    scheme, _, data_dir = cfg.data.train_source.partition(":")
    if scheme != "shapes":
        sys.exit(f"FATAL the demo trains on the synthetic data: --data.train_source=shapes:<dir>, got {scheme}:")
    if not os.path.isdir(os.path.join(data_dir, "train")):
        t = time.time()
        shapes.write_dataset(data_dir)
        logging.info("wrote the shapes dataset to %s in %.1f s", data_dir, time.time() - t)

    result = train_lib.train(cfg, FLAGS.model_dir)
    if result["status"] != "finished":
        print(json.dumps(result))
        sys.exit(1)

    restored = run_dir.restore_model(FLAGS.model_dir)
    t = time.time()
    metrics = runner.evaluate(cfg, restored.model, restored.anchors, output_dir=os.path.join(FLAGS.model_dir, "eval"),
                                step=restored.step)
    eval_seconds = time.time() - t

    export_dir = os.path.join(FLAGS.model_dir, "export")
    saved_model.export_saved_model(restored.model, restored.anchors, cfg, export_dir,
                                   checkpoint=restored.checkpoint, step=restored.step)
    detector = Detector.from_export(export_dir)
    drawn_dir = os.path.join(FLAGS.model_dir, "detections")
    os.makedirs(drawn_dir, exist_ok=True)
    for path in sorted(glob.glob(os.path.join(data_dir, "val", "*.jpg")))[:FLAGS.num_drawn]:
        Image.fromarray(detector.draw(path)).save(os.path.join(drawn_dir, os.path.basename(path)[:-4] + ".png"))

    # Learning curves: the periodic evaluations during training, then the final one at the last step.
    records = training_log.read(FLAGS.model_dir)
    if not any(r["step"] == restored.step and "eval" in r for r in records):
        records.append({"step": restored.step, "seconds": result["train_seconds"],
                        "eval": {"mAP_07": metrics["mAP_07"]}})
    curves_png = plots.plot_training_curves(
        records, os.path.join(drawn_dir, "training_curves.png"), metric="mAP_07",
        plateau=losses.constant_classifier_loss(cfg.model.num_classes, cfg.loss.neg_pos_ratio),
        target=FLAGS.target_map, title=f"{os.path.basename(os.path.normpath(FLAGS.model_dir))}: "
                                       f"validation mAP_07 {metrics['mAP_07']:.3f}")

    print(json.dumps({
        "mAP_07": metrics["mAP_07"], "mAP_area": metrics["mAP_area"], "train_seconds": result["train_seconds"],
        f"seconds_to_mAP_{FLAGS.target_map:.2f}": training_log.first_passing(records, "mAP_07", FLAGS.target_map),
        "eval_seconds": round(eval_seconds, 2), "step": result["step"], "loss": result["loss"],
        "images_per_sec": result.get("images_per_sec"), "export_dir": export_dir, "detections_dir": drawn_dir,
        "training_curves": curves_png,
    }))


def run():
    """``scratchdet demo`` and ``python tools/demo.py``."""
    config_flags.run_main(main, __doc__)


if __name__ == "__main__":
    run()
