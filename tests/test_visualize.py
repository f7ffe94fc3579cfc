"""draw_detections: boxes land where the normalized coordinates say, in the class colour; input untouched."""

import numpy as np
import pytest

from scratchdet_tf import visualize


def grey(h=100, w=200):
    return np.full((h, w, 3), 128, np.uint8)


def test_box_outline_in_class_colour_at_its_pixels():
    image = grey()
    # ymin, xmin, ymax, xmax = 0.5, 0.25, 0.9, 0.75 -> rows 49.5..89.1, columns 49.75..149.25 (x (size - 1)),
    # rounded to whole pixels: rows 50..89, columns 50..149.
    out = visualize.draw_detections(image, [[0.5, 0.25, 0.9, 0.75]], [2], [0.9], ["a", "b", "c"])
    color = visualize.class_color(2)
    assert tuple(out[89, 100]) == color  # bottom edge
    assert tuple(out[70, 50]) == color  # left edge
    assert tuple(out[70, 149]) == color  # right edge
    assert tuple(out[70, 100]) == (128, 128, 128)  # inside the box: untouched
    assert tuple(out[95, 5]) == (128, 128, 128)  # far away: untouched
    assert (image == 128).all()  # the input is not modified


def test_caption_drawn_above_the_box():
    out = visualize.draw_detections(grey(), [[0.5, 0.25, 0.9, 0.75]], [0], [0.5], ["cat"])
    caption_band = out[35:49, 50:80]
    assert (caption_band == visualize.class_color(0)).all(axis=-1).any()  # caption background
    assert (caption_band > 200).all(axis=-1).any()  # white (anti-aliased) text


def test_no_detections_returns_an_equal_copy():
    image = grey()
    out = visualize.draw_detections(image, np.zeros((0, 4)), [], [], [])
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_boxes_outside_the_image_and_unnamed_labels_are_drawn_clipped():
    out = visualize.draw_detections(grey(), [[-0.5, -0.5, 1.5, 1.5]], [12], [0.3], ["only"])
    assert out.shape == (100, 200, 3)
    assert tuple(out[99, 100]) == visualize.class_color(12)  # clipped to the last row


@pytest.mark.parametrize("image", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32)])
def test_bad_image_is_a_clear_error(image):
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        visualize.draw_detections(image, [[0, 0, 1, 1]], [0], [1.0])


def test_mismatched_lengths_are_a_clear_error():
    with pytest.raises(ValueError, match="1 boxes, 2 classes and 1 scores"):
        visualize.draw_detections(grey(), [[0, 0, 1, 1]], [0, 1], [1.0])
