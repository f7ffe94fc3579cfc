"""Tests for make_dataset: element format, targets, eval bookkeeping, determinism, sharding, bad data."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from scratchdet_tf import config
from scratchdet_tf.boxes import anchors as anchors_lib
from scratchdet_tf.boxes import targets
from scratchdet_tf.data import class_names, pipeline, shapes

SIZE = 64
MAX_BOXES = 8


@pytest.fixture(scope="module")
def shapes_dir(make_shapes):
    """8 training images (4 batches of 2 an epoch) and 5 validation images (batches of 2, 2, 1), seed 1."""
    return make_shapes(8, 5, seed=1)


@pytest.fixture(scope="module")
def priors():
    return anchors_lib.ssd_anchors([(4, 4), (2, 2)], SIZE, min_sizes=[16, 32], max_sizes=[32, 64],
                                   aspect_ratios=[[2.0], [2.0]], steps=None)


def data_config(source, **kwargs):
    return config.DataConfig(train_source=source, val_source=source, max_boxes=MAX_BOXES, **kwargs)


def batches(ds, n):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds.take(n)]


def test_training_batches_are_static_and_targets_match_the_ground_truth(shapes_dir, priors):
    ds = pipeline.make_dataset(data_config(f"shapes:{shapes_dir}"), priors, training=True, image_size=SIZE,
                               batch_size=3)
    spec = ds.element_spec
    assert spec["image"].shape == (3, SIZE, SIZE, 3) and spec["cls_targets"].shape == (3, len(priors))
    assert spec["box_targets"].shape == (3, len(priors), 4) and spec["gt_boxes"].shape == (3, MAX_BOXES, 4)
    assert spec["gt_labels"].dtype == tf.int32 and spec["num_boxes"].shape == (3,) and "image_id" not in spec
    for batch in batches(ds, 4):  # 12 images: the 8-image epoch repeats
        image = batch["image"]
        assert np.all(image >= -123 - 1e-3) and np.all(image <= 255 - 104 + 1e-3)
        for i in range(3):
            n = batch["num_boxes"][i]
            assert n >= 1 and np.all(batch["gt_labels"][i, n:] == -1) and np.all(batch["gt_labels"][i, :n] >= 0)
            cls, box = targets.encode(batch["gt_boxes"][i, :n], batch["gt_labels"][i, :n], priors)
            np.testing.assert_array_equal(batch["cls_targets"][i], cls.numpy())
            np.testing.assert_allclose(batch["box_targets"][i], box.numpy(), atol=1e-5)
            assert np.all(np.isfinite(batch["box_targets"][i]))


def test_eval_covers_each_image_once_with_its_original_size(shapes_dir, priors):
    ds = pipeline.make_dataset(data_config(f"shapes:{shapes_dir}"), priors, training=False, image_size=SIZE,
                               batch_size=2)
    got = batches(ds, 10)
    assert [len(b["image_id"]) for b in got] == [2, 2, 1]
    coco = json.load(open(os.path.join(shapes_dir, "val", "instances.json")))
    sizes = {str(im["id"]).encode(): [im["height"], im["width"]] for im in coco["images"]}
    counts = {}
    for ann in coco["annotations"]:
        counts[str(ann["image_id"]).encode()] = counts.get(str(ann["image_id"]).encode(), 0) + 1
    seen = []
    for b in got:
        for image_id, size, n, difficult in zip(b["image_id"], b["original_size"], b["num_boxes"], b["gt_difficult"]):
            seen.append(image_id)
            assert list(size) == sizes[image_id] and n == counts[image_id] and not difficult.any()
    assert sorted(seen) == sorted(sizes)


def test_use_difficult_false_drops_difficult_boxes_for_training(tmp_path, priors):
    root = tmp_path / "VOC"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        os.makedirs(root / sub)
    tf.io.write_file(str(root / "JPEGImages" / "a.jpg"), tf.io.encode_jpeg(np.zeros((20, 30, 3), np.uint8)))
    objects = "".join(f"<object><name>cat</name><difficult>{d}</difficult><bndbox><xmin>2</xmin><ymin>2</ymin>"
                      f"<xmax>20</xmax><ymax>15</ymax></bndbox></object>" for d in (0, 1, 1))
    (root / "Annotations" / "a.xml").write_text(
        f"<annotation><size><width>30</width><height>20</height></size>{objects}</annotation>")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("a\n")
    for use_difficult, expected in ((True, 3), (False, 1)):
        cfg = data_config(f"voc:{root}:trainval", use_difficult=use_difficult, augment=False)
        (batch,) = batches(pipeline.make_dataset(cfg, priors, training=True, image_size=SIZE, batch_size=1), 1)
        assert batch["num_boxes"][0] == expected


def test_deterministic_seed_reproduces_the_stream(shapes_dir, priors):
    def first(seed):
        cfg = data_config(f"shapes:{shapes_dir}", deterministic=True)
        return batches(pipeline.make_dataset(cfg, priors, training=True, image_size=SIZE, batch_size=2, seed=seed), 2)

    a, b, c = first(3), first(3), first(4)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_input_context_shards_disjointly(shapes_dir, priors):
    seen = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker)
        ds = pipeline.make_dataset(data_config(f"shapes:{shapes_dir}"), priors, training=False, image_size=SIZE,
                                   batch_size=4, input_context=context)
        seen.append({i for b in batches(ds, 10) for i in b["image_id"]})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 5


def test_bad_images_are_skipped_and_reported_every_epoch(shapes_dir, priors, tmp_path, capfd):
    root = tmp_path / "bad"
    shutil.copytree(shapes_dir, root)
    (root / "train" / "000002.jpg").write_text("no image here")
    data = (root / "train" / "000005.jpg").read_bytes()
    (root / "train" / "000005.jpg").write_bytes(data[: len(data) // 3])
    ds = pipeline.make_dataset(data_config(f"shapes:{root}"), priors, training=True, image_size=SIZE, batch_size=3)
    for batch in batches(ds, 5):  # 15 images from 6 good ones: two epochs end
        assert np.all(np.isfinite(batch["image"])) and np.all(np.isfinite(batch["box_targets"]))
    err = capfd.readouterr().err
    for epoch in (1, 2):
        assert f"epoch {epoch}: skipped 2 unreadable, truncated or oversized images" in err
    assert "000002.jpg" in err and "000005.jpg" in err


def test_class_names_come_from_the_source_and_must_match_the_config(shapes_dir, priors):
    def names(data_cfg):
        return class_names.for_config(config.Config(data=data_cfg, model=config.ModelConfig(num_classes=5)))

    assert names(data_config(f"shapes:{shapes_dir}")) == shapes.CLASS_NAMES
    cfg = data_config(f"shapes:{shapes_dir}", class_names=("a", "b", "c", "d", "e"))
    assert names(cfg) == ("a", "b", "c", "d", "e")
    with pytest.raises(ValueError, match="circle"):
        pipeline.make_dataset(cfg, priors, training=True, image_size=SIZE, batch_size=2)


def test_iterator_checkpoint_resumes_the_stream(shapes_dir, priors, tmp_path):
    cfg = data_config(f"shapes:{shapes_dir}", deterministic=True)
    ds = pipeline.make_dataset(cfg, priors, training=True, image_size=SIZE, batch_size=2, seed=1)
    it = iter(ds)
    next(it)
    ckpt = tf.train.Checkpoint(data=it)
    path = ckpt.save(str(tmp_path / "ckpt"))
    expected = [next(it)["image"].numpy() for _ in range(5)]  # crosses the epoch end (4 batches per epoch)
    restored = iter(ds)
    tf.train.Checkpoint(data=restored).restore(path)
    for want in expected:
        np.testing.assert_array_equal(next(restored)["image"].numpy(), want)
