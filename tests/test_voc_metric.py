"""voc_metric: the VOC devkit's AP rules (11-point and area), checked by hand and against a brute-force devkit loop."""

import math

import numpy as np
import pytest

from scratchdet_tf.evaluation import voc_metric


def _gt(boxes, labels, difficult=None):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, bool)
    return {"boxes": boxes, "labels": np.asarray(labels, np.int64), "difficult": difficult}


def _det(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "scores": np.asarray(scores, np.float64),
            "labels": np.asarray(labels, np.int64)}


# Three 10x10 boxes far apart (pixels, inclusive: 1..10 is 10 wide).
A, B, C = [1, 1, 10, 10], [31, 1, 40, 10], [61, 1, 70, 10]
NOWHERE = [100, 100, 110, 110]


# ---------------------------------------------------------------------------------------- AP by hand


def test_voc_ap_11_point_and_area_differ_as_computed_by_hand():
    # Detections TP, FP, TP against 3 boxes: recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3.
    # 11-point: t = 0, .1, .2, .3 -> best precision at recall >= t is 1; t = .4, .5, .6 -> 2/3;
    #   t = .7 ... 1 -> no such recall, 0.  AP = (4 * 1 + 3 * 2/3) / 11 = 6/11.
    # Area: envelope 1 on (0, 1/3], 2/3 on (1/3, 2/3], 0 after.  AP = 1/3 + 2/9 = 5/9.
    recall, precision = [1 / 3, 1 / 3, 2 / 3], [1.0, 0.5, 2 / 3]
    assert voc_metric.voc_ap(recall, precision, use_07_metric=True) == pytest.approx(6 / 11, abs=1e-15)
    assert voc_metric.voc_ap(recall, precision, use_07_metric=False) == pytest.approx(5 / 9, abs=1e-15)

    gts = {"img": _gt([A, B, C], [0, 0, 0])}
    dets = {"img": _det([A, NOWHERE, B], [0.9, 0.8, 0.7], [0, 0, 0])}
    result = voc_metric.voc_evaluate(dets, gts, ["dog"])
    assert result["per_class"]["dog"]["ap_07"] == pytest.approx(6 / 11, abs=1e-15)
    assert result["per_class"]["dog"]["ap_area"] == pytest.approx(5 / 9, abs=1e-15)
    assert result["mAP_07"] == pytest.approx(6 / 11, abs=1e-15)
    assert result["per_class"]["dog"]["num_gt"] == 3


def test_voc07_thresholds_are_matlabs_colon_range():
    # MATLAB's 0:0.1:1 has t(8) = 1 - 3*0.1 == 0.7, so a recall of exactly 7/10 counts for t = 0 ... 0.7
    # (8 of 11 thresholds); np.arange's 0.7000000000000001 would give 7/11.  But t(4) = 3*0.1 =
    # 0.30000000000000004 > 3/10, so a recall of exactly 3/10 counts only for t = 0, .1, .2.
    assert voc_metric.voc_ap([7 / 10], [1.0], True) == pytest.approx(8 / 11, abs=1e-15)
    assert voc_metric.voc_ap([6 / 10], [1.0], True) == pytest.approx(7 / 11, abs=1e-15)
    assert voc_metric.voc_ap([3 / 10], [1.0], True) == pytest.approx(3 / 11, abs=1e-15)
    assert voc_metric.voc_ap([1.0], [0.5], False) == 0.5


def test_voc_ap_rejects_mismatched_curves():
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        voc_metric.voc_ap([0.1, 0.2], [1, 1, 1], True)


def test_duplicate_detection_is_false_positive():
    # d1 on A (TP), d2 on A again (FP), d3 on B (TP): recall .5, .5, 1; precision 1, 1/2, 2/3.
    # 11-point: t = 0 ... .5 (6 thresholds) -> 1; t = .6 ... 1 (5) -> 2/3.  AP = (6 + 10/3) / 11 = 28/33.
    # Area: 0.5 * 1 + 0.5 * 2/3 = 5/6.  (Ignoring the duplicate instead would give 1 and 1.)
    gts = {"img": _gt([A, B], [0, 0])}
    dets = {"img": _det([A, A, B], [0.9, 0.8, 0.7], [0, 0, 0])}
    result = voc_metric.voc_evaluate(dets, gts, ["dog"])["per_class"]["dog"]
    assert result["ap_07"] == pytest.approx(28 / 33, abs=1e-15)
    assert result["ap_area"] == pytest.approx(5 / 6, abs=1e-15)


def test_detection_on_difficult_box_is_neither_tp_nor_fp():
    # B is difficult.  d1 on B is ignored, d2 on A is TP: recall 1, precision 1, both APs 1.  Were d1 a FP,
    # precision would be 1/2; were B a positive, recall would be 1/2.
    gts = {"img": _gt([A, B], [0, 0], difficult=[False, True])}
    dets = {"img": _det([B, A], [0.9, 0.8], [0, 0])}
    result = voc_metric.voc_evaluate(dets, gts, ["dog"])["per_class"]["dog"]
    # 11 x (1/11), summed one by one as the devkit does, is 1.0000000000000002.
    assert result == {"ap_07": pytest.approx(1.0, abs=1e-15), "ap_area": 1.0, "num_gt": 1}


def test_missed_difficult_box_does_not_lower_recall():
    gts = {"img": _gt([A, B], [0, 0], difficult=[False, True])}
    dets = {"img": _det([A], [0.9], [0])}
    assert voc_metric.voc_evaluate(dets, gts, ["dog"])["per_class"]["dog"]["ap_area"] == 1.0


def test_detection_takes_its_best_box_even_when_already_matched():
    # A2 overlaps A with IoU 0.8 and is the best box for d2 = A2-shifted; A is taken by d1, so d2 is a FP
    # although it also overlaps the free box A2 with IoU >= 0.5 (the devkit does not re-assign).
    a2 = [3, 1, 12, 10]  # IoU(A, a2) = 80 / 120 = 2/3
    d2 = [2, 1, 11, 10]  # IoU with A: 90/110 = .818; with a2: 90/110 = .818 -> tie, first box (A) wins
    gts = {"img": _gt([A, a2], [0, 0])}
    dets = {"img": _det([A, d2], [0.9, 0.8], [0, 0])}
    result = voc_metric.voc_evaluate(dets, gts, ["dog"])["per_class"]["dog"]
    # TP, FP against 2 boxes: recall .5, .5; precision 1, .5 -> 11-point 6/11, area 1/2.
    assert result["ap_07"] == pytest.approx(6 / 11, abs=1e-15)
    assert result["ap_area"] == 0.5


def test_iou_uses_inclusive_pixels_and_half_overlap_matches():
    # Box 1..2 is 2 pixels wide.  GT 2x2 = 4 px, detection 2x4 = 8 px, intersection 4: IoU = 0.5 exactly,
    # a TP under the devkit's ">= 0.5".  Without the +1 it would be 1x1 vs 1x3, IoU 1/3, a FP.
    gts = {"img": _gt([[1, 1, 2, 2]], [0])}
    dets = {"img": _det([[1, 1, 2, 4]], [0.9], [0])}
    assert voc_metric.voc_evaluate(dets, gts, ["dog"])["mAP_area"] == 1.0
    dets = {"img": _det([[1, 1, 2, 5]], [0.9], [0])}  # IoU 4/10
    assert voc_metric.voc_evaluate(dets, gts, ["dog"])["mAP_area"] == 0.0


def test_class_without_ground_truth_is_nan_and_left_out_of_the_mean():
    gts = {"img": _gt([A], [0])}
    dets = {"img": _det([A, B], [0.9, 0.8], [0, 1])}
    result = voc_metric.voc_evaluate(dets, gts, ["dog", "cat"])
    assert math.isnan(result["per_class"]["cat"]["ap_07"]) and math.isnan(result["per_class"]["cat"]["ap_area"])
    assert result["mAP_07"] == pytest.approx(1.0, abs=1e-15) and result["mAP_area"] == 1.0
    assert math.isnan(voc_metric.voc_evaluate({}, {"img": _gt([], [])}, ["dog"])["mAP_07"])


def test_image_without_detections_and_class_without_detections_score_zero():
    gts = {"a": _gt([A], [0]), "b": _gt([B], [1])}
    result = voc_metric.voc_evaluate({"a": _det([A], [0.5], [0])}, gts, ["dog", "cat"])
    assert result["per_class"]["dog"]["ap_07"] == pytest.approx(1.0, abs=1e-15)
    assert result["per_class"]["cat"]["ap_07"] == 0.0
    assert result["mAP_area"] == 0.5


def test_bad_inputs_fail_loudly():
    gts = {"img": _gt([A], [0])}
    with pytest.raises(ValueError, match="not in the ground truth.*'other'"):
        voc_metric.voc_evaluate({"other": _det([A], [0.9], [0])}, gts, ["dog"])
    with pytest.raises(ValueError, match=r"labels must be in 0..0, got \[3\]"):
        voc_metric.voc_evaluate({"img": _det([A], [0.9], [3])}, gts, ["dog"])
    with pytest.raises(ValueError, match=r"detections\['img'\]\['scores'\].*got \(2,\)"):
        voc_metric.voc_evaluate({"img": _det([A], [0.9, 0.8], [0])}, gts, ["dog"])
    with pytest.raises(ValueError, match="non-finite"):
        voc_metric.voc_evaluate({"img": _det([A], [np.nan], [0])}, gts, ["dog"])


# ------------------------------------------------------------------- brute-force devkit reference


def _matlab_colon_tenths():
    """MATLAB's 0:0.1:1 (colonop: a + k*d for the first half, b - k*d from the end, midpoint (a+b)/2)."""
    t = [0.0] * 11
    for k in range(6):
        t[k] = 0.0 + k * 0.1
        t[10 - k] = 1.0 - k * 0.1
    t[5] = 0.5
    return t


def _devkit_reference(detections, ground_truths, num_classes):
    """Plain-Python transliteration of VOCevaldet.m / py-faster-rcnn voc_eval: one detection at a time.

    The devkit's rules where the two differ: IoU >= 0.5 (voc_eval: > 0.5), MATLAB's 11 thresholds, a stable
    score sort (MATLAB's sort; voc_eval's np.argsort is not stable). Precision uses voc_eval's eps guard.
    """
    result = []
    for c in range(num_classes):
        recs, npos = {}, 0
        for image_id, g in ground_truths.items():
            keep = [j for j in range(len(g["labels"])) if g["labels"][j] == c]
            recs[image_id] = {"BB": [list(g["boxes"][j]) for j in keep],
                              "diff": [bool(g["difficult"][j]) for j in keep]}
            recs[image_id]["det"] = [False] * len(keep)
            npos += sum(not d for d in recs[image_id]["diff"])
        ids, conf, bbs = [], [], []
        for image_id in ground_truths:  # the comp4 file, written in image-set order
            d = detections.get(image_id, {"labels": []})
            for j in range(len(d["labels"])):
                if d["labels"][j] == c:
                    ids.append(image_id), conf.append(float(d["scores"][j])), bbs.append(list(d["boxes"][j]))
        si = sorted(range(len(conf)), key=lambda k: -conf[k])
        tp, fp = [0] * len(si), [0] * len(si)
        for d, k in enumerate(si):
            r, bb, ovmax, jmax = recs[ids[k]], bbs[k], -math.inf, -1
            for j, bbgt in enumerate(r["BB"]):
                iw = min(bb[2], bbgt[2]) - max(bb[0], bbgt[0]) + 1
                ih = min(bb[3], bbgt[3]) - max(bb[1], bbgt[1]) + 1
                if iw > 0 and ih > 0:
                    ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (bbgt[2] - bbgt[0] + 1) * (
                        bbgt[3] - bbgt[1] + 1) - iw * ih
                    ov = iw * ih / ua
                    if ov > ovmax:
                        ovmax, jmax = ov, j
            if ovmax >= 0.5:
                if not r["diff"][jmax]:
                    if not r["det"][jmax]:
                        tp[d], r["det"][jmax] = 1, True
                    else:
                        fp[d] = 1
            else:
                fp[d] = 1
        if npos == 0:
            result.append((math.nan, math.nan))
            continue
        rec, prec, ctp, cfp = [], [], 0, 0
        for t_, f_ in zip(tp, fp):
            ctp, cfp = ctp + t_, cfp + f_
            rec.append(ctp / npos)
            prec.append(ctp / max(ctp + cfp, np.finfo(np.float64).eps))
        ap07 = 0.0
        for t in _matlab_colon_tenths():
            p = [pr for re, pr in zip(rec, prec) if re >= t]
            ap07 = ap07 + (max(p) if p else 0.0) / 11
        mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        ap_area = sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
        result.append((ap07, ap_area))
    return result


def _random_case(seed, num_images=6, num_classes=3):
    """Integer boxes on a 24-pixel grid (exact IoU ties and 0.5s happen), tied scores, 20 % difficult."""
    rng = np.random.default_rng(seed)

    def boxes(n):
        xy = rng.integers(1, 24, (n, 2))
        return np.concatenate([xy, xy + rng.integers(0, 12, (n, 2))], 1).astype(np.float64)

    gts, dets = {}, {}
    for i in range(num_images):
        n, m = rng.integers(0, 5), rng.integers(0, 9)
        gts[f"im{i}"] = _gt(boxes(n), rng.integers(0, num_classes, n), rng.random(n) < 0.2)
        if rng.random() < 0.9:
            near = rng.integers(0, max(n, 1), m) if n else np.zeros(0, int)
            det_boxes = boxes(m) if not n else gts[f"im{i}"]["boxes"][near] + rng.integers(-2, 3, (m, 4))
            labels = rng.integers(0, num_classes, m) if not n else np.where(
                rng.random(m) < 0.8, gts[f"im{i}"]["labels"][near], rng.integers(0, num_classes, m))
            dets[f"im{i}"] = _det(det_boxes, np.round(rng.random(m), 1), labels)
    return dets, gts


@pytest.mark.parametrize("seed", range(40))
def test_fast_matches_brute_force_devkit_loop(seed):
    dets, gts = _random_case(seed)
    result = voc_metric.voc_evaluate(dets, gts, ["a", "b", "c"])
    expected = _devkit_reference(dets, gts, 3)
    for (ap07, ap_area), name in zip(expected, ["a", "b", "c"]):
        got = result["per_class"][name]
        assert got["ap_07"] == pytest.approx(ap07, rel=1e-12, abs=1e-15, nan_ok=True)
        assert got["ap_area"] == pytest.approx(ap_area, rel=1e-12, abs=1e-15, nan_ok=True)
    # Tied scores rank by ground-truth image order, whatever order the detections come in.
    shuffled = dict(reversed(list(dets.items())))
    assert voc_metric.voc_evaluate(shuffled, gts, ["a", "b", "c"]) == result


def test_brute_force_agreement_on_a_larger_case():
    dets, gts = _random_case(1234, num_images=60, num_classes=5)
    result = voc_metric.voc_evaluate(dets, gts, list("abcde"))
    expected = _devkit_reference(dets, gts, 5)
    got = [(v["ap_07"], v["ap_area"]) for v in result["per_class"].values()]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------ VocEvaluator


def test_normalized_to_voc_pixels_inverts_the_voc_reader():
    # voc: reader: normalized = ((xmin - 1) / W, ..., xmax / W).  Image 100 high, 50 wide.
    pixels = voc_metric.normalized_to_voc_pixels([[0.1, 0.2, 0.5, 1.0]], (100, 50))
    np.testing.assert_array_equal(pixels, [[11.0, 11.0, 50.0, 50.0]])


def test_voc_evaluator_equals_voc_evaluate_on_pixels():
    dets, gts = _random_case(7, num_images=10)
    height, width = 32, 64  # powers of two: pixel / size is exact in float32

    def norm(b):
        return (np.asarray(b)[:, [1, 0, 3, 2]] / [height, width, height, width]).astype(np.float32)

    evaluator = voc_metric.VocEvaluator(["a", "b", "c"])
    empty = _det([], [], [])
    for image_id, g in gts.items():
        d = dets.get(image_id, empty)
        evaluator.add(image_id, norm(g["boxes"]), g["labels"], g["difficult"], norm(d["boxes"]), d["scores"],
                      d["labels"], image_size=(height, width))
    assert evaluator.result() == voc_metric.voc_evaluate(dets, gts, ["a", "b", "c"])
    with pytest.raises(ValueError, match="'im0' added twice"):
        evaluator.add("im0", np.zeros((0, 4)), [], [], np.zeros((0, 4)), [], [], (height, width))


# ------------------------------------------------------------------------------------ curves


def test_curves_are_the_hand_computed_points_and_give_the_aps():
    # dog: TP, FP, ignored (on the difficult box), TP of 3 -> recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3.
    hard = [200, 200, 220, 220]
    gts = {"img": _gt([A, B, C, hard], [0, 0, 0, 0], difficult=[False, False, False, True]),
           "other": _gt([NOWHERE], [1])}
    dets = {"img": _det([A, NOWHERE, hard, B], [0.9, 0.8, 0.75, 0.7], [0, 0, 0, 0])}
    curves = voc_metric.voc_curves(dets, gts, ["dog", "cat", "bus"])
    recall, precision = curves["dog"]
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3], rtol=0, atol=1e-15)
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3], rtol=0, atol=1e-15)
    assert [a.size for a in curves["cat"]] == [0, 0]  # ground truth but no detection: empty curve
    assert [a.size for a in curves["bus"]] == [0, 0]  # no ground truth
    result = voc_metric.voc_evaluate(dets, gts, ["dog", "cat", "bus"])["per_class"]
    for name, (recall, precision) in curves.items():
        for use_07, key in ((True, "ap_07"), (False, "ap_area")):
            if result[name]["num_gt"]:
                assert voc_metric.voc_ap(recall, precision, use_07) == result[name][key]
    assert result["dog"]["ap_07"] == pytest.approx(6 / 11, abs=1e-15)


def test_evaluator_curves_on_normalized_boxes():
    evaluator = voc_metric.VocEvaluator(["a", "b"])
    evaluator.add("x", [[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], [0, 1], [False, False],
                  [[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], [0.9, 0.8, 0.7], [0, 0, 1], (100, 100))
    curves = evaluator.curves()
    np.testing.assert_array_equal(curves["a"][0], [1.0, 1.0])  # TP, then a duplicate (FP)
    np.testing.assert_array_equal(curves["a"][1], [1.0, 0.5])
    np.testing.assert_array_equal(curves["b"][0], [1.0])
    assert evaluator.result()["per_class"]["a"]["ap_area"] == 1.0
