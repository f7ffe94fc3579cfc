"""evaluation.runner: model evaluation end to end, predict functions, test-set files, continuous evaluation."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config
from PIL import Image
from tensorflow.core.util import event_pb2

from scratchdet_tf import config, run_dir
from scratchdet_tf.data import readers, shapes
from scratchdet_tf.evaluation import confusion, devkit, runner
from scratchdet_tf.models import ssd

NUM_IMAGES = 4


@pytest.fixture(scope="module")
def data(make_shapes, tmp_path_factory):
    """The shapes val split (4 images) and the same images as an unlabelled (test-dev style) COCO source."""
    root = make_shapes(0, NUM_IMAGES, seed=3)
    instances_path = os.path.join(root, "val", "instances.json")
    with open(instances_path) as f:
        instances = json.load(f)
    test_json = str(tmp_path_factory.mktemp("test_dev") / "image_info_test.json")
    with open(test_json, "w") as f:
        json.dump({"images": instances["images"], "categories": instances["categories"]}, f)
    image_dir = os.path.dirname(instances_path)
    return {"source": f"shapes:{root}:val", "instances": instances, "test_source": f"coco:{test_json}:{image_dir}"}


@pytest.fixture(scope="module")
def tiny(data):
    cfg = tiny_config(data__train_source=data["source"], data__val_source=data["source"], eval__batch_size=3,
                      eval__max_detections=50)
    model = ssd.build_model(cfg.model, cfg.anchors)
    return cfg, model, ssd.model_anchors(model, cfg.anchors, cfg.model.image_size)


def ground_truth_predict_fn(instances):
    """A predict function that returns each image's ground truth (found by the image's size)."""
    category_ids = sorted(c["id"] for c in instances["categories"])
    by_size = {}
    for image in instances["images"]:
        h, w = image["height"], image["width"]
        anns = [a for a in instances["annotations"] if a["image_id"] == image["id"]]
        boxes = [[y / h, x / w, (y + bh) / h, (x + bw) / w] for x, y, bw, bh in (a["bbox"] for a in anns)]
        labels = [category_ids.index(a["category_id"]) for a in anns]
        by_size[(h, w)] = (np.array(boxes, np.float32), np.array(labels, np.int64))
    assert len(by_size) == len(instances["images"]), "test images need distinct sizes"

    def predict(images):
        boxes, labels = by_size[images.shape[1:3]]
        n = len(labels)
        return {"boxes": boxes[None], "scores": np.linspace(1.0, 0.5, n)[None], "classes": labels[None],
                "num_detections": np.array([n])}

    return predict


def test_tiny_model_evaluates_end_to_end(tiny, tmp_path, capsys):
    cfg, model, anchors = tiny
    metrics = runner.evaluate(cfg, model, anchors, output_dir=str(tmp_path), step=7)
    assert set(metrics) == {"mAP_07", "mAP_area", "per_class", "num_images", "step", "plots", "per_class_table"}
    assert list(metrics["per_class"]) == list(shapes.CLASS_NAMES)
    assert metrics["num_images"] == NUM_IMAGES and metrics["step"] == 7
    assert 0.0 <= metrics["mAP_07"] <= 1.0 and 0.0 <= metrics["mAP_area"] <= 1.0
    with open(tmp_path / runner.METRICS_FILE) as f:
        written = json.load(f)
    assert written["mAP_07"] == pytest.approx(metrics["mAP_07"]) and written["step"] == 7
    lines = capsys.readouterr().out.strip().splitlines()
    at = [line.split()[0] if line.split() else "" for line in lines].index("Method")
    assert lines[at].split() == ["Method", "mAP", *shapes.CLASS_NAMES] and lines[at + 1].split()[0] == model.name
    table = lines[at + 2:]  # then the per-class table: header, one row per class, mean
    assert [line.split()[0] for line in table] == ["class", *shapes.CLASS_NAMES, "mean"]
    with open(metrics["per_class_table"]) as f:
        assert f.read().splitlines() == table
    assert written["plots"] == metrics["plots"] == [str(tmp_path / runner.PR_CURVES_FILE),
                                                    str(tmp_path / runner.CONFUSION_FILE)]
    for path in metrics["plots"]:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 300

    metrics = runner.evaluate(config.replace(cfg, eval__metric="coco"), model, anchors, num_images=2)
    assert list(metrics)[:12] == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
                                  "ARl"]
    assert list(metrics["per_class"]) == list(shapes.CLASS_NAMES) and "plots" not in metrics
    assert metrics["num_images"] == 2 and "Method" in capsys.readouterr().out


def test_model_class_names_must_be_the_sources(data):
    predict = ground_truth_predict_fn(data["instances"])
    named = runner.evaluate_predict_fn(predict, data["source"], class_names=shapes.CLASS_NAMES)
    assert named["mAP_07"] == pytest.approx(1.0, abs=1e-12)
    unnamed = tuple(f"class_{k + 1}" for k in range(len(shapes.CLASS_NAMES)))  # an export that knew no names
    assert runner.evaluate_predict_fn(predict, data["source"], class_names=unnamed)["mAP_07"] == named["mAP_07"]
    with pytest.raises(ValueError, match=r"has the classes \['circle'.*gives \['cat', 'dog'"):
        runner.evaluate_predict_fn(predict, data["source"], class_names=("cat", "dog", "a", "b", "c"))


def test_ground_truth_as_predictions_scores_one(data, tmp_path):
    predict = ground_truth_predict_fn(data["instances"])
    voc = runner.evaluate_predict_fn(predict, data["source"], metric="voc07", output_dir=str(tmp_path))
    assert voc["mAP_07"] == pytest.approx(1.0, abs=1e-12) and voc["mAP_area"] == pytest.approx(1.0, abs=1e-12)
    assert voc["num_images"] == NUM_IMAGES
    assert sum(v["num_gt"] for v in voc["per_class"].values()) == len(data["instances"]["annotations"])
    coco = runner.evaluate_predict_fn(predict, data["source"], metric="coco", output_dir=str(tmp_path / "coco"))
    for name in ("AP", "AP50", "AP75", "AR100"):
        assert coco[name] == pytest.approx(1.0, abs=1e-12), name
    for values in coco["per_class"].values():  # per class: 1, or nan for a class absent from these images
        assert values["num_gt"] == 0 or values["AP"] == pytest.approx(1.0, abs=1e-12)
    assert sum(v["num_gt"] for v in coco["per_class"].values()) == len(data["instances"]["annotations"])
    # Ground truth as detections: a diagonal confusion matrix, drawn; the table has one row per class.
    images = [_GtImage(a, data["instances"]) for a in data["instances"]["images"]]
    matrix = confusion.confusion_matrix(images, len(shapes.CLASS_NAMES))
    assert np.count_nonzero(matrix - np.diag(np.diag(matrix))) == 0 and matrix.sum() == len(
        data["instances"]["annotations"])
    assert [os.path.basename(p) for p in coco["plots"]] == ["pr_curves.png", "confusion_matrix.png"]
    assert all(os.path.getsize(p) > 10_000 for p in coco["plots"])
    for name in ("APs", "APm", "APl"):  # -1: no object of that size
        assert coco[name] == pytest.approx(1.0, abs=1e-12) or coco[name] == -1.0, name


class _GtImage:
    """An image of a COCO instances dict with its ground truth as detections (normalized yxyx)."""

    def __init__(self, image, instances):
        h, w = image["height"], image["width"]
        anns = [a for a in instances["annotations"] if a["image_id"] == image["id"]]
        category_ids = sorted(c["id"] for c in instances["categories"])
        self.gt_boxes = np.array([[y / h, x / w, (y + bh) / h, (x + bw) / w] for x, y, bw, bh in
                                  (a["bbox"] for a in anns)]).reshape(-1, 4)
        self.gt_labels = np.array([category_ids.index(a["category_id"]) for a in anns], np.int64)
        self.gt_difficult = np.zeros(len(anns), bool)
        self.det_boxes, self.det_labels, self.det_scores = self.gt_boxes, self.gt_labels, np.ones(len(anns))


def test_coco_metric_on_a_source_with_string_image_ids(tmp_path):
    """A VOC folder whose image ids are file stems: without an instances JSON, COCO numbers them 1..N."""
    devkit_dir = tmp_path / "VOC"
    boxes = {"img_a": [("dog", [11, 21, 60, 90]), ("cat", [70, 5, 120, 50])], "img_b": [("dog", [5, 5, 40, 44])]}
    for k, (stem, objects) in enumerate(boxes.items()):
        (devkit_dir / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (128 + 8 * k, 96)).save(devkit_dir / "JPEGImages" / f"{stem}.jpg")
        objs = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
                       f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                       for n, b in objects)
        (devkit_dir / "Annotations").mkdir(exist_ok=True)
        (devkit_dir / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><size><width>{128 + 8 * k}</width><height>96</height></size>{objs}</annotation>")
    (devkit_dir / "ImageSets" / "Main").mkdir(parents=True)
    (devkit_dir / "ImageSets" / "Main" / "test.txt").write_text("img_a\nimg_b\n")
    source = f"voc:{devkit_dir}:test"
    dataset, _ = readers.read(source, training=False)
    by_size = {tuple(e["image"].shape[:2]): (e["boxes"].numpy(), e["labels"].numpy()) for e in dataset}
    assert len(by_size) == 2

    def predict(images):
        gt_boxes, labels = by_size[images.shape[1:3]]
        return {"boxes": gt_boxes[None], "scores": np.ones((1, len(labels))), "classes": labels[None],
                "num_detections": np.array([len(labels)])}

    metrics = runner.evaluate_predict_fn(predict, source, metric="coco")
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-12) and metrics["num_images"] == 2
    assert metrics["per_class"]["dog"]["num_gt"] == 2 and metrics["per_class"]["cat"]["num_gt"] == 1
    assert list(metrics["per_class"]) == ["cat", "dog"]  # the devkit's classes (PASCAL's order)


def test_unlabelled_sets_write_the_server_files(data, tiny, tmp_path):
    cfg, model, anchors = tiny
    cfg = config.replace(cfg, eval__metric="voc12")
    metrics = runner.evaluate(cfg, model, anchors, source=data["test_source"], output_dir=str(tmp_path / "voc"))
    folder = str(tmp_path / "voc" / "results" / "VOC2012" / "Main")
    assert metrics == {"results": folder, "num_images": NUM_IMAGES}
    assert sorted(os.listdir(folder)) == sorted(f"comp4_det_test_{c}.txt" for c in shapes.CLASS_NAMES)
    detections = devkit.read_comp4(folder, "test", shapes.CLASS_NAMES)
    assert sorted(detections) == [f"{i}" for i in range(1, NUM_IMAGES + 1)]
    assert all(0 < len(d["scores"]) <= 50 for d in detections.values())

    coco_cfg = config.replace(cfg, eval__metric="coco")
    metrics = runner.evaluate(coco_cfg, model, anchors, source=data["test_source"], output_dir=str(tmp_path / "a"))
    with open(metrics["results"]) as f:
        records = json.load(f)
    assert os.path.basename(metrics["results"]) == runner.COCO_RESULTS_FILE
    assert {r["image_id"] for r in records} == set(range(1, NUM_IMAGES + 1))
    assert {r["category_id"] for r in records} <= set(range(1, 6)) and all(len(r["bbox"]) == 4 for r in records)
    # The batched pipeline and the uint8 predict function give the same detections.
    metrics = runner.evaluate_predict_fn(runner.model_predict_fn(cfg, model, anchors), data["test_source"],
                                           metric="coco", output_dir=str(tmp_path / "b"))
    with open(metrics["results"]) as f:
        again = json.load(f)
    assert len(again) == len(records)

    def key(r):
        return r["image_id"], r["category_id"], -r["score"]

    for a, b in zip(sorted(records, key=key), sorted(again, key=key)):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        np.testing.assert_allclose(a["bbox"] + [a["score"]], b["bbox"] + [b["score"]], rtol=1e-4, atol=1e-3)

    with pytest.raises(ValueError, match="no ground truth"):
        runner.evaluate(cfg, model, anchors, source=data["test_source"])


def test_wrong_class_count_names_the_source(data, tiny):
    cfg, model, anchors = tiny
    with pytest.raises(ValueError, match="has 5 classes"):
        runner.evaluate(config.replace(cfg, model__num_classes=3), model, anchors)


def test_continuous_evaluation_writes_tensorboard_and_stops_at_max_steps(data, tiny, tmp_path):
    cfg, model, _ = tiny
    cfg = config.replace(cfg, train__max_steps=1)
    model_dir = str(tmp_path / "run")
    run_dir.write_config(cfg, model_dir)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), model_dir, 1).save(checkpoint_number=1)
    metrics = runner.evaluate_checkpoints(cfg, model_dir, timeout=30)
    assert metrics["step"] == 1 and metrics["num_images"] == NUM_IMAGES
    assert os.path.isfile(os.path.join(model_dir, "eval", runner.METRICS_FILE))
    tags = {}
    for path in glob.glob(os.path.join(model_dir, "eval", "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            tags.update({value.tag: event.step for value in event.summary.value})
    assert tags["eval/mAP_07"] == 1 and tags["eval/mAP_area"] == 1 and "eval/AP_07/circle" in tags
