"""Tests for multiscale: box voting, pass geometry (content, canvas, flip un-mapping), size filters, priors."""

import numpy as np
import pytest
from conftest import tiny_config

from scratchdet_tf import config
from scratchdet_tf.boxes import anchors as anchors_lib
from scratchdet_tf.evaluation import multiscale, runner
from scratchdet_tf.models import ssd

Scale = multiscale.Scale


def test_two_overlapping_boxes_of_one_class_merge_to_the_score_weighted_average():
    a, b = [0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.4, 0.5]  # IoU 0.16 / 0.2 = 0.8
    boxes, scores = multiscale.box_voting(np.array([b, a]), np.array([0.3, 0.9]))
    np.testing.assert_allclose(boxes, [[0.0, 0.0, 0.4, (0.9 * 0.4 + 0.3 * 0.5) / 1.2]], atol=1e-7)
    np.testing.assert_allclose(scores, [0.9])


def test_boxes_below_the_vote_iou_stay_apart_and_clusters_form_around_the_best_box():
    top = [0.0, 0.0, 0.4, 0.4]
    near_top = [0.0, 0.0, 0.4, 0.6]  # IoU with top 0.16 / 0.24 = 2/3: joins top's cluster
    near_it = [0.0, 0.2, 0.4, 0.8]  # IoU with top 0.08 / 0.32 = 0.25, with near_top 0.16 / 0.32 = 0.5
    boxes, scores = multiscale.box_voting(np.array([near_it, near_top, top]), np.array([0.2, 0.5, 0.8]))
    # Greedy around the best box: near_it is left out of top's cluster although it overlaps near_top.
    np.testing.assert_allclose(scores, [0.8, 0.2])
    np.testing.assert_allclose(boxes[0], [0.0, 0.0, 0.4, (0.8 * 0.4 + 0.5 * 0.6) / 1.3], atol=1e-7)
    np.testing.assert_allclose(boxes[1], near_it, atol=1e-7)
    # IoU 0.25 < 0.45: two separate boxes, unchanged.
    boxes, scores = multiscale.box_voting(np.array([top, near_it]), np.array([0.8, 0.2]))
    np.testing.assert_allclose(boxes, [top, near_it], atol=1e-7)


def test_soft_voting_also_keeps_decayed_copies_above_the_threshold():
    a, b = [0.0, 0.0, 0.4, 0.4], [0.0, 0.0, 0.4, 0.5]  # IoU 0.8
    boxes, scores = multiscale.box_voting(np.array([a, b]), np.array([0.9, 0.3]), soft_threshold=0.05)
    # Merged box (0.9), then b at 0.3 * (1 - 0.8) = 0.06; a's own copy decays to 0 and is dropped.
    np.testing.assert_allclose(scores, [0.9, 0.06], atol=1e-7)
    np.testing.assert_allclose(boxes[1], b)
    _, scores = multiscale.box_voting(np.array([a, b]), np.array([0.9, 0.3]), soft_threshold=0.07)
    np.testing.assert_allclose(scores, [0.9])


def test_different_classes_do_not_merge_and_the_best_detections_are_kept():
    box = [0.1, 0.1, 0.5, 0.5]
    boxes, scores, labels = multiscale.merge_detections(np.array([box, box, box]), np.array([0.4, 0.9, 0.7]),
                                                        np.array([2, 0, 2]))
    np.testing.assert_allclose(scores, [0.9, 0.7])  # class 2's two boxes merge; class 0's stays
    np.testing.assert_array_equal(labels, [0, 2])
    np.testing.assert_allclose(boxes, [box, box], atol=1e-7)
    _, scores, labels = multiscale.merge_detections(np.array([box, box]), np.array([0.4, 0.9]), np.array([1, 0]),
                                                    max_detections=1)
    np.testing.assert_allclose(scores, [0.9])
    _, scores, _ = multiscale.merge_detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))
    assert scores.shape == (0,)


def test_flip_and_canvas_unmapping_is_exact():
    # Content 150 x 300 (h x w) at the top-left of a 300 canvas, horizontally flipped.
    boxes = multiscale.unmap_boxes(np.array([[0.1, 0.2, 0.3, 0.5]]), (150, 300), 300, flipped=True)
    np.testing.assert_allclose(boxes, [[0.2, 0.5, 0.6, 0.8]], atol=1e-7)
    # Round trip: original box -> flipped content -> canvas -> back.
    rng = np.random.default_rng(0)
    yx = np.sort(rng.uniform(0, 1, (50, 2, 2)), axis=1)  # [N, (min, max), (y, x)]
    original = np.stack([yx[:, 0, 0], yx[:, 0, 1], yx[:, 1, 0], yx[:, 1, 1]], 1)
    content_hw, canvas = (180, 300), 300
    flipped = np.stack([original[:, 0], 1 - original[:, 3], original[:, 2], 1 - original[:, 1]], 1)
    on_canvas = flipped * np.array([content_hw[0] / canvas, content_hw[1] / canvas] * 2)
    np.testing.assert_allclose(multiscale.unmap_boxes(on_canvas, content_hw, canvas, True), original, atol=1e-6)
    np.testing.assert_allclose(multiscale.unmap_boxes(original, (660, 660), 660, False), original, atol=1e-7)


def test_boxes_in_the_canvas_padding_are_clipped_away():
    # Content 180 high in a 300 canvas: canvas y 0.7..0.9 is padding.
    boxes = multiscale.unmap_boxes(np.array([[0.7, 0.1, 0.9, 0.3], [0.5, 0.1, 0.9, 0.3]]), (180, 300), 300, False)
    np.testing.assert_allclose(boxes, [[1.0, 0.1, 1.0, 0.3], [0.5 * 300 / 180, 0.1, 1.0, 0.3]], atol=1e-6)
    assert multiscale.keep_by_size(boxes, (180, 300), Scale(1.0), 300).tolist() == [False, True]


def test_size_filters_keep_large_boxes_when_shrunk_and_small_boxes_when_enlarged():
    image_hw = (200, 400)

    def box(height_px, width_px):
        return [0.0, 0.0, height_px / image_hw[0], width_px / image_hw[1]]

    boxes = np.array([box(30, 30), box(10, 40), box(150, 170), box(170, 170)])
    shrink, enlarge = Scale(0.6, keep_max_side_above=32.0), Scale(1.2, keep_min_side_below=160.0)
    assert multiscale.keep_by_size(boxes, image_hw, shrink, 300).tolist() == [False, True, True, True]
    assert multiscale.keep_by_size(boxes, image_hw, enlarge, 300).tolist() == [True, True, True, False]
    # Thresholds scale with the model side: at 150 they are 16 and 80 pixels.
    boxes = np.array([box(15, 15), box(17, 10), box(79, 90), box(81, 90)])
    assert multiscale.keep_by_size(boxes, image_hw, shrink, 150).tolist() == [False, True, True, True]
    assert multiscale.keep_by_size(boxes, image_hw, enlarge, 150).tolist() == [True, True, True, False]


def test_pass_sizes_follow_the_model_side_and_the_image_orientation():
    ratio = Scale(1.0, short=0.6)
    assert multiscale.content_shape(ratio, 300, (375, 500)) == (180, 300)  # landscape becomes wide
    assert multiscale.content_shape(ratio, 300, (500, 375)) == (300, 180)  # portrait becomes tall
    assert multiscale.content_shape(ratio, 300, (300, 300)) == (300, 180)  # square: as RefineDet
    sides = [multiscale.content_shape(s, 300, (375, 500))[0] for s in multiscale.COCO_SCALES[2:]]
    assert sides == [180, 360, 420, 480, 540, 660, 600]
    assert [multiscale.content_shape(s, 160, (9, 9))[0] for s in multiscale.VOC_SCALES[2:]] == [
        96, 192, 224, 256, 288, 352]
    assert [multiscale.canvas_size(s, 300) for s in multiscale.VOC_SCALES] == [300, 300, 300, 360, 420, 480, 540,
                                                                             660]
    assert multiscale.scales_for_metric("voc07") == multiscale.VOC_SCALES
    assert len(multiscale.scales_for_metric("coco")) == len(multiscale.VOC_SCALES) + 1
    assert all(s.flip for s in multiscale.COCO_SCALES)


def test_priors_of_a_larger_input_keep_the_trained_pixel_sizes():
    anchor_cfg = config.AnchorConfig()  # explicit steps 8 ... 300 at 300
    maps_300 = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    np.testing.assert_allclose(anchors_lib.anchors_from_config(anchor_cfg, 300, maps_300, trained_size=300),
                               anchors_lib.anchors_from_config(anchor_cfg, 300, maps_300))
    maps_660 = [(83, 83), (42, 42), (21, 21), (11, 11), (6, 6), (2, 2)]
    priors = anchors_lib.anchors_from_config(anchor_cfg, 660, maps_660, trained_size=300) * 660  # pixels
    first = priors[0]  # level 0, cell (0, 0), the 30-px square at the 8-px step
    np.testing.assert_allclose(first, [4 - 15, 4 - 15, 4 + 15, 4 + 15], atol=1e-4)
    second_cell = priors[4]  # 4 priors per cell at level 0
    np.testing.assert_allclose(second_cell, [4 - 15, 12 - 15, 4 + 15, 12 + 15], atol=1e-4)
    # Derived steps (no explicit steps) follow the new input: 160 model at 352, level 0 is 44 x 44 -> 8 px.
    demo = config.AnchorConfig(steps=())
    maps = [(44, 44), (22, 22), (11, 11), (6, 6), (3, 3), (1, 1)]
    priors = anchors_lib.anchors_from_config(demo, 352, maps, trained_size=160) * 352
    size = 30 * 160 / 300
    np.testing.assert_allclose(priors[0], [4 - size / 2, 4 - size / 2, 4 + size / 2, 4 + size / 2], atol=1e-4)


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config(model__num_classes=3, eval__max_detections=50)
    model = ssd.build_model(cfg.model, cfg.anchors)
    return cfg, model, ssd.model_anchors(model, cfg.anchors, 64)


def test_a_single_unflipped_full_size_pass_equals_single_scale_detection(tiny):
    cfg, model, anchors = tiny
    image = np.random.default_rng(1).integers(0, 256, (1, 50, 90, 3), dtype=np.uint8)
    single = runner.model_predict_fn(cfg, model, anchors)(image)
    # Voting off (no IoU reaches 1.01; clipping to the image can raise two NMS survivors' IoU above 0.45).
    detector = multiscale.MultiScaleDetector(model, cfg.model, cfg.anchors, mean_rgb=cfg.data.mean_rgb,
                                             scales=[Scale(1.0, flip=False)], max_detections=50,
                                             vote_iou_threshold=1.01)
    multi = detector(image)
    # Single-scale minus the boxes clipped to nothing (outside the image), which passes drop.
    boxes = single["boxes"][0, :int(single["num_detections"][0])]
    kept = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    k = int(multi["num_detections"][0])
    assert k == len(kept) > 0
    np.testing.assert_allclose(multi["scores"][0, :k], single["scores"][0, kept], rtol=1e-6)
    np.testing.assert_allclose(multi["boxes"][0, :k], single["boxes"][0, kept], atol=1e-6)
    np.testing.assert_array_equal(multi["classes"][0, :k], single["classes"][0, kept])


def test_the_full_scheme_runs_with_weight_sharing_copies(tiny):
    cfg, model, _ = tiny
    detector = multiscale.make_predict_fn(cfg, model)
    images = np.random.default_rng(2).integers(0, 256, (1, 40, 70, 3), dtype=np.uint8)
    out = detector(images)
    assert out["boxes"].shape == (1, 50, 4) and out["classes"].shape == (1, 50)
    for i in range(1):
        k = int(out["num_detections"][i])
        assert 0 < k <= 50
        boxes = out["boxes"][i, :k]
        assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[:, 2:] > boxes[:, :2])
        assert np.all(np.diff(out["scores"][i, :k]) <= 0) and np.all(out["scores"][i, k:] == 0)
        assert np.all((out["classes"][i, :k] >= 0) & (out["classes"][i, :k] < 3))
    big, priors = detector._network(multiscale.canvas_size(multiscale.VOC_SCALES[-1], 64))  # the 2.2 pass
    assert tuple(big.inputs[0].shape[1:3]) == (141, 141)
    assert len(priors) == anchors_lib.num_anchors(ssd.feature_map_sizes(big), cfg.anchors.anchors_per_location())
    for w_big, w in zip(big.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(w_big, w)
