"""Tests for the synthetic shapes dataset and tools/make_shapes.py."""

import json
import os

import numpy as np
import pytest
from conftest import run_tool
from pycocotools import coco as coco_api

from scratchdet_tf.data import shapes


def test_split_is_valid_coco_and_follows_the_recipe(tmp_path):
    path = shapes.write_split(str(tmp_path), "train", 12, seed=3)
    gt = coco_api.COCO(path)
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == list(shapes.CLASS_NAMES)
    assert len(gt.getImgIds()) == 12
    for image in gt.loadImgs(gt.getImgIds()):
        h, w = image["height"], image["width"]
        assert 160 <= h <= 400 and 160 <= w <= 400 and h != w
        anns = gt.loadAnns(gt.getAnnIds(imgIds=image["id"]))
        assert 1 <= len(anns) <= 6
        for ann in anns:
            x, y, bw, bh = ann["bbox"]
            assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
            assert max(bw, bh) >= 0.05 * min(h, w) - 1 and min(bw, bh) <= 0.6 * min(h, w) + 1
            assert ann["iscrowd"] == 0 and 0 < ann["area"] <= bw * bh


def test_same_seed_writes_same_files_and_other_seed_differs(tmp_path):
    a = shapes.write_split(str(tmp_path / "a"), "val", 3, seed=5)
    b = shapes.write_split(str(tmp_path / "b"), "val", 3, seed=5)
    c = shapes.write_split(str(tmp_path / "c"), "val", 3, seed=6)
    assert open(a).read() == open(b).read() != open(c).read()
    jpeg = lambda p: open(os.path.join(os.path.dirname(p), "000002.jpg"), "rb").read()  # noqa: E731
    assert jpeg(a) == jpeg(b)


def test_box_is_tight_around_the_topmost_drawn_shape():
    for index in range(12):
        pixels, objects = shapes.draw_image(np.random.default_rng([0, 0, index]), noise=False)
        _, (x, y, w, h), area = objects[-1]  # drawn last: nothing hides it
        patch = pixels[y:y + h, x:x + w].reshape(-1, 3)
        colours, counts = np.unique(patch, axis=0, return_counts=True)
        colour = colours[np.argmax(counts)]  # the shape covers the most pixels of its box
        is_shape = np.all(pixels == colour, axis=-1)
        ys, xs = np.nonzero(is_shape)
        assert (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == (x, y, w, h)
        assert is_shape.sum() == area


def test_make_shapes_tool_prints_json_last(tmp_path):
    out = run_tool("make_shapes", f"--out_dir={tmp_path}", "--num_train=3", "--num_val=2", "--seed=1", check=True)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["num_train"] == 3 and summary["num_val"] == 2 and summary["seconds"] >= 0
    for split, n in (("train", 3), ("val", 2)):
        assert len(json.load(open(tmp_path / split / "instances.json"))["images"]) == n


def test_object_size_and_count_options_bound_every_object(tmp_path):
    paths = shapes.write_dataset(str(tmp_path), num_train=10, num_val=2, seed=4, object_size=(0.25, 0.5),
                                 max_objects=2)
    gt = coco_api.COCO(paths["train"])
    counts = []
    for image in gt.loadImgs(gt.getImgIds()):
        short = min(image["height"], image["width"])
        anns = gt.loadAnns(gt.getAnnIds(imgIds=image["id"]))
        counts.append(len(anns))
        for ann in anns:
            # the drawn side is round(u * short), u in [0.25, 0.5]; triangles stretch w by 0.7-1.4
            side = ann["bbox"][3]
            assert 0.25 * short - 1 <= side <= 0.5 * short + 1
    assert 1 <= min(counts) and max(counts) <= 2


def test_bad_object_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="object_size"):
        shapes.write_dataset(str(tmp_path), 1, 1, object_size=(0.5, 0.2))
    with pytest.raises(ValueError, match="max_objects"):
        shapes.write_dataset(str(tmp_path), 1, 1, max_objects=0)
    run = run_tool("make_shapes", f"--out_dir={tmp_path}", "--object_size=0.3")
    assert run.returncode != 0 and "--object_size takes two numbers" in run.stderr


def test_coco_voc_and_yolo_layouts_hold_the_same_boxes_and_labels(tmp_path):
    from scratchdet_tf.data import annotations, readers, yolo

    custom = ("disc", "box", "wedge", "plus", "hoop")
    paths = {layout: shapes.write_dataset(str(tmp_path / layout), num_train=3, num_val=2, seed=2, layout=layout,
                                          class_names=custom if layout == "voc" else shapes.CLASS_NAMES)
             for layout in shapes.LAYOUTS}
    assert shapes.source_uris(str(tmp_path / "yolo"), "yolo")["val"] == f"yolo:{tmp_path / 'yolo' / 'data.yaml'}:val"
    for split in ("train", "val"):
        # The reference: the COCO JSON's [x, y, w, h] pixel edges, normalized by hand.
        coco = json.load(open(paths["coco"][split]))
        expected = []
        for image in coco["images"]:
            anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
            h, w = image["height"], image["width"]
            expected.append(([[y / h, x / w, (y + bh) / h, (x + bw) / w] for x, y, bw, bh in (a["bbox"] for a in anns)],
                             [a["category_id"] - 1 for a in anns], 1 / min(h, w)))
        got = {
            "coco": annotations.read_coco(paths["coco"][split], os.path.dirname(paths["coco"][split]), training=True),
            "voc": annotations.read_voc(str(tmp_path / "voc"), split, ()),  # names from its labelmap.txt
            "yolo": yolo.read_yolo(paths["yolo"][split], split),
        }
        assert got["voc"].class_names == custom and got["yolo"].class_names == got["coco"].class_names
        assert readers.source_info(shapes.source_uris(str(tmp_path / "voc"), "voc")[split]).class_names == custom
        for layout, records in got.items():
            assert len(records.files) == len(expected) and records.problems.count == 0, layout
            for (boxes, labels, pixel), got_boxes, got_labels in zip(expected, records.boxes, records.labels):
                np.testing.assert_allclose(got_boxes, boxes, atol=pixel if layout == "voc" else 1e-5, err_msg=layout)
                np.testing.assert_array_equal(got_labels, labels, err_msg=layout)
        assert [os.path.basename(f) for f in got["voc"].files] == [
            f"{'12'[split == 'val']}{i + 1:06d}.jpg" for i in range(len(expected))]  # one folder: ids differ by split
        assert got["yolo"].image_ids == [f"images/{split}/{i + 1:06d}" for i in range(len(expected))]


def test_make_shapes_tool_writes_a_layout_and_prints_its_uris(tmp_path):
    from scratchdet_tf.data import readers

    out = run_tool("make_shapes", f"--out_dir={tmp_path}", "--num_train=2", "--num_val=1", "--layout=yolo",
                   "--class_names=a,b,c,d,e", check=True)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["layout"] == "yolo" and summary["class_names"] == ["a", "b", "c", "d", "e"]
    assert summary["train_source"] == f"yolo:{tmp_path}/data.yaml:train"
    assert summary["val_source"] == f"yolo:{tmp_path}/data.yaml:val"
    assert readers.read(summary["val_source"], decode=False)[1].num_examples == 1
    assert readers.source_info(summary["train_source"]).class_names == ("a", "b", "c", "d", "e")
