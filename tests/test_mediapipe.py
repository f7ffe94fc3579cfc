"""The TFLite exports in a real runtime: MediaPipe Tasks' ObjectDetector loads them by their metadata.

MediaPipe reads only the model file: the input from the image-tensor metadata, the four outputs by
their metadata names, the class names from the packed labels.txt. The tiny detector trained from
scratch in ~35 s (conftest.learned_run) is exported to fp32 and int8 and run by MediaPipe on
original-size images (not square, not the input size); its detections must be the objects (right
class name, box on the object) and agree with the project's own LiteRT runner
(``predictor.tflite_predict_fn``). The images are from its 64 training images: a model trained
for 35 s memorises those and does not yet generalise (with 256 images it is still on the plateau
after the same 300 steps); the demo model's exports were checked on held-out images by hand
(docs/EXPORT.md).
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from scratchdet_tf import run_dir
from scratchdet_tf.boxes import box_ops
from scratchdet_tf.export import calibration, info, predictor, tflite, tflite_metadata

mp = pytest.importorskip("mediapipe")
from mediapipe.tasks import python as mp_tasks  # noqa: E402
from mediapipe.tasks.python import vision  # noqa: E402

pytestmark = pytest.mark.slow  # trains the tiny detector (~35 s) and converts it to TFLite

SCORE = 0.5
NUM_IMAGES = 6


@pytest.fixture(scope="module")
def exports(learned_run, easy_shapes, tmp_path_factory):
    cfg, model_dir, _ = learned_run
    restored = run_dir.restore_model(model_dir)
    export_dir = str(tmp_path_factory.mktemp("mp_export"))
    representative = calibration.representative_images(
        lambda: calibration.folder_images(os.path.join(easy_shapes, "train")), cfg.model.image_size, 32)
    tflite.export_tflite(restored.model, restored.anchors, cfg, export_dir, ["fp32", "int8"], representative)
    # The .tflite files alone: nothing beside them says what the classes are.
    alone = str(tmp_path_factory.mktemp("alone"))
    for mode in ("fp32", "int8"):
        os.replace(os.path.join(export_dir, f"model_{mode}.tflite"), os.path.join(alone, f"model_{mode}.tflite"))
    return alone


def shapes_images(easy_shapes):
    with open(os.path.join(easy_shapes, "train", "instances.json")) as f:
        coco = json.load(f)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for image in coco["images"][:NUM_IMAGES]:
        pixels = np.asarray(Image.open(os.path.join(easy_shapes, "train", image["file_name"])).convert("RGB"))
        h, w = pixels.shape[:2]
        objects = []
        for a in coco["annotations"]:
            if a["image_id"] == image["id"]:
                x, y, bw, bh = a["bbox"]
                box = np.array([y / h, x / w, (y + bh) / h, (x + bw) / w], np.float32)
                objects.append((names[a["category_id"]], box))
        yield pixels, objects


def mediapipe_detections(path, pixels):
    """MediaPipe's detections as (class name, normalized yxyx box, score), best first."""
    options = vision.ObjectDetectorOptions(base_options=mp_tasks.BaseOptions(model_asset_path=path),
                                           score_threshold=SCORE, max_results=20)
    h, w = pixels.shape[:2]
    with vision.ObjectDetector.create_from_options(options) as detector:
        result = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels)))
    out = []
    for d in result.detections:
        b = d.bounding_box
        box = np.array([b.origin_y / h, b.origin_x / w, (b.origin_y + b.height) / h, (b.origin_x + b.width) / w])
        out.append((d.categories[0].category_name, np.clip(box, 0, 1).astype(np.float32), d.categories[0].score))
    return out


@pytest.mark.parametrize("mode", ["fp32", "int8"])
def test_mediapipe_object_detector_finds_the_objects_and_agrees_with_our_runner(exports, easy_shapes, mode):
    path = os.path.join(exports, f"model_{mode}.tflite")
    names = info.class_names_of(path)  # from the model's own metadata: nothing lies beside it
    assert names == ("circle", "square", "triangle", "cross", "ring")
    assert tflite_metadata.read_metadata(path)["labels"] == names
    ours = predictor.load_predict_fn(path)
    found = total = 0
    for pixels, objects in shapes_images(easy_shapes):
        theirs = mediapipe_detections(path, pixels)
        mine = ours(pixels)
        keep = mine["scores"][0] >= SCORE
        mine_list = [(names[c], b, s) for c, b, s in zip(mine["classes"][0][keep], mine["boxes"][0][keep],
                                                         mine["scores"][0][keep])]
        # Every confident detection of our runner is one of MediaPipe's: same class, same place, same score.
        for name, box, score in mine_list:
            match = [t for t in theirs if t[0] == name
                     and float(box_ops.iou(box[None], t[1][None])[0, 0]) > 0.8 and abs(t[2] - score) < 0.05]
            assert match, f"{mode}: ours {name} {box} {score:.2f} not among MediaPipe's {theirs}"
        assert len(theirs) <= len(mine_list) + 1, (theirs, mine_list)
        # MediaPipe's detections are the objects.
        for name, gt in objects:
            total += 1
            found += any(t[0] == name and float(box_ops.iou(gt[None], t[1][None])[0, 0]) >= 0.5 for t in theirs)
    assert found >= 0.6 * total, f"{mode}: MediaPipe found {found} of {total} objects"
