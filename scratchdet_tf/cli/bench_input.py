"""Input-pipeline throughput: decode + SSD augmentation + target encoding, batched.

Used by ``python tools/benchmark.py input --source=URI [--image_size=300 --seconds=10 --profile]``;
``profile`` adds the rate of each stage alone (bytes read, full decode, augmentation, target encoding).
"""

import time


def _rate(ds, seconds, images_per_element):
    """Elements/s of ``ds`` after a short warm-up, times ``images_per_element``."""
    it = iter(ds.repeat())
    warm_end = time.perf_counter() + min(3.0, seconds / 3)
    while time.perf_counter() < warm_end:
        next(it)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(it)
        count += 1
    return count * images_per_element / (time.perf_counter() - start)


def run_input_benchmark(source, image_size=300, seconds=10.0, batch_size=32, tfds_data_dir="", profile=False):
    """Times the full training pipeline (make_dataset) and optionally each stage alone.

    Args:
      source: training source URI.
      image_size: input side S (priors follow the paper network at that size).
      seconds: timed seconds per measurement.
      batch_size: batch size.
      tfds_data_dir: for tfds: sources.
      profile: also time bytes-only, full-decode, augmentation-only and encoding-only pipelines.

    Returns:
      {"mode": "input", "images_per_sec": float, "num_priors": int, ...stage rates with ``profile``}.
    """
    import tensorflow as tf

    from scratchdet_tf import config
    from scratchdet_tf.boxes import targets
    from scratchdet_tf.data import augment, images, pipeline, readers
    from scratchdet_tf.models import ssd

    # The paper network's priors at this input size (VOC300: 8,732).
    model_cfg = config.ModelConfig(image_size=image_size, num_classes=20)  # the head only sizes the priors
    model = ssd.build_model(model_cfg, config.AnchorConfig())
    priors = ssd.model_anchors(model, config.AnchorConfig(), image_size)
    data_cfg = config.DataConfig(train_source=source, tfds_data_dir=tfds_data_dir)
    ds = pipeline.make_dataset(data_cfg, priors, training=True, image_size=image_size, batch_size=batch_size)
    result = {"mode": "input", "images_per_sec": round(_rate(ds, seconds, batch_size), 1),
              "num_priors": int(priors.shape[0]), "image_size": image_size, "batch_size": batch_size}
    if not profile:
        return result

    raw, _ = readers.read(source, tfds_data_dir=tfds_data_dir, decode=False)
    raw = raw.cache().repeat()  # records only; bytes are read per stage below
    loaded = raw.map(images.load_bytes, num_parallel_calls=tf.data.AUTOTUNE)
    mean = data_cfg.mean_rgb

    def augmented(index, r):
        seed = tf.stack([tf.constant(0, tf.int64), index])
        return augment.augment_train(r["encoded"], r["boxes"], r["labels"], r["difficult"], seed,
                                     image_size=image_size, mean_rgb=mean)

    def encoded(index, r):
        image, boxes, labels, _ = augmented(index, r)
        cls_targets, box_targets = targets.encode(boxes, labels, priors)
        # Return a bit of every output so that no stage is pruned from the graph.
        return image[0, 0, 0] + box_targets[0, 0] + tf.cast(cls_targets[0], tf.float32)

    stages = {
        "read_bytes": loaded.map(lambda r: tf.strings.length(r["encoded"])),
        "decode_full": loaded.map(lambda r: tf.shape(images.decode(r["encoded"])),
                                  num_parallel_calls=tf.data.AUTOTUNE),
        "augment": loaded.enumerate().map(lambda i, r: augmented(i, r)[0][0, 0],
                                          num_parallel_calls=tf.data.AUTOTUNE),
        "augment_encode": loaded.enumerate().map(encoded, num_parallel_calls=tf.data.AUTOTUNE),
        "encode_only": raw.map(lambda r: targets.encode(r["boxes"], r["labels"], priors)[0][0],
                               num_parallel_calls=tf.data.AUTOTUNE),
    }
    for name, stage in stages.items():
        result[f"{name}_images_per_sec"] = round(_rate(stage.prefetch(64), seconds, 1), 1)
    return result
