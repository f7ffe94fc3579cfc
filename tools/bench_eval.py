"""Times voc_metric.voc_evaluate on VOC07-test-sized random results (4,952 images, 20 classes, 200 dets each).

The code is ``scratchdet_tf/cli/bench_eval.py``; ``scratchdet benchmark eval`` runs the same benchmark.
"""

from scratchdet_tf.cli import bench_eval

if __name__ == "__main__":
    bench_eval.run()
