"""Micro-benchmarks: python tools/benchmark.py <mode> [--flags]; the last line printed is one JSON object.

Modes:
  targets: targets.encode images/s inside tf.data (VOC300 priors), MultiBox loss forward+backward
           time with and without XLA.
  detect:  postprocess.detect time per batch at VOC300 shapes (worst case: all classes fill top-k).
  infer:   end-to-end inference of an export (--model=<SavedModel dir or .tflite>, --batch), or, without
           --model, of the config given by --flagfile/dotted flags: random weights, exported to a temp
           dir, timing the Keras forward pass, the SavedModel and each TFLite mode (XNNPACK).
  eval:    voc_metric.voc_evaluate on VOC07-test-sized random results (4,952 images x 200 detections).
  input:   the training input pipeline (decode + SSD augmentation + target encoding, batched) on
           --source (default: a fresh 500-image shapes dataset), --image_size, --seconds, --profile.
  train:   training images/s of the config (--flagfile/dotted flags) for each --precisions x --xla
           combination, --train_steps steps each (data: a fresh shapes dataset at the config's input size,
           or --source=URI); last line: images_per_sec (the first combination's) and conv GFLOP/s.
"""

import json
import time

from absl import app, flags

from scratchdet_tf.cli import config_flags

flags.DEFINE_integer("batch_size", 32, "Images per batch.")
flags.DEFINE_integer("num_gt", 20, "targets: ground-truth boxes per image.")
flags.DEFINE_integer("max_boxes", 100, "targets: ground truth is padded to this many boxes.")
flags.DEFINE_integer("num_batches", 100, "targets: timed tf.data batches.")
flags.DEFINE_integer("loss_steps", 20, "targets/detect: timed loss forward+backward / detect calls.")
flags.DEFINE_string("model", None, "infer: SavedModel folder or .tflite file; none: time the config instead.")
flags.DEFINE_integer("batch", 1, "infer: images per call (TFLite runs them one by one).")
flags.DEFINE_integer("iterations", 10, "infer: timed calls per model (after 2 warm-up calls; median reported).")
flags.DEFINE_integer("threads", 2, "infer: TF intra-op threads and TFLite interpreter threads.")
flags.DEFINE_list("infer_tflite", ["fp32", "fp16", "dynamic", "int8"], "infer (config): TFLite modes to time.")
flags.DEFINE_string("source", "", "input, train: data source URI; empty: a fresh shapes dataset.")
flags.DEFINE_integer("image_size", 300, "input: square input side.")
flags.DEFINE_float("seconds", 10.0, "input: timed seconds per measurement.")
flags.DEFINE_bool("profile", False, "input: also time each pipeline stage alone.")
flags.DEFINE_integer("train_steps", 30, "train: steps per combination (the first is not timed).")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "train: mixed-precision policies to time.")
flags.DEFINE_list("xla", ["false", "true"], "train: jit_compile settings to time.")
FLAGS = flags.FLAGS
config_flags.define_flags(FLAGS)

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

    from scratchdet_tf import config
    from scratchdet_tf.boxes import anchors as anchors_lib
    from scratchdet_tf.boxes import targets
    from scratchdet_tf.training import losses

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

    from scratchdet_tf import config
    from scratchdet_tf.boxes import anchors as anchors_lib
    from scratchdet_tf.boxes import postprocess

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


def _time_infer(predict, images, macs):
    """Times ``predict(images)`` call by call (after 2 warm-up calls): median and best latency, images/s
    and conv GFLOP/s (2 x MACs per image) at the median, and the process CPU time per call (all threads;
    on a machine shared with other jobs, --threads x latency would be this if the cores were ours)."""
    import numpy as np

    predict(images)
    predict(images)
    seconds = []
    cpu_start = time.process_time()
    for _ in range(FLAGS.iterations):
        start = time.perf_counter()
        predict(images)
        seconds.append(time.perf_counter() - start)
    cpu = (time.process_time() - cpu_start) / FLAGS.iterations
    median = float(np.median(seconds))
    ips = len(images) / median
    return {"latency_ms": round(1e3 * median, 2), "best_ms": round(1e3 * min(seconds), 2),
            "cpu_ms": round(1e3 * cpu, 2), "images_per_sec": round(ips, 2),
            "gflops_per_sec": round(2 * macs * ips / 1e9, 1) if macs else None}


def _trained_like_weights(model, cfg, images):
    """Random weights that behave like a trained detector's: BN statistics of real activations, and
    background logits raised by 8 so that ~0.03 % of anchor-class scores pass 0.01 (NMS sees a
    realistic handful of boxes, not the all-classes worst case)."""
    import keras
    import numpy as np

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0  # one training-mode call sets the moving statistics to this batch's
    model(images.astype(np.float32) - np.asarray(cfg.data.mean_rgb, np.float32), training=True)
    for i in range(cfg.anchors.num_levels):
        last = model.get_layer(f"head_conf_{i}_bn" if cfg.model.head_bn else f"head_conf_{i}")
        shift = last.beta if cfg.model.head_bn else last.bias
        shift.assign(shift.numpy() + 8.0 * (np.arange(shift.shape[0]) % (cfg.model.num_classes + 1) == 0))


def run_infer():
    import os
    import tempfile

    import numpy as np
    import tensorflow as tf

    from scratchdet_tf.export import calibration, info, predictor, saved_model, tflite
    from scratchdet_tf.models import ssd

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    if FLAGS.model:
        written_info = info.read_info(FLAGS.model)
        size = written_info.get("image_size", 300)
        images = np.stack(list(calibration.synthetic_images(FLAGS.batch, size)))
        try:
            predict = predictor.load_predict_fn(FLAGS.model, num_threads=FLAGS.threads)
        except (OSError, ValueError) as err:
            raise app.UsageError(str(err)) from None
        result = _time_infer(predict, images, written_info.get("conv_macs"))
        print(f"{FLAGS.model}: batch {FLAGS.batch} at {size}x{size}: {result['latency_ms']} ms, "
              f"{result['images_per_sec']} images/s, {result['gflops_per_sec']} conv GFLOP/s")
        return {"mode": "infer", "model": FLAGS.model, "batch": FLAGS.batch, **result}

    cfg = config_flags.with_class_count(config_flags.config_or_exit(FLAGS))
    size = cfg.model.image_size
    model = ssd.build_model(cfg.model, cfg.anchors)
    anchors = ssd.model_anchors(model, cfg.anchors, size)
    macs = ssd.conv_macs(model)
    _trained_like_weights(model, cfg, np.stack(list(calibration.synthetic_images(8, size, seed=1))))
    images = np.stack(list(calibration.synthetic_images(FLAGS.batch, size)))
    forward = tf.function(lambda x: model(x, training=False))
    inputs = tf.constant(images.astype(np.float32) - np.asarray(cfg.data.mean_rgb, np.float32))
    results = {"keras_forward": _time_infer(lambda _: forward(inputs)["cls_logits"].numpy(), images, macs)}
    with tempfile.TemporaryDirectory() as tmp:
        saved_model.export_saved_model(model, anchors, cfg, tmp)
        results["saved_model"] = _time_infer(predictor.load_predict_fn(tmp), images, macs)
        representative = calibration.representative_images(
            lambda: calibration.synthetic_images(8, size, seed=2), size, 8)
        for mode in FLAGS.infer_tflite:
            written = tflite.export_tflite(model, anchors, cfg, tmp, [mode], representative)
            predict = predictor.load_predict_fn(os.path.join(tmp, written[mode]["file"]), num_threads=FLAGS.threads)
            results[f"tflite_{mode}"] = {**_time_infer(predict, images, macs), "bytes": written[mode]["bytes"]}
    print(f"{model.name}: {macs / 1e9:.2f} GMACs/image, batch {FLAGS.batch}, {FLAGS.threads} threads")
    for name, r in results.items():
        print(f"  {name:<16}{r['latency_ms']:>10.1f} ms (best {r['best_ms']:.1f}) {r['images_per_sec']:>8.2f} img/s "
              f"{r['gflops_per_sec']:>8.1f} GFLOP/s")
    summary = {"mode": "infer", "model": model.name, "batch": FLAGS.batch, "gmacs": round(macs / 1e9, 2),
               **results["saved_model"], "results": results}
    if "tflite_int8" in results and "tflite_fp32" in results:
        summary["tflite_int8_speedup"] = round(
            results["tflite_fp32"]["latency_ms"] / results["tflite_int8"]["latency_ms"], 2)
    return summary


def run_eval():
    from scratchdet_tf.cli import bench_eval  # the VOC07-test-sized scoring benchmark

    result = bench_eval.run_eval_benchmark()
    print(f"voc_metric.voc_evaluate, VOC07-test-sized random results ({result['num_detections']} detections): "
          f"{result['voc_seconds']:.2f} s for both APs")
    return result


def _fresh_shapes(num_classes=5, num_train=500):
    """A new shapes dataset whose instances files list ``num_classes`` categories (the 5 shapes' ids 1..5
    first: extra categories have no objects, shapes of ids past ``num_classes`` are dropped)."""
    import tempfile

    from scratchdet_tf.data import shapes

    root = tempfile.mkdtemp(prefix="bench_shapes_")
    for split, num_images in (("train", num_train), ("val", 10)):
        path = shapes.write_split(root, split, num_images, seed=0)
        if num_classes != len(shapes.CLASS_NAMES):
            with open(path) as f:
                data = json.load(f)
            data["categories"] = [{"id": k, "name": f"class_{k}"} for k in range(1, num_classes + 1)]
            data["annotations"] = [a for a in data["annotations"] if a["category_id"] <= num_classes]
            with open(path, "w") as f:
                json.dump(data, f)
    return root


def run_input():
    from scratchdet_tf.cli import bench_input  # the pipeline and per-stage timing

    source = FLAGS.source or f"shapes:{_fresh_shapes()}:train"
    result = bench_input.run_input_benchmark(source, FLAGS.image_size, FLAGS.seconds, FLAGS.batch_size,
                                             FLAGS["data.tfds_data_dir"].value, FLAGS.profile)
    result["source"] = source
    print(f"training input pipeline on {source} at {FLAGS.image_size}px, batch {FLAGS.batch_size}: "
          f"{result['images_per_sec']} images/s")
    return result


def run_train():
    """Training throughput of the config's network, data pipeline included, on any machine.

    The config's own dataset is not needed: a fresh shapes dataset is written (``--source=URI`` to
    train on another source instead) and warped to the config's input size by the usual pipeline.
    ``images_per_sec`` (the headline) is the first precision / XLA combination's; ``gflops_per_sec``
    counts 3 x 2 x the conv MACs per image (forward, and the input and weight gradients; 2 FLOPs per
    multiply-accumulate).
    """
    import tempfile

    import keras

    from scratchdet_tf import config
    from scratchdet_tf.models import ssd
    from scratchdet_tf.training import train_lib

    cfg = config_flags.config_or_exit(FLAGS)
    if FLAGS.source:
        cfg = config_flags.with_class_count(config.replace(cfg, data__train_source=FLAGS.source))
    else:  # the config's head (its class count, 20 if from the data) on shapes labelled with its first 5 classes
        cfg = config_flags.with_class_count(cfg)
        cfg = config.replace(cfg, data__train_source=f"shapes:{_fresh_shapes(cfg.model.num_classes)}",
                             data__class_names=())
    keras.backend.clear_session()
    macs = ssd.conv_macs(ssd.build_model(cfg.model, cfg.anchors))
    result = {"mode": "train", "config": cfg.model.backbone, "image_size": cfg.model.image_size,
              "batch_size": cfg.train.batch_size, "conv_gmacs_per_image": round(macs / 1e9, 3),
              "source": cfg.data.train_source}
    for precision in FLAGS.precisions:
        for xla in FLAGS.xla:
            run_cfg = config.replace(cfg, train__mixed_precision=precision, train__jit_compile=xla == "true",
                                     train__max_steps=FLAGS.train_steps, train__deterministic=False,
                                     train__log_every_steps=FLAGS.train_steps, train__sync_bn=False,
                                     train__eval_every_steps=0)
            keras.backend.clear_session()
            out = train_lib.train(run_cfg, tempfile.mkdtemp(prefix="bench_train_"))
            rate = out["images_per_sec"]
            key = f"{precision}{'_xla' if xla == 'true' else ''}"
            result[f"{key}_images_per_sec"] = rate
            if "images_per_sec" not in result:
                result["images_per_sec"] = rate
                result["gflops_per_sec"] = round(rate * 6 * macs / 1e9, 2) if rate else None
                result["precision"], result["jit_compile"] = precision, xla == "true"
            print(f"train {precision:>15} xla={xla:<5}: {rate} images/s "
                  f"({rate * 6 * macs / 1e9 if rate else float('nan'):.1f} conv GFLOP/s)")
    return result


MODES = {
    "targets": run_targets,
    "detect": run_detect,
    "infer": run_infer,
    "eval": run_eval,
    "input": run_input,
    "train": run_train,
}


def main(argv):
    if len(argv) != 2 or argv[1] not in MODES:
        raise app.UsageError(f"usage: benchmark.py <mode> [--flags]; mode one of {sorted(MODES)}, got {argv[1:]}")
    result = MODES[argv[1]]()
    print(json.dumps(result))


def run():
    """``scratchdet benchmark`` and ``python tools/benchmark.py``."""
    config_flags.run_main(main, __doc__)


if __name__ == "__main__":
    run()
