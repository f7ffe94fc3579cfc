"""Tests for the URI readers: VOC devkit, COCO JSON, shapes, TFDS (mocked), joins and bad data."""

import json
import os
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from scratchdet_tf.data import annotations, images, readers
from scratchdet_tf.detector import load_image

VOC_XML = """<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"""
VOC_OBJECT = ("<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
              "<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<annotation><size><width>&lol4;</width><height>8</height></size></annotation>"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotation><size><width>8</width><height>8</height></size><object><name>&xxe;</name></object></annotation>"""


def write_jpeg(path, height, width, colour=(90, 120, 150)):
    Image.fromarray(np.full((height, width, 3), colour, np.uint8)).save(path, quality=95)


def write_voc(root, entries, image_set="trainval"):
    """entries: {image_id: xml text or None (no XML)}; every image is a 20x40 JPEG."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for image_id, xml in entries.items():
        write_jpeg(os.path.join(root, "JPEGImages", f"{image_id}.jpg"), 20, 40)
        if xml is not None:
            with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as f:
                f.write(xml)
    with open(os.path.join(root, "ImageSets", "Main", f"{image_set}.txt"), "w") as f:
        f.write("\n".join(entries) + "\n")
    return str(root)


def voc_xml(*objects, w=40, h=20):
    return VOC_XML.format(w=w, h=h, objects="".join(VOC_OBJECT.format(**o) for o in objects))


def write_coco(root, images, anns, categories=((3, "cat"), (7, "dog"), (11, "emu"))):
    """images: [(id, file_name, h, w)]; anns: [(image_id, category_id, [x, y, w, h], iscrowd)]."""
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    for _, name, h, w in images:
        write_jpeg(os.path.join(root, "img", name), h, w)
    data = {"images": [{"id": i, "file_name": n, "height": h, "width": w} for i, n, h, w in images],
            "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": b, "iscrowd": crowd, "area": 1}
                            for k, (i, c, b, crowd) in enumerate(anns)],
            "categories": [{"id": i, "name": n} for i, n in categories]}
    path = os.path.join(root, "instances.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path, os.path.join(root, "img")


def as_list(ds):
    return list(ds.as_numpy_iterator())


def test_split_sources_splits_only_before_a_scheme():
    assert readers.split_sources("voc:/a/VOC2007:trainval+voc:/b/VOC2012:trainval") == [
        "voc:/a/VOC2007:trainval", "voc:/b/VOC2012:trainval"]
    assert readers.split_sources("tfds:voc/2007:train+validation+tfds:voc/2012:train[:10%]") == [
        "tfds:voc/2007:train+validation", "tfds:voc/2012:train[:10%]"]
    with pytest.raises(ValueError, match="ftp:x"):
        readers.split_sources("ftp:x+voc:/a:trainval")


def test_voc_boxes_are_normalized_edges_with_difficult_and_string_ids(tmp_path):
    root = write_voc(tmp_path / "VOC2007", {
        "000005": voc_xml(dict(name="dog", difficult=0, x0=1, y0=1, x1=40, y1=20),
                          dict(name="Person", difficult=1, x0=11, y0=6, x1=20, y1=15)),
        "000007": voc_xml()})
    ds, info = readers.read(f"voc:{root}:trainval")
    examples = as_list(ds)
    # A devkit of two PASCAL classes: those two, in PASCAL's order.
    assert info.class_names == ("dog", "person") and info.category_ids == () and info.num_examples == 2
    assert [e["image_id"] for e in examples] == [b"000005", b"000007"]
    first = examples[0]
    assert first["image"].shape == (20, 40, 3) and first["image"].dtype == np.uint8
    # 1-based inclusive pixels: columns 11..20 cover edges [10, 20] of a 40-wide image.
    np.testing.assert_allclose(first["boxes"], [[0, 0, 1, 1], [5 / 20, 10 / 40, 15 / 20, 20 / 40]], atol=1e-6)
    np.testing.assert_array_equal(first["labels"], [info.class_names.index("dog"), info.class_names.index("person")])
    np.testing.assert_array_equal(first["difficult"], [False, True])
    assert examples[1]["boxes"].shape == (0, 4)


def test_voc_bad_annotations_are_repaired_or_skipped_and_named(tmp_path):
    root = write_voc(tmp_path / "VOC", {
        "a": voc_xml(dict(name="cat", difficult=0, x0=-5, y0=3, x1=60, y1=10),    # clipped
                     dict(name=" ", difficult=0, x0=1, y0=1, x1=5, y1=5),         # no name
                     dict(name="cat", difficult=0, x0=50, y0=3, x1=70, y1=10)),   # no area inside
        "b": None,  # missing XML
        "c": BILLION_LAUGHS,
        "d": EXTERNAL_ENTITY,
        "e": "<annotation><size>",  # truncated XML
    })
    start = time.perf_counter()
    records = annotations.read_voc(root, "trainval", ("cat", "dog"))
    assert time.perf_counter() - start < 5  # entities are rejected, not expanded
    assert records.image_ids == ["a"]
    np.testing.assert_allclose(records.boxes[0], [[2 / 20, 0, 10 / 20, 1]], atol=1e-6)
    files = records.problems.files
    assert files["box outside the image, clipped"] == [os.path.join(root, "Annotations", "a.xml")]
    assert len(files["box with no area inside the image, dropped"]) == 1
    assert files["object without a <name>, skipped"] == [os.path.join(root, "Annotations", "a.xml")]
    assert files["missing annotation file, image skipped"] == [os.path.join(root, "Annotations", "b.xml")]
    rejected = [f for kind, fs in files.items() if kind.startswith("unreadable annotation") for f in fs]
    assert sorted(os.path.basename(f) for f in rejected) == ["c.xml", "d.xml", "e.xml"]
    assert records.problems.count == 7 and "a.xml" in records.problems.summary()


# --- VOC class names: given, from labelmap.txt, or from the devkit's XML ---


def test_voc_class_names_come_from_all_of_the_devkits_xml(tmp_path):
    root = write_voc(tmp_path / "VOC", {
        "a": voc_xml(dict(name="giraffe", difficult=0, x0=1, y0=1, x1=20, y1=10),
                     dict(name=" okapi ", difficult=1, x0=21, y0=11, x1=40, y1=20)),
        "b": voc_xml(dict(name="Zebra", difficult=0, x0=11, y0=6, x1=30, y1=15))}, image_set="val")
    for image_set, ids in (("train", "a"), ("val", "b")):
        with open(os.path.join(root, "ImageSets", "Main", f"{image_set}.txt"), "w") as f:
            f.write(ids + "\n")
    with open(os.path.join(root, "Annotations", "junk.xml"), "w") as f:
        f.write("<annotation><object>")  # unreadable and in no image set: not a class source, not an error
    expected = ("Zebra", "giraffe", "okapi")  # sorted by code point, stripped, case kept
    assert annotations.voc_class_names(root) == expected
    for image_set in ("train", "val"):  # the whole folder names the classes, so both sets agree
        assert readers.source_info(f"voc:{root}:{image_set}").class_names == expected
    train = {e["image_id"]: e for e in as_list(readers.read(f"voc:{root}:train")[0])}
    np.testing.assert_allclose(train[b"a"]["boxes"], [[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], atol=1e-6)
    np.testing.assert_array_equal(train[b"a"]["labels"], [1, 2])
    np.testing.assert_array_equal(train[b"a"]["difficult"], [False, True])
    ds, info = readers.read(f"voc:{root}:val")
    assert info.class_names == expected and [list(e["labels"]) for e in as_list(ds)] == [[0]]


def test_voc_devkit_of_pascal_classes_keeps_pascal_order(tmp_path):
    # A LabelImg dataset of two PASCAL classes: those two, in PASCAL's order (not a 20-class model).
    root = write_voc(tmp_path / "VOC", {"a": voc_xml(dict(name="tvmonitor", difficult=0, x0=1, y0=1, x1=9, y1=9),
                                                     dict(name="Person", difficult=0, x0=1, y0=1, x1=9, y1=9))})
    assert annotations.voc_class_names(root) == ("person", "tvmonitor")
    assert readers.source_info(f"voc:{root}:trainval").class_names == ("person", "tvmonitor")
    ds, info = readers.read(f"voc:{root}:trainval")
    assert [list(e["labels"]) for e in as_list(ds)] == [[1, 0]]
    # PASCAL itself: all 20, in the devkit's label order.
    every = [dict(name=name, difficult=0, x0=1, y0=1, x1=9, y1=9) for name in reversed(annotations.VOC_CLASS_NAMES)]
    pascal = write_voc(tmp_path / "PASCAL", {"b": voc_xml(*every)})
    assert readers.source_info(f"voc:{pascal}:trainval").class_names == annotations.VOC_CLASS_NAMES


def test_voc_labelmap_txt_gives_names_and_order(tmp_path):
    root = write_voc(tmp_path / "VOC", {"a": voc_xml(dict(name="giraffe", difficult=0, x0=1, y0=1, x1=9, y1=9),
                                                     dict(name="zebra", difficult=0, x0=1, y0=1, x1=9, y1=9))})
    with open(os.path.join(root, "labelmap.txt"), "w") as f:  # CVAT's Pascal VOC 1.1 export
        f.write("# label:color_rgb:parts:actions\nbackground:0,0,0::\nzebra:250,50,83::\nokapi:1,2,3::\n"
                "giraffe:24,50,83::\n")
    info = readers.source_info(f"voc:{root}:trainval")
    assert info.class_names == ("zebra", "okapi", "giraffe")
    (example,) = as_list(readers.read(f"voc:{root}:trainval")[0])
    np.testing.assert_array_equal(example["labels"], [2, 0])
    with open(os.path.join(root, "labelmap.txt"), "w") as f:
        f.write("background:0,0,0::\nzebra:250,50,83::\n")
    with pytest.raises(ValueError, match=r"a\.xml: object class 'giraffe' is not one of the 1 classes "
                                         r"\['zebra'\] \(.*labelmap\.txt\)"):
        readers.read(f"voc:{root}:trainval")


def test_voc_with_fixed_class_names_uses_their_order_and_rejects_other_classes(tmp_path):
    root = write_voc(tmp_path / "VOC", {"a": voc_xml(dict(name="dog", difficult=0, x0=1, y0=1, x1=9, y1=9)),
                                        "b": voc_xml(dict(name="Cat", difficult=0, x0=1, y0=1, x1=9, y1=9),
                                                     dict(name="giraffe", difficult=0, x0=1, y0=1, x1=9, y1=9))})
    with open(os.path.join(root, "ImageSets", "Main", "a.txt"), "w") as f:
        f.write("a\n")
    ds, info = readers.read(f"voc:{root}:a", class_names=("cat", "dog", "emu"))
    assert info.class_names == ("cat", "dog", "emu")
    assert [list(e["labels"]) for e in as_list(ds)] == [[1]]
    assert readers.source_info(f"voc:{root}:a", class_names=("cat", "dog", "emu")).class_names == ("cat", "dog", "emu")
    xml = os.path.join(root, "Annotations", "b.xml")
    with pytest.raises(ValueError, match=rf"{xml}: object class 'giraffe' is not one of the 3 classes "
                                         r"\['cat', 'dog', 'emu'\] \(--data.class_names\)"):
        readers.read(f"voc:{root}:trainval", class_names=("cat", "dog", "emu"))


def test_given_class_names_must_equal_a_coco_sources_own(tmp_path):
    path, image_dir = write_coco(tmp_path, [(1, "x.jpg", 8, 8)], [])
    uri = f"coco:{path}:{image_dir}"
    assert readers.read(uri, class_names=("cat", "dog", "emu"))[1].class_names == ("cat", "dog", "emu")
    for call in (lambda: readers.read(uri, class_names=("dog", "cat", "emu")),
                 lambda: readers.source_info(uri, class_names=("cat", "dog"))):
        with pytest.raises(ValueError, match=r"has the classes \['cat', 'dog', 'emu'\] but --data.class_names gives "
                                             r".*leave --data.class_names empty to use the data's"):
            call()


def test_missing_image_set_file_raises_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="test.txt"):
        readers.read(f"voc:{tmp_path}:test")


def test_coco_maps_sparse_category_ids_and_handles_crowd(tmp_path):
    path, image_dir = write_coco(tmp_path, [(42, "x.jpg", 20, 40), (7, "y.jpg", 10, 10)], [
        (42, 11, [4, 2, 8, 10], 0), (42, 3, [0, 0, 40, 20], 1), (7, 7, [0, 0, 5, 5], 0)])
    uri = f"coco:{path}:{image_dir}"
    train, info = readers.read(uri, training=True)
    assert info.class_names == ("cat", "dog", "emu") and info.category_ids == (3, 7, 11)
    assert [info.label_of(i) for i in (3, 7, 11)] == [0, 1, 2]
    examples = {e["image_id"]: e for e in as_list(train)}
    assert set(examples) == {b"42", b"7"}
    np.testing.assert_allclose(examples[b"42"]["boxes"], [[0.1, 0.1, 0.6, 0.3]], atol=1e-6)
    np.testing.assert_array_equal(examples[b"42"]["labels"], [2])
    np.testing.assert_array_equal(examples[b"7"]["labels"], [1])
    evaluation = {e["image_id"]: e for e in as_list(readers.read(uri, training=False)[0])}
    np.testing.assert_array_equal(evaluation[b"42"]["labels"], [2, 0])
    np.testing.assert_array_equal(evaluation[b"42"]["difficult"], [False, True])  # crowd: ignored in eval


def test_coco_unknown_category_and_missing_image_are_counted(tmp_path):
    path, image_dir = write_coco(tmp_path, [(1, "x.jpg", 20, 40)], [(1, 99, [1, 1, 5, 5], 0), (1, 3, [1, 1, 0, 5], 0)])
    data = json.load(open(path))
    data["images"].append({"id": 2, "file_name": "gone.jpg", "height": 5, "width": 5})
    json.dump(data, open(path, "w"))
    records = annotations.read_coco(path, image_dir, training=True)
    assert records.image_ids == ["1"] and records.boxes[0].shape == (0, 4)
    kinds = records.problems.files
    assert kinds["unknown category 99, box skipped"] == [os.path.join(image_dir, "x.jpg")]
    assert kinds["box with no area inside the image, dropped"] == [os.path.join(image_dir, "x.jpg")]
    assert kinds["missing image, skipped"] == [os.path.join(image_dir, "gone.jpg")]


def test_shapes_split_follows_training_flag_or_suffix(tmp_path):
    for split, n in (("train", 2), ("val", 1)):
        os.makedirs(tmp_path / split)
        write_coco(tmp_path / split, [(i + 1, f"{i}.jpg", 8, 8) for i in range(n)], [], categories=((1, "circle"),))
        os.replace(tmp_path / split / "img", tmp_path / split / "tmp")
        for name in os.listdir(tmp_path / split / "tmp"):
            os.replace(tmp_path / split / "tmp" / name, tmp_path / split / name)
    assert readers.read(f"shapes:{tmp_path}", training=True)[1].num_examples == 2
    assert readers.read(f"shapes:{tmp_path}", training=False)[1].num_examples == 1
    assert readers.read(f"shapes:{tmp_path}:val", training=True)[1].num_examples == 1
    joined, info = readers.read(f"shapes:{tmp_path}:train+shapes:{tmp_path}:val", training=False)
    assert info.num_examples == 3 and len(as_list(joined)) == 3
    assert readers.source_info(f"shapes:{tmp_path}").class_names == ("circle",)


def test_joined_sources_with_different_classes_raise(tmp_path):
    a = write_coco(tmp_path / "a", [(1, "x.jpg", 8, 8)], [])
    b = write_coco(tmp_path / "b", [(1, "x.jpg", 8, 8)], [], categories=((1, "cat"),))
    with pytest.raises(ValueError, match="disagree on classes"):
        readers.read(f"coco:{a[0]}:{a[1]}+coco:{b[0]}:{b[1]}")


def test_undecodable_and_truncated_images_are_skipped_and_reported(tmp_path, capfd):
    path, image_dir = write_coco(tmp_path, [(1, "good.jpg", 20, 40), (2, "text.jpg", 20, 40),
                                            (3, "cut.jpg", 20, 40), (4, "good.png", 6, 6)], [])
    with open(os.path.join(image_dir, "text.jpg"), "w") as f:
        f.write("not an image")
    data = open(os.path.join(image_dir, "cut.jpg"), "rb").read()
    with open(os.path.join(image_dir, "cut.jpg"), "wb") as f:
        f.write(data[: len(data) // 2])
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(os.path.join(image_dir, "good.png"))
    ds, _ = readers.read(f"coco:{path}:{image_dir}")
    assert sorted(e["image_id"] for e in as_list(ds)) == [b"1", b"4"]
    err = capfd.readouterr().err
    assert "skipped 2 unreadable, truncated or oversized images" in err and "text.jpg" in err and "cut.jpg" in err


def test_is_valid_image_accepts_complete_files_only_eagerly_and_in_map():
    pixels = np.zeros((4, 5, 3), np.uint8)
    jpeg, png = tf.io.encode_jpeg(pixels).numpy(), tf.io.encode_png(pixels).numpy()
    cases = {jpeg: True, png: True, jpeg + b"\0" * 100: True, jpeg[:-2]: False, png[:-12]: False,
             b"": False, b"hello": False}
    for data, valid in cases.items():
        assert bool(images.is_valid_image(tf.constant(data))) == valid
        assert next(iter(tf.data.Dataset.from_tensors(data).map(images.is_valid_image))).numpy() == valid
    decoded = tf.data.Dataset.from_tensors(png).map(images.decode)
    assert next(iter(decoded)).shape == (4, 5, 3)


def _tfds_images(n, seed):
    rng = np.random.default_rng(seed)
    return [tf.io.encode_jpeg(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).numpy() for _ in range(n)]


def test_tfds_voc_mock_repairs_unordered_boxes():
    def as_dataset(self, split, **kwargs):
        del self, split, kwargs
        return tf.data.Dataset.from_tensors({
            "image": _tfds_images(1, 0)[0], "image/filename": "000009.jpg",
            "objects": {"bbox": [[0.7, 0.5, 0.1, 0.2], [0.2, 0.2, 0.2, 0.9]], "label": [3, 14],
                        "is_difficult": [True, False], "is_truncated": [False, False], "pose": [0, 0]}})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        ds, info = readers.read("tfds:voc/2007:train+validation", tfds_data_dir="/nonexistent")
        (example,) = as_list(ds)
    assert info.class_names[14] == "person"
    assert example["image_id"] == b"000009" and example["image"].shape == (16, 24, 3)
    np.testing.assert_allclose(example["boxes"], [[0.1, 0.2, 0.7, 0.5]])  # sorted; the empty box dropped
    np.testing.assert_array_equal(example["labels"], [3])
    np.testing.assert_array_equal(example["difficult"], [True])


def test_tfds_and_devkit_sources_join_into_one_dataset(tmp_path):
    root = write_voc(tmp_path / "VOC2012", {"a": voc_xml(dict(name="cat", difficult=0, x0=1, y0=1, x1=9, y1=9)),
                                            "b": voc_xml()})

    def as_dataset(self, split, **kwargs):
        del self, split, kwargs
        return tf.data.Dataset.from_tensors({
            "image": _tfds_images(1, 2)[0], "image/filename": "000001.jpg",
            "objects": {"bbox": [[0.1, 0.1, 0.5, 0.5]], "label": [7], "is_difficult": [False],
                        "is_truncated": [False], "pose": [0]}})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        for training in (True, False):
            ds, info = readers.read(f"tfds:voc/2007:train+validation+voc:{root}:trainval", training=training,
                                    seed=0)
            assert sorted(e["image_id"] for e in as_list(ds)) == [b"000001", b"a", b"b"]
    # The devkit uses one PASCAL class; joined to TFDS VOC it is read with PASCAL's list.
    assert info.class_names == annotations.VOC_CLASS_NAMES == readers.source_info(
        f"tfds:voc/2007:train+validation+voc:{root}:trainval").class_names
    assert readers.source_info(f"voc:{root}:trainval").class_names == ("cat",)


def test_tfds_coco_mock_excludes_crowd_for_training_only():
    def as_dataset(self, split, **kwargs):
        del self, split, kwargs
        return tf.data.Dataset.from_tensors({
            "image": _tfds_images(1, 1)[0], "image/filename": "x.jpg", "image/id": np.int64(139),
            "objects": {"bbox": [[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.9, 0.8]], "label": [0, 79],
                        "is_crowd": [False, True], "area": [1, 1], "id": [1, 2]}})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        (train,) = as_list(readers.read("tfds:coco/2017:train", training=True)[0])
        ds, info = readers.read("tfds:coco/2017:validation", training=False)
        (evaluation,) = as_list(ds)
    assert info.category_ids[79] == 90 and len(info.category_ids) == 80
    assert train["image_id"] == b"139"
    np.testing.assert_array_equal(train["labels"], [0])
    np.testing.assert_array_equal(evaluation["labels"], [0, 79])
    np.testing.assert_array_equal(evaluation["difficult"], [False, True])


# --- hostile records and files ---


def test_coco_records_of_the_wrong_type_are_skipped_and_named(tmp_path):
    path, image_dir = write_coco(tmp_path, [(1, "x.jpg", 20, 40), (2, "y.jpg", 20, 40)],
                                 [(1, 3, [1, 1, 5, 5], 0), (2, 7, [1, 1, 5, 5], 0)])
    data = json.load(open(path))
    data["annotations"][0]["category_id"] = [3]  # a list: unhashable
    data["images"].append({"file_name": "y.jpg"})  # no id
    data["annotations"].append("not a record")
    json.dump(data, open(path, "w"))
    records = annotations.read_coco(path, image_dir, training=True)
    assert records.image_ids == ["1", "2"] and [len(b) for b in records.boxes] == [0, 1]
    kinds = records.problems.files
    assert kinds["unknown category [3], box skipped"] == [os.path.join(image_dir, "x.jpg")]
    assert kinds["image record without a valid 'id', skipped"] == [f"{path} (images[2], 'y.jpg')"]
    assert kinds["annotation of an unknown image, skipped"] == [f"{path} (annotation #2)"]


def test_coco_duplicate_image_ids_are_an_error_naming_them(tmp_path):
    path, image_dir = write_coco(tmp_path, [(5, "a.jpg", 20, 40), (5, "b.jpg", 20, 40)], [(5, 3, [1, 1, 5, 5], 0)])
    with pytest.raises(ValueError, match=r"instances.json: 1 image id\(s\) used by more than one image \(id 5: a.jpg, "
                                         r"b.jpg\); ids must be unique"):
        readers.read(f"coco:{path}:{image_dir}", training=True)


def test_training_on_a_source_without_any_object_is_an_error(tmp_path):
    from scratchdet_tf import config
    from scratchdet_tf.boxes import anchors as anchors_lib
    from scratchdet_tf.data import pipeline

    path, image_dir = write_coco(tmp_path, [(1, "x.jpg", 20, 40)], [])
    uri = f"coco:{path}:{image_dir}"
    assert readers.read(uri, training=True)[1].num_boxes == 0
    data = config.DataConfig(train_source=uri, val_source=uri)
    priors = anchors_lib.anchors_from_config(config.AnchorConfig(), 300,
                                             [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)])
    with pytest.raises(ValueError, match="no object is annotated in any of its 1 usable images; nothing to train on"):
        pipeline.make_dataset(data, priors, training=True, image_size=300, batch_size=1)
    ds, _ = readers.read(uri, training=False)  # evaluating a test set without ground truth is fine
    assert len(as_list(ds)) == 1


def test_non_regular_image_files_are_skipped_not_read(tmp_path):
    path, image_dir = write_coco(tmp_path / "coco", [(1, "x.jpg", 20, 40), (2, "fifo.jpg", 20, 40)],
                                 [(1, 3, [1, 1, 5, 5], 0), (2, 3, [1, 1, 5, 5], 0)])
    os.remove(os.path.join(image_dir, "fifo.jpg"))
    os.mkfifo(os.path.join(image_dir, "fifo.jpg"))  # reading it would block forever
    records = annotations.read_coco(path, image_dir, training=True)
    assert records.image_ids == ["1"]
    assert records.problems.files["not a regular file, skipped"] == [os.path.join(image_dir, "fifo.jpg")]
    root = write_voc(tmp_path / "voc", {"a": voc_xml(dict(name="dog", difficult=0, x0=1, y0=1, x1=9, y1=9)),
                                        "b": voc_xml(dict(name="dog", difficult=0, x0=1, y0=1, x1=9, y1=9))})
    os.remove(os.path.join(root, "JPEGImages", "b.jpg"))
    os.mkfifo(os.path.join(root, "JPEGImages", "b.jpg"))
    start = time.time()
    ds, info = readers.read(f"voc:{root}:trainval", training=True)
    assert [e["image_id"] for e in as_list(ds)] == [b"a"] and time.time() - start < 60
    assert "not a regular file, skipped" in info.problems


def _encoded(fmt, height, width, mode="RGB", **kwargs):
    import io

    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt,kwargs", [("JPEG", {}), ("JPEG", {"progressive": True}),
                                        ("JPEG", {"exif": b"Exif\x00\x00" + b"\x00" * 600}), ("PNG", {}),
                                        ("GIF", {}), ("BMP", {})])
def test_header_pixels_read_the_declared_size_without_decoding(fmt, kwargs):
    for height, width in ((37, 61), (300, 5)):
        data = _encoded(fmt, height, width, **kwargs)
        assert int(images.header_pixels(tf.constant(data))) == height * width
    assert int(tf.function(images.header_pixels)(tf.constant(_encoded(fmt, 3, 4, **kwargs)))) == 12


def test_header_pixels_of_a_top_down_bmp_and_of_garbage():
    data = bytearray(_encoded("BMP", 7, 9))
    data[22:26] = (-7).to_bytes(4, "little", signed=True)  # height < 0: rows stored top-down
    assert int(images.header_pixels(tf.constant(bytes(data)))) == 63
    for junk in (b"", b"xx", b"\xff\xd8\xff garbage", b"\x89PNG\r\n\x1a\n"):
        assert int(images.header_pixels(tf.constant(junk))) == -1


def test_decompression_bomb_is_skipped_before_decoding(tmp_path, capfd):
    path, image_dir = write_coco(tmp_path, [(1, "good.jpg", 20, 40), (2, "bomb.png", 20, 40)], [])
    with open(os.path.join(image_dir, "bomb.png"), "wb") as f:  # 400 MP declared in a ~50 KB file
        f.write(_encoded("PNG", 20000, 20000, mode="1"))
    start = time.time()
    ds, info = readers.read(f"coco:{path}:{image_dir}")
    assert [e["image_id"] for e in as_list(ds)] == [b"1"] and time.time() - start < 30
    bomb = os.path.join(image_dir, "bomb.png")
    assert info.problems == f"1 x image declaring more than 50000000 pixels (--data.max_image_pixels), skipped ({bomb})"
    ds, _ = readers.read(f"coco:{path}:{image_dir}", max_image_pixels=799)  # the 20 x 40 one is too big now
    assert as_list(ds) == []
    # TFDS records carry their bytes: those are checked in tf.data, before decoding.
    raw = tf.data.Dataset.from_tensor_slices({
        "file": ["a", "b"], "image_id": ["a", "b"], "num_fixed": [0, 0],
        "encoded": [open(os.path.join(image_dir, "good.jpg"), "rb").read(), open(bomb, "rb").read()]})
    kept = as_list(images.report_and_skip(images.mark_epoch_end(raw), "tfds:x"))
    assert [e["image_id"] for e in kept] == [b"a"]
    assert "skipped 1 unreadable, truncated or oversized images (b)" in capfd.readouterr().err


def test_pixel_limit_defaults_agree():
    from scratchdet_tf import config

    assert config.DataConfig().max_image_pixels == images.DEFAULT_MAX_PIXELS == annotations.DEFAULT_MAX_PIXELS


def test_exif_orientation_is_ignored_alike_by_readers_serving_and_detect(tmp_path):
    # The convention (README, Data): pixels as stored, like COCO's and VOC's annotations; the same in
    # training/evaluation (readers), serving (images.decode inside the SavedModel) and tools/detect.py.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (250, 10, 10)  # left half red: a 90-degree turn would move it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path, image_dir = write_coco(tmp_path, [(1, "turned.jpg", 20, 40)], [(1, 3, [1, 1, 5, 5], 0)])
    Image.fromarray(pixels).save(os.path.join(image_dir, "turned.jpg"), exif=exif.tobytes(), quality=95)
    with Image.open(os.path.join(image_dir, "turned.jpg")) as stored:
        assert stored.getexif()[0x0112] == 6
    from_reader = as_list(readers.read(f"coco:{path}:{image_dir}", training=False)[0])[0]["image"]
    served = images.decode(tf.constant(open(os.path.join(image_dir, "turned.jpg"), "rb").read())).numpy()
    detected = load_image(os.path.join(image_dir, "turned.jpg"))  # tools/detect.py reads files with it
    for got in (from_reader, served, detected):
        assert got.shape == (20, 40, 3)
        assert got[:, :20, 0].mean() > 200 and got[:, 20:, 0].mean() < 40  # red stays on the left


def test_joined_devkits_with_different_classes_share_their_union(tmp_path):
    obj = dict(difficult=0, x0=1, y0=1, x1=9, y1=9)
    a = write_voc(tmp_path / "A", {"a": voc_xml(dict(name="dog", **obj))})
    b = write_voc(tmp_path / "B", {"b": voc_xml(dict(name="cat", **obj))})
    ds, info = readers.read(f"voc:{a}:trainval+voc:{b}:trainval", training=False)
    assert info.class_names == ("cat", "dog")  # PASCAL's order
    assert sorted((e["image_id"], list(e["labels"])) for e in as_list(ds)) == [(b"a", [1]), (b"b", [0])]
    c = write_voc(tmp_path / "C", {"c": voc_xml(dict(name="giraffe", **obj))})
    assert readers.source_info(f"voc:{a}:trainval+voc:{c}:trainval").class_names == ("dog", "giraffe")
