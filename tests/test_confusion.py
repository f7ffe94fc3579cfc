"""evaluation.confusion: the detection confusion matrix, by hand and against a plain-Python brute force."""

import numpy as np
import pytest

from scratchdet_tf.evaluation import confusion

# Normalized yxyx boxes far apart.
A, B, D = [0.0, 0.0, 0.2, 0.2], [0.0, 0.5, 0.2, 0.7], [0.5, 0.5, 0.9, 0.9]
NOWHERE = [0.8, 0.0, 1.0, 0.1]


def _image(gt_boxes, gt_labels, det_boxes, det_scores, det_labels, gt_difficult=None):
    return {"gt_boxes": np.reshape(gt_boxes, (-1, 4)), "gt_labels": np.asarray(gt_labels, np.int64),
            "gt_difficult": None if gt_difficult is None else np.asarray(gt_difficult, bool),
            "det_boxes": np.reshape(det_boxes, (-1, 4)), "det_scores": np.asarray(det_scores, np.float64),
            "det_labels": np.asarray(det_labels, np.int64)}


def test_hand_computed_matrix_rows_predicted_columns_true():
    # GT: A cat(0), B dog(1), D dog(1) difficult.
    # Detections by score: dog on A (.9) -> [dog, cat]; cat on A (.8) -> A is taken: false positive [cat, bg];
    # dog on D (.7) -> difficult: not counted; cat on NOWHERE (.6) -> [cat, bg]; dog on B (.1) below the
    # threshold -> B is missed: [bg, dog]. D, difficult and matched, counts nowhere.
    image = _image([A, B, D], [0, 1, 1], [A, A, D, NOWHERE, B], [0.9, 0.8, 0.7, 0.6, 0.1], [1, 0, 1, 0, 1],
                   gt_difficult=[False, False, True])
    expected = np.array([[0, 0, 2],   # predicted cat
                         [1, 0, 0],   # predicted dog
                         [0, 1, 0]])  # predicted background (missed)
    np.testing.assert_array_equal(confusion.confusion_matrix([image], 2), expected)
    # A lower score threshold lets the dog on B in; an unmatched difficult box is not a miss.
    expected_low = np.array([[0, 0, 2], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(confusion.confusion_matrix([image], 2, score_threshold=0.05), expected_low)
    no_det_on_d = _image([D], [1], [], [], [], gt_difficult=[True])
    np.testing.assert_array_equal(confusion.confusion_matrix([no_det_on_d], 2), np.zeros((3, 3)))


def test_matches_the_best_unmatched_box_highest_score_first():
    # Two overlapping boxes; the first detection covers both but P best; the second goes to the box left.
    p, q = [0.0, 0.0, 0.4, 0.4], [0.0, 0.1, 0.4, 0.5]  # IoU 0.6
    det = [0.0, 0.04, 0.4, 0.44]  # IoU 0.82 with p, 0.75 with q
    assert confusion.pairwise_iou([det], [p, q])[0] == pytest.approx([0.36 / 0.44, 0.34 / 0.46])
    image = _image([p, q], [0, 1], [det, det], [0.9, 0.8], [0, 0])
    np.testing.assert_array_equal(confusion.confusion_matrix([image], 2), [[1, 1, 0], [0, 0, 0], [0, 0, 0]])
    # Below the IoU threshold nothing matches: two false positives and two misses.
    np.testing.assert_array_equal(confusion.confusion_matrix([image], 2, iou_threshold=0.9),
                                  [[0, 0, 2], [0, 0, 0], [1, 1, 0]])


def _brute_force(images, num_classes, score_threshold, iou_threshold):
    """The rules in plain Python loops over boxes (scalar IoU, explicit search), independent of numpy."""
    def iou(a, b):
        h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - h * w
        return h * w / union if union > 0 else 0.0

    bg = num_classes
    matrix = [[0] * (num_classes + 1) for _ in range(num_classes + 1)]
    for im in images:
        gts = list(zip(im["gt_boxes"].tolist(), im["gt_labels"].tolist(), im["gt_difficult"].tolist()))
        dets = [d for d in zip(im["det_boxes"].tolist(), im["det_scores"].tolist(), im["det_labels"].tolist())
                if d[1] >= score_threshold]
        dets = sorted(dets, key=lambda d: -d[1])  # stable
        taken = [False] * len(gts)
        for box, _, label in dets:
            best, best_iou = None, -1.0
            for g, (gt_box, _, _) in enumerate(gts):
                if not taken[g] and iou(box, gt_box) > best_iou:
                    best, best_iou = g, iou(box, gt_box)
            if best is None or best_iou < iou_threshold:
                matrix[label][bg] += 1
            else:
                taken[best] = True
                if not gts[best][2]:
                    matrix[label][gts[best][1]] += 1
        for (_, label, difficult), was_taken in zip(gts, taken):
            if not was_taken and not difficult:
                matrix[bg][label] += 1
    return np.array(matrix)


def _random_images(rng, num_images, num_classes):
    images = []
    for _ in range(num_images):
        n = int(rng.integers(0, 6))
        centers = rng.uniform(0.1, 0.9, (n, 2))
        sizes = rng.uniform(0.05, 0.3, (n, 2))
        gt = np.concatenate([centers - sizes / 2, centers + sizes / 2], 1)
        # Detections: jittered copies of the boxes (some twice), plus random ones.
        copies = gt[rng.integers(0, n, int(rng.integers(0, 2 * n + 1)))] if n else np.zeros((0, 4))
        copies = copies + rng.normal(0, 0.03, copies.shape)
        extra = rng.uniform(0, 1, (int(rng.integers(0, 3)), 2))
        extra = np.concatenate([extra, extra + 0.1], 1)
        det = np.concatenate([copies, extra])
        images.append(_image(gt, rng.integers(0, num_classes, n), det, rng.uniform(0, 1, len(det)),
                             rng.integers(0, num_classes, len(det)), gt_difficult=rng.uniform(size=n) < 0.2))
    return images


@pytest.mark.parametrize("seed", range(3))
def test_equals_brute_force_on_random_images(seed):
    rng = np.random.default_rng(seed)
    images = _random_images(rng, 30, 4)
    for score_threshold, iou_threshold in ((0.25, 0.5), (0.0, 0.3)):
        got = confusion.confusion_matrix(images, 4, score_threshold=score_threshold, iou_threshold=iou_threshold)
        np.testing.assert_array_equal(got, _brute_force(images, 4, score_threshold, iou_threshold))
        # Each true class's column holds each of its non-difficult boxes once: found or missed.
        gt_labels = np.concatenate([im["gt_labels"][~im["gt_difficult"]] for im in images])
        np.testing.assert_array_equal(got[:, :4].sum(0), np.bincount(gt_labels, minlength=4))
        assert got[4, 4] == 0


def test_ground_truth_as_detections_is_diagonal_and_attributes_work():
    class Image:  # the runner passes objects with these attributes
        def __init__(self, **fields):
            self.__dict__.update(fields)

    im = _image([A, B, D], [0, 1, 2], [A, B, D], [0.9, 0.8, 0.7], [0, 1, 2])
    np.testing.assert_array_equal(confusion.confusion_matrix([Image(**im), im], 3), np.diag([2, 2, 2, 0]))


def test_bad_labels_are_named():
    with pytest.raises(ValueError, match=r"det_labels must be in 0..1"):
        confusion.image_confusion([A], [0], None, [A], [0.9], [2], num_classes=2)
