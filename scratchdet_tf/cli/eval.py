"""Evaluates a trained model (checkpoint or SavedModel), or scores detection files without a model.

  python tools/eval.py --model_dir=M [--checkpoint=M/ckpt-500] [--source=URI] [--eval.multi_scale=true]
  python tools/eval.py --model_dir=M --continuous [--timeout=3600]    # each new checkpoint, to TensorBoard M/eval
  python tools/eval.py --saved_model=DIR|FILE.tflite [--model_dir=M] --source=URI [--eval.metric=coco]
  python tools/eval.py --voc_devkit=VOCdevkit/VOC2007 --image_set=test --voc_results=DIR [--use_07_metric]
  python tools/eval.py --coco_gt=instances_val2017.json --coco_results=results.json

Model modes take the run's config (M/config.json; defaults without --model_dir) with the dotted config flags
given on the command line applied on top (e.g. --eval.num_images=100 --eval.batch_size=1). Metrics go to
<output_dir>/metrics.json (default M/eval, or DIR_eval beside a --saved_model), with the per-class table
per_class.txt and the figures pr_curves.png (per-class precision-recall) and confusion_matrix.png; a test set
without ground truth (VOC2012 test, COCO test-dev) gets the evaluation servers' results files there instead.
Prints the paper's one-line table and a per-class table, then as its last line one JSON object with the
metrics (in model modes with "plots": the PNG paths, and "per_class_table").
"""

import os
import sys

from absl import app, flags

from scratchdet_tf.cli import config_flags
from scratchdet_tf.data import annotations
from scratchdet_tf.evaluation import coco_metric, devkit, report, voc_metric

FLAGS = flags.FLAGS
config_flags.define_flags(FLAGS)
flags.DEFINE_string("model_dir", None, "Training run folder: evaluates its newest checkpoint with its config.json.")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix to evaluate instead of the newest, e.g. M/ckpt-500.")
flags.DEFINE_string("saved_model", None, "Exported SavedModel folder (serving_default: uint8 images -> detections) "
                    "or a .tflite file written by tools/export.py.")
flags.DEFINE_string("source", None, "Data source URI to evaluate on (default: --data.val_source of the config).")
flags.DEFINE_string("output_dir", None, "Where metrics.json, per_class.txt and the plots (or test-set results) go "
                    "(default M/eval).")
flags.DEFINE_bool("continuous", False, "Evaluate each new checkpoint in --model_dir until train.max_steps.")
flags.DEFINE_float("timeout", 3600.0, "--continuous: stop after this many seconds without a new checkpoint.")
flags.DEFINE_string("voc_devkit", None, "VOC devkit year folder, e.g. VOCdevkit/VOC2007 (Annotations, ImageSets).")
flags.DEFINE_string("image_set", "test", "ImageSets/Main/<image_set>.txt to score.")
flags.DEFINE_string("voc_results", None, "Folder of comp4_det_<image_set>_<class>.txt files.")
flags.DEFINE_bool("use_07_metric", False, "Table shows VOC2007 11-point AP instead of area AP (JSON has both).")
flags.DEFINE_string("coco_gt", None, "COCO instances JSON (ground truth).")
flags.DEFINE_string("coco_results", None, "COCO results JSON to score against --coco_gt.")


def score_voc_results():
    """Prints the VOC tables and returns the VOC metrics of --voc_results."""
    if not FLAGS.voc_devkit:
        raise app.UsageError("--voc_results needs --voc_devkit")
    ground_truths = devkit.read_ground_truth(FLAGS.voc_devkit, FLAGS.image_set, annotations.VOC_CLASS_NAMES)
    detections = devkit.read_comp4(FLAGS.voc_results, FLAGS.image_set, annotations.VOC_CLASS_NAMES)
    metrics = voc_metric.voc_evaluate(detections, ground_truths, annotations.VOC_CLASS_NAMES)
    method = os.path.basename(os.path.normpath(FLAGS.voc_results))
    print(report.format_voc_table(metrics, FLAGS.use_07_metric, method=method))
    print(report.format_per_class_table(metrics, metric="voc07" if FLAGS.use_07_metric else "voc12"))
    return metrics


def score_coco_results():
    """Prints the COCO tables and returns the 12 stats and the per-class APs of --coco_results."""
    if not FLAGS.coco_gt:
        raise app.UsageError("--coco_results needs --coco_gt")
    stats = coco_metric.coco_evaluate_json(FLAGS.coco_gt, FLAGS.coco_results, per_class=True)
    print(report.format_coco_table(stats, method=os.path.basename(os.path.normpath(FLAGS.coco_results))))
    print(report.format_per_class_table(stats, metric="coco"))
    return stats


def evaluate_model():
    """Evaluates --model_dir's checkpoint(s) or --saved_model; returns the metrics."""
    if FLAGS.model_dir and not os.path.isdir(FLAGS.model_dir):
        raise FileNotFoundError(f"no such model dir: {FLAGS.model_dir}")
    if FLAGS.checkpoint and not os.path.isfile(FLAGS.checkpoint + ".index"):
        raise FileNotFoundError(f"no such checkpoint: {FLAGS.checkpoint} (no {FLAGS.checkpoint}.index)")
    if FLAGS.continuous and not FLAGS.model_dir:
        raise app.UsageError("--continuous needs --model_dir")
    from scratchdet_tf import run_dir  # TensorFlow loads only for model evaluation
    from scratchdet_tf.evaluation import runner
    from scratchdet_tf.export import info, predictor

    cfg = config_flags.run_config(FLAGS.model_dir, FLAGS)
    source = FLAGS.source or cfg.data.val_source
    if FLAGS.saved_model:
        if cfg.eval.multi_scale:
            raise app.UsageError("--eval.multi_scale needs --model_dir (a Keras model), not --saved_model")
        output_dir = FLAGS.output_dir or os.path.normpath(FLAGS.saved_model) + "_eval"
        predict_fn = predictor.load_predict_fn(FLAGS.saved_model)
        return runner.evaluate_predict_fn(
            predict_fn, source, metric=cfg.eval.metric, tfds_data_dir=cfg.data.tfds_data_dir,
            num_images=cfg.eval.num_images, output_dir=output_dir,
            method=os.path.basename(os.path.normpath(FLAGS.saved_model)),
            class_names=info.class_names_of(FLAGS.saved_model))
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.model_dir, "eval")
    if FLAGS.continuous:
        metrics = runner.evaluate_checkpoints(cfg, FLAGS.model_dir, source=source, output_dir=output_dir,
                                                timeout=FLAGS.timeout)
        if metrics is None:
            raise FileNotFoundError(f"no checkpoint appeared in {FLAGS.model_dir} within {FLAGS.timeout:g} s")
        return metrics
    restored = run_dir.restore_model(FLAGS.model_dir, FLAGS.checkpoint, cfg)
    print(f"evaluating {restored.checkpoint} (step {restored.step}) on {source}")
    return runner.evaluate(cfg, restored.model, restored.anchors, source=source, output_dir=output_dir,
                             step=restored.step)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        if FLAGS.voc_results:
            metrics = score_voc_results()
        elif FLAGS.coco_results:
            metrics = score_coco_results()
        elif FLAGS.model_dir or FLAGS.saved_model:
            metrics = evaluate_model()
        else:
            raise app.UsageError("give --model_dir or --saved_model to evaluate a model, or score files with "
                                 "--voc_results (with --voc_devkit) or --coco_results (with --coco_gt)")
    except (OSError, ValueError) as err:  # missing files, bad data or config: one line naming the path
        sys.exit(f"eval.py: error: {err}")
    print(report.metrics_to_json(metrics))


def run():
    """``scratchdet eval`` and ``python tools/eval.py``."""
    config_flags.run_main(main, __doc__)


if __name__ == "__main__":
    run()
