"""The notebook API: ``Detector.from_run`` / ``from_export``, ``predict`` and ``draw``.

References: the Keras model + eager post-processing of conftest (``reference_detections``), and the palette
colour a box must be drawn in.
"""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import EXPORT_CLASS_NAMES, reference_detections, synthetic_batch
from PIL import Image

from scratchdet_tf import run_dir, visualize
from scratchdet_tf.detector import Detections, Detector, load_image

THRESHOLD = 0.05


def expected(exported, image, max_detections=20):
    """The reference's detections of one image scoring >= THRESHOLD, best first."""
    cfg = dataclasses.replace(exported["cfg"], export=dataclasses.replace(exported["cfg"].export,
                                                                          max_detections=max_detections))
    ref = reference_detections({**exported, "cfg": cfg}, image[None])
    boxes, labels, scores = visualize.confident(ref, THRESHOLD, index=0)
    order = np.argsort(-scores, kind="stable")
    return boxes[order], labels[order], scores[order]


def assert_matches(result, reference, atol=2e-3):
    boxes, labels, scores = reference
    assert isinstance(result, Detections) and len(result) == len(scores) > 0
    np.testing.assert_allclose(result.scores, scores, atol=atol)
    np.testing.assert_allclose(result.boxes, boxes, atol=atol)
    np.testing.assert_array_equal(result.labels, labels)
    assert result.class_names == tuple(EXPORT_CLASS_NAMES[k] for k in labels)


def test_from_export_predicts_what_the_model_does_on_arrays_files_and_lists(exported, tmp_path):
    detector = Detector.from_export(exported["dir"], score_threshold=THRESHOLD)
    assert detector.class_names == EXPORT_CLASS_NAMES
    images = [synthetic_batch(1, size=64, seed=3)[0], synthetic_batch(1, size=64, seed=4)[0]]
    for image in images:
        assert_matches(detector.predict(image), expected(exported, image))
    path = str(tmp_path / "a.png")
    Image.fromarray(images[0]).save(path)  # lossless: the same pixels
    from_file, from_list = detector.predict(path), detector.predict([path, images[1]])
    assert_matches(from_file, expected(exported, images[0]))
    assert len(from_list) == 2 and from_list[1].image_size == (64, 64)
    np.testing.assert_array_equal(from_list[0].scores, from_file.scores)


def _write_run(exported, folder, scale=1.0, step=3):
    """A training run folder holding ``exported``'s weights (times ``scale``) as checkpoint ``ckpt-<step>``."""
    model = exported["model"]
    originals = [w.numpy() for w in model.weights]
    try:
        for w in model.trainable_weights:
            w.assign(w * scale)
        tf.train.Checkpoint(model=model).write(os.path.join(folder, f"ckpt-{step}"))
    finally:
        for w, value in zip(model.weights, originals):
            w.assign(value)
    run_dir.write_config(exported["cfg"], folder)


def test_from_run_uses_the_best_checkpoint_when_the_run_kept_one(exported, tmp_path):
    run = str(tmp_path / "run")
    _write_run(exported, run, step=5)
    image = synthetic_batch(1, size=64, seed=5)[0]
    reference = expected(exported, image, max_detections=exported["cfg"].eval.max_detections)

    newest = Detector.from_run(run, score_threshold=THRESHOLD)
    assert "ckpt-5" in repr(newest) and newest.class_names == EXPORT_CLASS_NAMES
    assert_matches(newest.predict(image), reference, atol=1e-4)

    _write_run(exported, os.path.join(run, run_dir.BEST_DIR), scale=0.5, step=2)  # a different network
    best = Detector.from_run(run, score_threshold=THRESHOLD)
    assert "best" in repr(best) and "ckpt-2" in repr(best)
    assert not np.allclose(best.predict(image).scores[:3], reference[2][:3], atol=1e-3)
    last = Detector.from_run(run, "last", score_threshold=THRESHOLD)
    assert_matches(last.predict(image), reference, atol=1e-4)


def test_draw_outlines_each_box_in_its_class_colour():
    image = np.full((100, 200, 3), 255, np.uint8)
    fixed = {"boxes": np.array([[[0.2, 0.1, 0.8, 0.6]]], np.float32), "scores": np.array([[0.9]], np.float32),
             "classes": np.array([[2]], np.int32), "num_detections": np.array([1], np.int32)}
    detector = Detector(lambda images: fixed, ("a", "b", "c"))
    result = detector.predict(image)
    assert result.class_names == ("c",) and result.image_size == (100, 200)
    np.testing.assert_allclose(result.pixel_boxes(), [[20, 20, 120, 80]], atol=1e-4)
    assert result.to_json() == [{"box": [0.2, 0.1, 0.8, 0.6], "label": 2, "class": "c", "score": 0.9}]
    drawn = detector.draw(image, result)
    assert drawn.shape == image.shape and (image == 255).all()  # the input is not modified
    # The left edge of the box, below the caption: x = 0.1 * 199, y between the caption and the bottom.
    assert tuple(drawn[60, 20]) == visualize.class_color(2)
    assert tuple(drawn[60, 100]) == (255, 255, 255)  # inside the box: untouched


def test_below_the_threshold_nothing_is_kept():
    fixed = {"boxes": np.zeros((1, 2, 4), np.float32), "scores": np.array([[0.2, 0.1]], np.float32),
             "classes": np.zeros((1, 2), np.int32), "num_detections": np.array([2], np.int32)}
    result = Detector(lambda images: fixed, ("a",), score_threshold=0.25).predict(np.zeros((8, 8, 3), np.uint8))
    assert len(result) == 0 and result.boxes.shape == (0, 4)


def test_unreadable_inputs_are_one_line_errors_naming_them(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match="broken.jpg"):
        load_image(str(bad))
    with pytest.raises(ValueError, match="uint8 RGB"):
        load_image(np.zeros((4, 4), np.float32))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Detector.from_export(str(tmp_path / "nowhere"))
