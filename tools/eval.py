"""Scores detections without a model: VOC comp4 files against a devkit, or a COCO results JSON.

  python tools/eval.py --voc_devkit=VOCdevkit/VOC2007 --image_set=test --voc_results=DIR [--use_07_metric]
  python tools/eval.py --coco_gt=instances_val2017.json --coco_results=results.json

Prints a table, then as its last line one JSON object with the metrics.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from scratchdet_tf import evaluation, voc_io  # noqa: E402

flags.DEFINE_string("voc_devkit", None, "VOC devkit year folder, e.g. VOCdevkit/VOC2007 (Annotations, ImageSets).")
flags.DEFINE_string("image_set", "test", "ImageSets/Main/<image_set>.txt to score.")
flags.DEFINE_string("voc_results", None, "Folder of comp4_det_<image_set>_<class>.txt files.")
flags.DEFINE_bool("use_07_metric", False, "Table shows VOC2007 11-point AP instead of area AP (JSON has both).")
flags.DEFINE_string("coco_gt", None, "COCO instances JSON (ground truth).")
flags.DEFINE_string("coco_results", None, "COCO results JSON to score against --coco_gt.")
FLAGS = flags.FLAGS


def score_voc_results():
    """Prints the per-class table and returns the VOC metrics of --voc_results."""
    if not FLAGS.voc_devkit:
        raise app.UsageError("--voc_results needs --voc_devkit")
    ground_truths = voc_io.read_ground_truth(FLAGS.voc_devkit, FLAGS.image_set, voc_io.VOC_CLASS_NAMES)
    detections = voc_io.read_comp4(FLAGS.voc_results, FLAGS.image_set, voc_io.VOC_CLASS_NAMES)
    metrics = evaluation.voc_evaluate(detections, ground_truths, voc_io.VOC_CLASS_NAMES)
    method = os.path.basename(os.path.normpath(FLAGS.voc_results))
    print(evaluation.format_voc_table(metrics, FLAGS.use_07_metric, method=method))
    return metrics


def score_coco_results():
    """Prints the COCO table and returns the 12 stats of --coco_results."""
    if not FLAGS.coco_gt:
        raise app.UsageError("--coco_results needs --coco_gt")
    stats = evaluation.coco_evaluate_json(FLAGS.coco_gt, FLAGS.coco_results)
    print(evaluation.format_coco_table(stats, method=os.path.basename(os.path.normpath(FLAGS.coco_results))))
    return stats


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        if FLAGS.voc_results:
            metrics = score_voc_results()
        elif FLAGS.coco_results:
            metrics = score_coco_results()
        else:
            raise app.UsageError("give --voc_results (with --voc_devkit) or --coco_results (with --coco_gt)")
    except (OSError, ValueError) as err:
        sys.exit(f"eval.py: error: {err}")
    print(evaluation.metrics_to_json(metrics))


if __name__ == "__main__":
    app.run(main)
