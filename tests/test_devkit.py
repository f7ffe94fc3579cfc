"""devkit: VOC devkit files, annotations XML and comp4 results, read and written; errors name the file."""

import os

import numpy as np
import pytest

from scratchdet_tf.data import annotations
from scratchdet_tf.evaluation import devkit


def _write_xml(path, objects, size=(375, 500)):
    objs = "".join(
        f"<object><name>{name}</name>{'' if diff is None else f'<difficult>{diff}</difficult>'}"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b, diff in objects)
    with open(path, "w") as f:
        f.write(f"<annotation><size><width>{size[1]}</width><height>{size[0]}</height><depth>3</depth></size>"
                f"{objs}</annotation>")


def test_read_annotation(tmp_path):
    path = str(tmp_path / "000001.xml")
    _write_xml(path, [("dog", [48, 240, 195, 371], 0), ("person", [8, 12, 352, 498], 1), ("unicorn", [1, 1, 2, 2], 0),
                      ("cat", [5, 6, 7, 8], None)])
    ann = devkit.read_annotation(path, annotations.VOC_CLASS_NAMES)
    np.testing.assert_array_equal(ann["boxes"], [[48, 240, 195, 371], [8, 12, 352, 498], [5, 6, 7, 8]])
    np.testing.assert_array_equal(ann["labels"], [11, 14, 7])
    np.testing.assert_array_equal(ann["difficult"], [False, True, False])
    assert ann["image_size"] == (375, 500)
    with open(path, "w") as f:
        f.write("<annotation><size>")
    with pytest.raises(ValueError, match="000001.xml: malformed"):
        devkit.read_annotation(path, annotations.VOC_CLASS_NAMES)
    with pytest.raises(FileNotFoundError, match="000002.xml"):
        devkit.read_annotation(str(tmp_path / "000002.xml"), annotations.VOC_CLASS_NAMES)


def test_comp4_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    names = ["dog", "cat", "bird"]
    dets = {}
    for image_id in ["000005", "000002", "000009"]:
        m = int(rng.integers(0, 6))
        boxes, scores = np.round(rng.uniform(1, 500, (m, 4)), 2), np.round(rng.random(m), 6)
        dets[image_id] = {"boxes": boxes, "scores": scores,
                          "labels": rng.integers(0, 2, m)}  # no "bird": its file must still exist, empty
    paths = devkit.write_comp4(str(tmp_path), "test", names, dets)
    assert [os.path.basename(p) for p in paths] == [f"comp4_det_test_{n}.txt" for n in names]
    assert os.path.getsize(paths[2]) == 0
    back = devkit.read_comp4(str(tmp_path), "test", names)
    assert set(back) == {k for k, d in dets.items() if len(d["scores"])}
    for image_id, got in back.items():
        want = dets[image_id]
        order = np.argsort(want["labels"], kind="stable")  # read back class by class
        np.testing.assert_array_equal(got["boxes"], want["boxes"][order])
        np.testing.assert_array_equal(got["scores"], want["scores"][order])
        np.testing.assert_array_equal(got["labels"], want["labels"][order])


def test_read_comp4_names_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such results folder"):
        devkit.read_comp4(str(tmp_path / "missing"), "test", ["dog"])
    with pytest.raises(FileNotFoundError, match="comp4_det_test_dog.txt"):
        devkit.read_comp4(str(tmp_path), "test", ["dog"])
    path = devkit.comp4_path(str(tmp_path), "test", "dog")
    with open(path, "w") as f:
        f.write("000001 0.9 1 2 3 4\n000001 0.8 1 2 3\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_dog.txt:2: expected"):
        devkit.read_comp4(str(tmp_path), "test", ["dog"])
    with open(path, "w") as f:
        f.write("000001 0.9 1 2 3 4\n\n000001 high 1 2 3 4\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_dog.txt:3: non-numeric"):
        devkit.read_comp4(str(tmp_path), "test", ["dog"])
