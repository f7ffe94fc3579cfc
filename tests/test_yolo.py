"""Tests for the yolo: source (Ultralytics dataset YAML, images/ and labels/ folders) and its bad data."""

import os

import numpy as np
import pytest
from PIL import Image

from scratchdet_tf.data import readers, yolo

NAMES_YAML = "names:\n  0: cat\n  1: dog\n"


def write_dataset(root, yaml_text, images=(), labels=None, yaml_name="data.yaml"):
    """images: relative paths of 20 x 40 (h x w) JPEGs; labels: {relative label path: text}."""
    for rel in images:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.full((20, 40, 3), 128, np.uint8)).save(path)
    for rel, text in (labels or {}).items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    yaml_path = os.path.join(root, yaml_name)
    with open(yaml_path, "w") as f:
        f.write(yaml_text)
    return yaml_path


def test_boxes_and_segments_are_normalized_yxyx_edges(tmp_path):
    yaml_path = write_dataset(tmp_path, "train: images/train\nval: images/val\n" + NAMES_YAML,
                              ["images/train/a.jpg", "images/val/b.jpg"], {
                                  # cx cy w h -> [cy - h/2, cx - w/2, cy + h/2, cx + w/2]
                                  "labels/train/a.txt": "1 0.5 0.25 0.5 0.3\n\n0 0.25 0.5 0.5 1.0\n",
                                  # polygon (0.1, 0.2) (0.5, 0.1) (0.3, 0.6): its bounding box
                                  "labels/val/b.txt": "0 0.1 0.2 0.5 0.1 0.3 0.6\n"})
    ds, info = readers.read(f"yolo:{yaml_path}", training=True)
    (a,) = list(ds.as_numpy_iterator())
    assert info.class_names == ("cat", "dog") and info.category_ids == () and info.num_examples == 1
    assert a["image_id"] == b"images/train/a" and a["image"].shape == (20, 40, 3)
    np.testing.assert_allclose(a["boxes"], [[0.1, 0.25, 0.4, 0.75], [0.0, 0.0, 1.0, 0.5]], atol=1e-6)
    np.testing.assert_array_equal(a["labels"], [1, 0])
    np.testing.assert_array_equal(a["difficult"], [False, False])
    assert info.problems == ""
    (b,) = list(readers.read(f"yolo:{yaml_path}", training=False)[0].as_numpy_iterator())  # default split: val
    assert b["image_id"] == b"images/val/b"
    np.testing.assert_allclose(b["boxes"], [[0.1, 0.1, 0.6, 0.5]], atol=1e-6)
    np.testing.assert_array_equal(b["labels"], [0])
    assert readers.read(f"yolo:{yaml_path}:val", training=True)[1].num_examples == 1


def test_missing_label_file_is_counted_and_empty_one_is_background(tmp_path):
    yaml_path = write_dataset(tmp_path, "train: images\n" + NAMES_YAML, ["images/a.jpg", "images/b.png"],
                              {"labels/b.txt": ""})
    records = yolo.read_yolo(yaml_path, "train")
    assert records.image_ids == ["images/a", "images/b"] and [len(b) for b in records.boxes] == [0, 0]
    assert dict(records.problems.files) == {
        "no label file, image kept without objects": [os.path.join(tmp_path, "labels", "a.txt")]}


def test_malformed_lines_and_bad_boxes_are_skipped_or_clipped_and_named(tmp_path):
    label = os.path.join(tmp_path, "labels", "a.txt")
    yaml_path = write_dataset(tmp_path, "train: images\n" + NAMES_YAML, ["images/a.jpg"], {"labels/a.txt": "\n".join([
        "0 0.5 0.5 0.2",            # 1: four numbers
        "0 0.1 0.2 0.3 0.4 0.5",    # 2: a polygon of 2.5 points
        "1 0.5 x 0.2 0.2",          # 3: not a number
        "1 0.5 nan 0.2 0.2",        # 4: not finite
        "0 0.5 0.5 0 0.2",          # 5: no width
        "0 1.5 0.5 0.2 0.2",        # 6: all outside
        "1 0.9 0.5 0.4 0.2",        # 7: x 0.7..1.1, clipped to 0.7..1
        "0 0.5 0.5 0.2 0.2",        # 8: fine
        "1 0.5 0.5 1.0004 0.2",     # 9: 0.0002 over each side: float slop, not reported
    ])})
    records = yolo.read_yolo(yaml_path, "train")
    np.testing.assert_allclose(records.boxes[0], [[0.4, 0.7, 0.6, 1.0], [0.4, 0.4, 0.6, 0.6], [0.4, 0, 0.6, 1]],
                               atol=1e-6)
    np.testing.assert_array_equal(records.labels[0], [1, 0, 1])
    lines = {kind: [f.rsplit(" (line ", 1)[1].rstrip(")") for f in files]
             for kind, files in records.problems.files.items()}
    assert lines == {
        "malformed label line (not 'class cx cy w h' or a polygon of 3+ points), skipped": ["1", "2"],
        "label line with a non-number, skipped": ["3"],
        "label line with a non-finite number, skipped": ["4"],
        "box with no area inside the image, dropped": ["5", "6"],
        "box outside the image, clipped": ["7"]}
    assert all(f.startswith(label) for files in records.problems.files.values() for f in files)


@pytest.mark.parametrize("token", ["2", "-1", "0.5", "dog"])
def test_class_index_outside_the_names_is_an_error_naming_the_label_file(tmp_path, token):
    yaml_path = write_dataset(tmp_path, "train: images\n" + NAMES_YAML, ["images/a.jpg"],
                              {"labels/a.txt": f"0 0.5 0.5 0.2 0.2\n{token} 0.5 0.5 0.2 0.2\n"})
    label = os.path.join(tmp_path, "labels", "a.txt")
    with pytest.raises(ValueError, match=rf"{label} \(line 2\): class '{token}' is not one of the 2 class indices "
                                         r"0\.\.1 \(cat, dog\)"):
        readers.read(f"yolo:{yaml_path}:train")


def test_names_as_list_or_dict_in_any_key_order(tmp_path):
    for text in ("names: [cat, dog]\n", "names:\n  1: dog\n  0: cat\n", "nc: 2\nnames: ['cat', 'dog']\n"):
        yaml_path = write_dataset(tmp_path, "train: images\n" + text)
        assert readers.source_info(f"yolo:{yaml_path}").class_names == ("cat", "dog")
    for text in ("names:\n  0: cat\n  2: dog\n", "names: []\n", "train: x\n", "nc: 3\nnames: [cat, dog]\n"):
        yaml_path = write_dataset(tmp_path, "train: images\n" + text, yaml_name="bad.yaml")
        with pytest.raises(ValueError, match=r"bad\.yaml: .*(names|nc)"):
            yolo.class_names(yaml_path)


def test_given_class_names_must_equal_the_yamls(tmp_path):
    yaml_path = write_dataset(tmp_path, "train: images\n" + NAMES_YAML, ["images/a.jpg"], {"labels/a.txt": ""})
    assert readers.read(f"yolo:{yaml_path}", class_names=("cat", "dog"))[1].class_names == ("cat", "dog")
    with pytest.raises(ValueError, match=r"has the classes \['cat', 'dog'\] but --data.class_names gives \['dog', "
                                         r"'cat'\].*leave --data.class_names empty"):
        readers.source_info(f"yolo:{yaml_path}", class_names=("dog", "cat"))


def test_split_lists_in_txt_files_a_root_path_and_several_entries(tmp_path):
    ds_root = tmp_path / "ds"
    write_dataset(ds_root, "", ["images/a.jpg", "images/b.jpg", "more/images/c.jpg"], {
        "labels/a.txt": "0 0.5 0.5 0.2 0.2\n", "labels/b.txt": "1 0.5 0.5 0.2 0.2\n",
        "more/labels/c.txt": "1 0.5 0.5 0.2 0.2\n",
        # relative to the root; ./ relative to the list file's folder (Ultralytics' rule)
        "lists/train.txt": f"images/b.jpg\n./../images/a.jpg\n{ds_root}/images/gone.jpg\nnotes.doc\n"})
    os.makedirs(tmp_path / "cfg")
    yaml_path = write_dataset(tmp_path / "cfg", "path: ../ds\ntrain: [lists/train.txt, more/images]\n"
                                                "val: lists/train.txt\n" + NAMES_YAML)
    records = yolo.read_yolo(yaml_path, "train")
    assert records.image_ids == ["images/b", "images/a", "more/images/c"]
    assert [list(labels) for labels in records.labels] == [[1], [0], [1]]
    assert records.problems.files["missing image, skipped"] == [os.path.join(ds_root, "images", "gone.jpg")]
    assert records.problems.files["not a bmp/gif/jpeg/jpg/png image, skipped"] == [os.path.join(ds_root, "notes.doc")]


def test_missing_yaml_split_or_folder_and_ambiguous_ids_are_errors_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such YOLO dataset YAML: .*nope.yaml"):
        readers.read(f"yolo:{tmp_path}/nope.yaml")
    yaml_path = write_dataset(tmp_path, "train: images\nval: missing\n" + NAMES_YAML, ["images/a.jpg", "images/a.png"])
    with pytest.raises(ValueError, match=r"data\.yaml: no 'test' key"):
        readers.read(f"yolo:{yaml_path}:test")
    with pytest.raises(FileNotFoundError, match=r"data\.yaml: no such image folder or list file: .*missing"):
        readers.read(f"yolo:{yaml_path}:val")
    with pytest.raises(ValueError, match=r"images .*a\.jpg and .*a\.png share the id 'images/a'"):
        readers.read(f"yolo:{yaml_path}:train")
    with open(yaml_path, "w") as f:
        f.write("train: [unclosed\n")
    with pytest.raises(ValueError, match=r"data\.yaml: not a YAML file"):
        readers.source_info(f"yolo:{yaml_path}")


def test_label_path_follows_ultralytics():
    join = os.path.join
    assert yolo.label_path(join("d", "images", "train", "x.jpg")) == join("d", "labels", "train", "x.txt")
    assert yolo.label_path(join("images", "d", "images", "x.y.PNG")) == join("images", "d", "labels", "x.y.txt")
    assert yolo.label_path(join("d", "pics", "x.jpg")) == join("d", "pics", "x.txt")


def test_roboflow_yaml_with_parent_relative_splits_reads_the_folders_beside_it(tmp_path):
    # Roboflow's export: data.yaml inside the dataset folder, no 'path', splits written as ../train/images.
    yaml_path = write_dataset(tmp_path, "train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['cat', 'dog']\n",
                              ["train/images/a.jpg", "valid/images/b.jpg"],
                              {"train/labels/a.txt": "1 0.5 0.5 0.5 0.5\n", "valid/labels/b.txt": "0 0.5 0.5 1 1\n"})
    train, val = yolo.read_yolo(yaml_path, "train"), yolo.read_yolo(yaml_path, "val")
    assert train.image_ids == ["train/images/a"] and val.image_ids == ["valid/images/b"]
    np.testing.assert_array_equal(train.labels[0], [1])
    np.testing.assert_allclose(val.boxes[0], [[0, 0, 1, 1]], atol=1e-6)
