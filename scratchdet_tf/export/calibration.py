"""Calibration images for full-integer TFLite: from a folder, a data source, or synthetic, resized to the input."""

from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf

from scratchdet_tf.data import augment

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def resize_uint8(image: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 [S, S, 3]: bilinear warp (as the eval transform) rounded back to uint8; S x S input is unchanged."""
    image = np.asarray(image)
    if image.shape[:2] == (image_size, image_size):
        return image.astype(np.uint8)
    resized = augment.transform_eval(image, image_size=image_size, mean_rgb=(0.0, 0.0, 0.0))
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def folder_images(folder: str) -> Iterator[np.ndarray]:
    """uint8 [H, W, 3] images of ``folder`` (sorted, by extension); unreadable files are skipped."""
    from PIL import Image

    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    for name in names:
        try:
            with Image.open(os.path.join(folder, name)) as image:
                yield np.asarray(image.convert("RGB"))
        except OSError:
            continue


def source_images(source: str, tfds_data_dir: str = "") -> Iterator[np.ndarray]:
    """uint8 [H, W, 3] images of a data source URI (the eval reader: no augmentation)."""
    from scratchdet_tf.data import readers  # only calibration needs the data stack

    dataset, _ = readers.read(source, tfds_data_dir=tfds_data_dir, training=False, decode=True)
    for element in dataset:
        yield element["image"].numpy()


def synthetic_images(num_images: int, image_size: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Smooth random uint8 [S, S, 3] images (low-frequency noise: closer to photos than white noise)."""
    rng = np.random.default_rng(seed)
    for _ in range(num_images):
        coarse = rng.uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
        image = tf.image.resize(coarse, [image_size, image_size], method="bicubic")[0].numpy()
        yield np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def representative_images(images: Callable[[], Iterable[np.ndarray]], image_size: int,
                          num_images: int) -> Callable[[], Iterator[np.ndarray]]:
    """A re-iterable calibration set: the first ``num_images`` of ``images()``, as uint8 [1, S, S, 3].

    Raises (when iterated):
      ValueError: if ``images()`` yields no image.
    """
    def generate():
        count = 0
        for image in images():
            if count == num_images:
                return
            count += 1
            yield resize_uint8(image, image_size)[None]
        if count == 0:
            raise ValueError("no calibration images")

    return generate
