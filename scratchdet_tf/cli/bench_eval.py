"""Times voc_metric.voc_evaluate on VOC07-test-sized random results (4,952 images, 20 classes, 200 dets each).

  python tools/bench_eval.py   # last line: {"mode": "eval", "voc_seconds": ..., "num_detections": ...}
"""

import json
import time

import numpy as np

from scratchdet_tf.evaluation import voc_metric


def _random_boxes(rng, n, height, width):
    """Random pixel xyxy boxes [n, 4] inside a height x width image."""
    x1, x2 = np.sort(rng.uniform(1, width, (2, n)), axis=0)
    y1, y2 = np.sort(rng.uniform(1, height, (2, n)), axis=0)
    return np.stack([x1, y1, x2, y2], 1)


def make_voc07_sized_results(num_images=4952, num_classes=20, dets_per_image=200, seed=0):
    """Random ground truth (~2.4 boxes per image, 1 in 8 difficult) and detections, VOC pixel xyxy.

    A third of each image's detections are jittered copies of its ground truth boxes with their classes,
    so matching, duplicates and difficult boxes all occur; the rest are random boxes and classes.

    Returns:
      (detections, ground_truths) in voc_evaluate's per-image format.
    """
    rng = np.random.default_rng(seed)
    detections, ground_truths = {}, {}
    for i in range(num_images):
        height, width = 375, 500
        num_gt = rng.poisson(1.4) + 1
        gt_boxes = _random_boxes(rng, num_gt, height, width)
        gt_labels = rng.integers(0, num_classes, num_gt)
        ground_truths[f"{i:06d}"] = {"boxes": gt_boxes, "labels": gt_labels, "difficult": rng.random(num_gt) < 0.125}
        near = rng.integers(0, num_gt, dets_per_image // 3)
        boxes = np.concatenate([gt_boxes[near] + rng.normal(0, 15, (len(near), 4)),
                                _random_boxes(rng, dets_per_image - len(near), height, width)])
        labels = np.concatenate([gt_labels[near], rng.integers(0, num_classes, dets_per_image - len(near))])
        detections[f"{i:06d}"] = {"boxes": boxes, "scores": rng.random(dets_per_image), "labels": labels}
    return detections, ground_truths


def run_eval_benchmark(repeats=3):
    """Times voc_evaluate (both AP variants come from one call); returns the median over repeats.

    Returns:
      {"mode": "eval", "voc_seconds": float, "num_detections": int}.
    """
    detections, ground_truths = make_voc07_sized_results()
    class_names = [f"class{c}" for c in range(20)]
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        voc_metric.voc_evaluate(detections, ground_truths, class_names)
        seconds.append(time.perf_counter() - start)
    return {"mode": "eval", "voc_seconds": round(float(np.median(seconds)), 3),
            "num_detections": int(sum(len(d["scores"]) for d in detections.values()))}


def run():
    """``python tools/bench_eval.py`` (also ``scratchdet benchmark eval``)."""
    print(json.dumps(run_eval_benchmark()))


if __name__ == "__main__":
    run()
