"""Micro-benchmarks: python tools/benchmark.py <mode> [--flags]; the last line printed is one JSON object.

Modes:
  targets: targets.encode images/s inside tf.data (VOC300 priors), MultiBox loss forward+backward
           time with and without XLA.
  detect:  postprocess.detect time per batch at VOC300 shapes (worst case: all classes fill top-k).
"""

import json
import time

import _bootstrap  # noqa: F401  (puts the checkout on sys.path)

from absl import app, flags

flags.DEFINE_integer("batch_size", 32, "Images per batch.")
flags.DEFINE_integer("num_gt", 20, "targets: ground-truth boxes per image.")
flags.DEFINE_integer("max_boxes", 100, "targets: ground truth is padded to this many boxes.")
flags.DEFINE_integer("num_batches", 100, "targets: timed tf.data batches.")
flags.DEFINE_integer("loss_steps", 20, "targets/detect: timed loss forward+backward / detect calls.")
FLAGS = flags.FLAGS

VOC300_FEATURE_MAPS = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]


def _random_ground_truth(rng, num_images, num_gt, max_boxes, num_classes=20):
    """Padded random GT: boxes float32 [n, max_boxes, 4], labels int32 [n, max_boxes] (-1 = padding)."""
    import numpy as np

    centre = rng.uniform(0.1, 0.9, (num_images, num_gt, 2))
    size = rng.uniform(0.03, 0.7, (num_images, num_gt, 2))
    boxes = np.clip(np.concatenate([centre - size / 2, centre + size / 2], -1), 0.0, 1.0)
    labels = rng.integers(0, num_classes, (num_images, num_gt))
    pad = max_boxes - num_gt
    boxes = np.pad(boxes, [[0, 0], [0, pad], [0, 0]]).astype(np.float32)
    labels = np.pad(labels, [[0, 0], [0, pad]], constant_values=-1).astype(np.int32)
    return boxes, labels


def _time(fn, steps):
    fn()  # warm-up: tracing / compilation
    fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def run_targets():
    import numpy as np
    import tensorflow as tf

    from scratchdet_tf import anchors as anchors_lib
    from scratchdet_tf import config, losses, targets

    priors = anchors_lib.anchors_from_config(config.AnchorConfig(), 300, VOC300_FEATURE_MAPS)  # [8732, 4]
    rng = np.random.default_rng(0)
    boxes, labels = _random_ground_truth(rng, 1024, FLAGS.num_gt, FLAGS.max_boxes)
    batch = FLAGS.batch_size

    # --- targets.encode in tf.data ---
    ds = (tf.data.Dataset.from_tensor_slices((boxes, labels)).repeat()
          .map(lambda boxes, labels: targets.encode(boxes, labels, priors), num_parallel_calls=tf.data.AUTOTUNE)
          .batch(batch, drop_remainder=True).prefetch(2))
    it = iter(ds)
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    for _ in range(FLAGS.num_batches):
        cls_targets, box_targets = next(it)
    encode_ips = FLAGS.num_batches * batch / (time.perf_counter() - start)

    # --- loss forward + backward, batch at VOC300 shapes ---
    logits = tf.Variable(tf.random.normal([batch, priors.shape[0], 21]))
    deltas = tf.Variable(tf.random.normal([batch, priors.shape[0], 4]))

    def step():
        with tf.GradientTape() as tape:
            loss = losses.multibox_loss_normalized(logits, deltas, cls_targets, box_targets)
        grads = tape.gradient(loss, [logits, deltas])
        return loss, tf.reduce_sum(grads[0]) + tf.reduce_sum(grads[1])

    graph_step = tf.function(step)
    xla_step = tf.function(step, jit_compile=True)
    loss_ms = 1e3 * _time(lambda: graph_step()[1].numpy(), FLAGS.loss_steps)
    loss_ms_xla = 1e3 * _time(lambda: xla_step()[1].numpy(), FLAGS.loss_steps)

    print(f"targets.encode in tf.data: {encode_ips:.0f} images/s "
          f"({priors.shape[0]} priors, {FLAGS.num_gt} GT padded to {FLAGS.max_boxes}, batch {batch})")
    print(f"loss fwd+bwd, batch {batch}: {loss_ms:.1f} ms graph, {loss_ms_xla:.1f} ms XLA")
    return {"mode": "targets", "encode_images_per_sec": round(encode_ips, 1),
            "loss_fwd_bwd_ms": round(loss_ms, 2), "loss_fwd_bwd_ms_xla": round(loss_ms_xla, 2)}


def run_detect():
    import numpy as np
    import tensorflow as tf

    from scratchdet_tf import anchors as anchors_lib
    from scratchdet_tf import config, postprocess

    priors = anchors_lib.anchors_from_config(config.AnchorConfig(), 300, VOC300_FEATURE_MAPS)  # [8732, 4]
    rng = np.random.default_rng(0)
    batch = FLAGS.batch_size
    # Random logits: every class has > 400 boxes above 0.01, NMS's worst case.
    logits = tf.constant(rng.normal(size=(batch, priors.shape[0], 21)).astype(np.float32))
    deltas = tf.constant(rng.normal(size=(batch, priors.shape[0], 4)).astype(np.float32))
    detect = tf.function(lambda: postprocess.detect(logits, deltas, priors))
    ms = 1e3 * _time(lambda: detect()["num_detections"].numpy(), FLAGS.loss_steps)
    print(f"postprocess.detect, batch {batch}, {priors.shape[0]} priors x 20 classes, 400 per class into NMS: "
          f"{ms:.1f} ms ({ms / batch:.1f} ms/image)")
    return {"mode": "detect", "detect_ms_per_batch": round(ms, 2), "detect_ms_per_image": round(ms / batch, 2)}


MODES = {
    "targets": run_targets,
    "detect": run_detect,
}


def main(argv):
    if len(argv) != 2 or argv[1] not in MODES:
        raise app.UsageError(f"usage: benchmark.py <mode> [--flags]; mode one of {sorted(MODES)}, got {argv[1:]}")
    result = MODES[argv[1]]()
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
