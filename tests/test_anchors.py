"""SSD-Caffe PriorBox semantics: counts, order and hand-computed boxes."""

import math

import numpy as np
import pytest

from scratchdet_tf import config
from scratchdet_tf.boxes import anchors

VOC300_MAPS = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]


def voc300_anchors():
    return anchors.anchors_from_config(config.AnchorConfig(), 300, VOC300_MAPS)


def test_voc300_has_8732_priors():
    a = voc300_anchors()
    assert a.shape == (8732, 4) and a.dtype == np.float32
    assert anchors.num_anchors(VOC300_MAPS, config.AnchorConfig().anchors_per_location()) == 8732
    # 5776 + 2166 + 600 + 150 + 36 + 4 (docs/PAPER.md#detection-head)
    assert config.AnchorConfig().anchors_per_location() == (4, 6, 6, 6, 4, 4)


def _box(cy, cx, w, h):
    """Pixel centre/size -> normalized yxyx at 300."""
    return np.array([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]) / 300.0


def _level_slices():
    start = 0
    out = []
    for (h, w), k in zip(VOC300_MAPS, (4, 6, 6, 6, 4, 4)):
        out.append((start, h, w, k))
        start += h * w * k
    return out


# Hand-computed first cell of every level: centre 0.5 * step, min square, sqrt(min*max)
# square, then (w, h) = (min*sqrt(r), min/sqrt(r)) and its flip for each ratio.
MIN = (30, 60, 111, 162, 213, 264)
MAX = (60, 111, 162, 213, 264, 315)
STEPS = (8, 16, 32, 64, 100, 300)
RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))


@pytest.mark.parametrize("level", range(6))
def test_first_and_last_cell_of_each_level_match_hand_computation(level):
    a = voc300_anchors()
    start, h, w, k = _level_slices()[level]
    s_min, s_max, step = MIN[level], MAX[level], STEPS[level]
    for (i, j), first in (((0, 0), start), ((h - 1, w - 1), start + (h * w - 1) * k)):
        cy, cx = (i + 0.5) * step, (j + 0.5) * step
        expected = [_box(cy, cx, s_min, s_min), _box(cy, cx, math.sqrt(s_min * s_max), math.sqrt(s_min * s_max))]
        for r in RATIOS[level]:
            expected.append(_box(cy, cx, s_min * math.sqrt(r), s_min / math.sqrt(r)))
            expected.append(_box(cy, cx, s_min / math.sqrt(r), s_min * math.sqrt(r)))
        np.testing.assert_allclose(a[first:first + k], np.array(expected), atol=1e-6)


def test_first_prior_by_hand():
    # centre (4, 4) px, side 30 -> [-11, -11, 19, 19] / 300
    np.testing.assert_allclose(voc300_anchors()[0], np.array([-11, -11, 19, 19]) / 300, atol=1e-7)


def test_last_prior_by_hand():
    # 1x1 map, centre 150, ratio 1/2 box: w = 264/sqrt(2), h = 264*sqrt(2)
    w, h = 264 / math.sqrt(2), 264 * math.sqrt(2)
    np.testing.assert_allclose(voc300_anchors()[-1], _box(150, 150, w, h), atol=1e-6)


def test_cells_are_row_major():
    a = voc300_anchors()
    # second cell of level 0 is (row 0, col 1): x moves by one step, y stays.
    np.testing.assert_allclose(a[4] - a[0], np.array([0, 8, 0, 8]) / 300, atol=1e-6)
    # cell (1, 0) comes after the 38 cells of row 0.
    np.testing.assert_allclose(a[38 * 4] - a[0], np.array([8, 0, 8, 0]) / 300, atol=1e-6)


def test_clip_bounds_boxes():
    a = anchors.anchors_from_config(config.AnchorConfig(clip=True), 300, VOC300_MAPS)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert voc300_anchors().min() < 0.0  # SSD-Caffe default is clip=False


def test_derived_steps_follow_feature_maps_at_other_sizes():
    # At 160 the explicit 300-steps no longer apply: PriorBox uses image / map size.
    maps = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    a = anchors.anchors_from_config(config.AnchorConfig(), 160, maps)
    assert len(a) == 20 * 20 * 4 + 10 * 10 * 6 + 5 * 5 * 6 + 3 * 3 * 6 + 2 * 2 * 4 + 4
    # level 0 cell (0, 0): centre 0.5 * 160/20 = 4 px, min size 30 * 160/300 = 16 px
    np.testing.assert_allclose(a[0], np.array([4 - 8, 4 - 8, 4 + 8, 4 + 8]) / 160, atol=1e-6)
    # the 3x3 level is centred: its middle cell sits at the image centre
    start = 1600 + 600 + 150
    centre = a[start + 4 * 6]
    np.testing.assert_allclose((centre[:2] + centre[2:]) / 2, [0.5, 0.5], atol=1e-6)


def test_no_max_size_drops_the_second_square():
    a = anchors.ssd_anchors([(2, 2)], 100, [20], [], [[2]], [50])
    assert a.shape == (2 * 2 * 3, 4)
    np.testing.assert_allclose(a[0], np.array([15, 15, 35, 35]) / 100)


def test_ratio_levels_that_do_not_fit_the_feature_maps_raise():
    with pytest.raises(ValueError, match="2 aspect_ratios levels for 3 feature maps"):
        anchors.ssd_anchors([(4, 4), (2, 2), (1, 1)], 64, [8, 16, 32], [16, 32, 64], [[2], [2]], None)
