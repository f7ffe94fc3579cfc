"""tflite_metadata: the metadata and packed labels.txt a runtime reads from a .tflite file."""

import os

import pytest
from conftest import EXPORT_CLASS_NAMES

from scratchdet_tf.export import info, tflite, tflite_metadata


@pytest.mark.slow
def test_tflite_metadata_round_trips(exported_tflite):
    # Read back with the schema MediaPipe ships, the packed files with zipfile: what a runtime sees.
    import zipfile

    for mode in tflite.MODES:
        path = os.path.join(exported_tflite["dir"], f"model_{mode}.tflite")
        meta = tflite_metadata.read_metadata(path)
        assert meta["name"] == exported_tflite["model"].name and mode in meta["description"]
        assert meta["min_parser_version"] == "1.2.0"
        assert meta["input"] == {"name": "image", "color_space": 1, "normalization": None}  # RGB, uint8: none
        assert meta["outputs"] == ["location", "category", "score", "number of detections"]
        assert meta["output_groups"] == {"detection_result": ["location", "category", "score"]}
        assert meta["box_index"] == [1, 0, 3, 2]  # left, top, right, bottom inside [ymin, xmin, ymax, xmax]
        assert meta["label_files"] == {"category": ["labels.txt"]}
        with zipfile.ZipFile(path) as archive:
            assert archive.read("labels.txt").decode() == "cat\ndog\nbird\n"
        assert meta["labels"] == EXPORT_CLASS_NAMES


@pytest.mark.slow
def test_tflite_copied_alone_keeps_its_class_names(exported_tflite, tmp_path):
    alone = tmp_path / "model.tflite"
    alone.write_bytes(open(os.path.join(exported_tflite["dir"], "model_fp32.tflite"), "rb").read())
    assert info.class_names_of(str(alone)) == EXPORT_CLASS_NAMES
    bare = tmp_path / "bare.tflite"  # what the converter alone writes: no metadata, no names
    bare.write_bytes(tflite_metadata._flatbuffer_part(alone.read_bytes()))
    assert info.class_names_of(str(bare)) == ()


@pytest.mark.slow
def test_metadata_is_replaced_not_stacked_when_written_twice(exported_tflite):
    with open(os.path.join(exported_tflite["dir"], "model_fp32.tflite"), "rb") as f:
        once = f.read()
    twice = tflite_metadata.add_metadata(once, ("a", "b", "c"), name="again", description="d")
    meta = tflite_metadata.read_metadata(twice)
    assert meta["name"] == "again" and meta["labels"] == ("a", "b", "c")
    fresh = tflite_metadata.add_metadata(tflite_metadata._flatbuffer_part(once), ("a", "b", "c"), name="again",
                                         description="d")
    assert len(twice) == len(fresh)  # the old metadata buffer and labels are gone, not kept beside
    with pytest.raises(ValueError, match="single lines"):
        tflite_metadata.add_metadata(once, ("a", "b\nc", "d"), name="x", description="y")
