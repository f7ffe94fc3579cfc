"""plots: the PNG figures (training curves with the learning rate, precision-recall curves, confusion matrix)."""

import math

import numpy as np
import pytest
from PIL import Image

from scratchdet_tf import plots


def _png(path):
    """The RGB pixels of a PNG file, checked to be a PNG."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def _records():
    records = [{"step": s, "seconds": s / 10, "loss": 6.0 / s, "cls_loss": 4.0 / s, "box_loss": 2.0 / s,
                "lr": 0.05 * min(1.0, s / 10) * 0.5 * (1 + math.cos(math.pi * s / 60))} for s in range(1, 60)]
    return records + [{"step": 30, "seconds": 3.0, "eval": {"mAP_07": 0.4}},
                      {"step": 59, "seconds": 5.9, "eval": {"mAP_07": 0.7}}]


def test_training_curves_with_learning_rate_get_an_lr_panel(tmp_path):
    path = plots.plot_training_curves(_records(), str(tmp_path / "curves.png"), plateau=3.86, target=0.9,
                                      title="run: validation mAP_07 0.700")
    pixels = _png(path)
    assert pixels.shape == (560, 1200, 3) and pixels.std() > 10  # 12 x 5.6 in: the lr row below the losses
    without_lr = [{k: v for k, v in r.items() if k != "lr"} for r in _records()]
    assert _png(plots.plot_training_curves(without_lr, str(tmp_path / "old.png"))).shape == (420, 1200, 3)


def _curves(names, rng):
    curves = {}
    for name in names:
        hits = rng.uniform(size=30) < 0.7
        tp, fp = np.cumsum(hits), np.cumsum(~hits)
        curves[name] = (tp / 25.0, tp / (tp + fp))
    return curves


def test_pr_curves_one_panel_per_class(tmp_path):
    rng = np.random.default_rng(0)
    curves = _curves(["circle", "square", "triangle", "cross"], rng)
    curves["ring"] = (np.zeros(0), np.zeros(0))  # no ground truth
    aps = {"circle": 0.5, "square": 0.25, "triangle": 0.9, "cross": 0.0, "ring": math.nan}
    path = plots.plot_pr_curves(curves, str(tmp_path / "out" / "pr.png"), aps=aps, title="VOC IoU 0.5")
    pixels = _png(path)
    assert pixels.shape == (520, 720, 3)  # 5 classes: 2 rows of 3 panels of 2.4 in, 0.4 in for the title
    assert pixels.std() > 10


@pytest.mark.slow
def test_pr_curves_and_confusion_matrix_for_80_classes_stay_bounded(tmp_path):
    names = [f"class_{k}" for k in range(80)]
    pixels = _png(plots.plot_pr_curves(_curves(names, np.random.default_rng(1)), str(tmp_path / "pr80.png")))
    assert pixels.shape == (1390, 1350, 3)  # 9 x 9 panels of 1.5 in
    matrix = np.random.default_rng(2).integers(0, 50, (81, 81))
    pixels = _png(plots.plot_confusion_matrix(matrix, names, str(tmp_path / "cm80.png"), normalize=True))
    assert pixels.shape == (2400, 2500, 3)  # capped at 24 in


def test_confusion_matrix_png_with_background_row_and_column(tmp_path):
    matrix = np.array([[5, 1, 0, 2], [0, 7, 1, 0], [1, 0, 3, 4], [2, 1, 0, 0]])
    path = plots.plot_confusion_matrix(matrix, ["cat", "dog", "bird"], str(tmp_path / "cm.png"))
    pixels = _png(path)
    assert pixels.shape == (400, 500, 3) and pixels.std() > 10
    normalized = _png(plots.plot_confusion_matrix(matrix, ["cat", "dog", "bird"], str(tmp_path / "n.png"),
                                                  normalize=True))
    assert normalized.shape == pixels.shape and not np.array_equal(normalized, pixels)
    with pytest.raises(ValueError, match=r"does not fit 2 classes"):
        plots.plot_confusion_matrix(matrix, ["cat", "dog"], str(tmp_path / "bad.png"))
