"""tools/detect.py: draws and lists detections of a SavedModel or .tflite; skips bad images; bad model path: exit 1."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from scratchdet_tf import config, export, export_tflite
from scratchdet_tf.models import ssd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("circle", "square", "triangle")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    cfg = config.Config(
        model=config.ModelConfig(depth=18, width=1 / 16, image_size=64, num_classes=3, bn_momentum=0.0),
        anchors=config.AnchorConfig(steps=()), data=config.DataConfig(class_names=NAMES))
    keras.utils.set_random_seed(0)
    model = ssd.build_model(cfg.model, cfg.anchors)
    calibration = np.stack(list(export_tflite.synthetic_images(8, 64, seed=100)))
    model(calibration.astype(np.float32) - np.float32(cfg.data.mean_rgb), training=True)  # BN statistics
    anchors = ssd.model_anchors(model, cfg.anchors, 64)
    path = str(tmp_path_factory.mktemp("export"))
    export.export_saved_model(model, anchors, cfg, path)
    export_tflite.export_tflite(model, anchors, cfg, path, ["fp32"])
    return path


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(next(export_tflite.synthetic_images(1, 120, seed=3))).save(folder / "good.jpg")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder


def run_detect(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "detect.py"), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("model_file", ["", "model_fp32.tflite"])
def test_folder_with_a_good_and_a_corrupt_image(export_dir, image_folder, tmp_path, model_file):
    out_dir = tmp_path / "out"
    result = run_detect(f"--model={os.path.join(export_dir, model_file)}", f"--images={image_folder}",
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
    result = run_detect(f"--model={tmp_path / 'no_such_model'}", f"--images={image_folder}",
                        f"--out_dir={tmp_path / 'out'}")
    assert result.returncode == 1 and "no_such_model" in result.stderr


def test_missing_images_path_exits_1_naming_it(export_dir, tmp_path):
    result = run_detect(f"--model={export_dir}", f"--images={tmp_path / 'no_images_here'}",
                        f"--out_dir={tmp_path / 'out'}")
    assert result.returncode == 1 and "no_images_here" in result.stderr
