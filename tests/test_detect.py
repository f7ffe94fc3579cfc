"""tools/detect.py: draws and lists detections of a SavedModel or .tflite; skips bad images; bad model path: exit 1."""

import json
import os

import numpy as np
import pytest
from conftest import calibrated_model, run_tool, tiny_config
from PIL import Image

from scratchdet_tf.export import calibration, saved_model, tflite

NAMES = ("circle", "square", "triangle")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """The calibrated tiny detector for 3 named classes as a SavedModel and an fp32 .tflite."""
    cfg = tiny_config(model__num_classes=3, model__bn_momentum=0.0, data__class_names=NAMES)
    model, anchors = calibrated_model(cfg)
    path = str(tmp_path_factory.mktemp("export"))
    saved_model.export_saved_model(model, anchors, cfg, path)
    tflite.export_tflite(model, anchors, cfg, path, ["fp32"])
    return path


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(next(calibration.synthetic_images(1, 120, seed=3))).save(folder / "good.jpg")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("model_file", ["", "model_fp32.tflite"])
def test_folder_with_a_good_and_a_corrupt_image(export_dir, image_folder, tmp_path, model_file):
    out_dir = tmp_path / "out"
    result = run_tool("detect", f"--model={os.path.join(export_dir, model_file)}", f"--images={image_folder}",
                      f"--out_dir={out_dir}", "--score_threshold=0.3")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["images"] == 1 and summary["skipped"] == 1 and summary["out_dir"] == str(out_dir)
    assert "corrupt.jpg" in result.stderr and "skipping unreadable image" in result.stderr

    with open(out_dir / "detections.json") as f:
        listing = json.load(f)
    (entry,) = listing["images"]
    assert entry["file"].endswith("good.jpg") and (entry["height"], entry["width"]) == (120, 120)
    assert len(entry["detections"]) == summary["detections"] > 0
    for detection in entry["detections"]:
        assert detection["score"] >= 0.3 and detection["class"] == NAMES[detection["label"]]
        ymin, xmin, ymax, xmax = detection["box"]
        assert 0 <= ymin <= ymax <= 1 and 0 <= xmin <= xmax <= 1
    assert listing["skipped"][0].endswith("corrupt.jpg")

    drawn = np.asarray(Image.open(out_dir / "good.png"))
    original = np.asarray(Image.open(image_folder / "good.jpg"))
    assert drawn.shape == original.shape and (drawn != original).any()  # boxes were drawn
    assert sorted(os.listdir(out_dir)) == ["detections.json", "good.png"]


def test_wrong_model_path_exits_1_naming_it(image_folder, tmp_path):
    result = run_tool("detect", f"--model={tmp_path / 'no_such_model'}", f"--images={image_folder}",
                      f"--out_dir={tmp_path / 'out'}")
    assert result.returncode == 1 and "no_such_model" in result.stderr


@pytest.mark.slow
def test_missing_images_path_exits_1_naming_it(export_dir, tmp_path):
    result = run_tool("detect", f"--model={export_dir}", f"--images={tmp_path / 'no_images_here'}",
                      f"--out_dir={tmp_path / 'out'}")
    assert result.returncode == 1 and "no_images_here" in result.stderr
