"""Classes come from the training data (``class_names.resolve``); a config that disagrees is an error."""

import json

import pytest
from conftest import tiny_config

from scratchdet_tf import config
from scratchdet_tf.data import class_names, shapes


def test_num_classes_zero_takes_the_datas_count_and_stores_the_names(shapes_dir):
    cfg = tiny_config(model__num_classes=0, data__train_source=f"shapes:{shapes_dir}")
    resolved = class_names.resolve(cfg)
    assert resolved.model.num_classes == 5 and resolved.data.class_names == shapes.CLASS_NAMES
    assert class_names.resolve(resolved) == resolved  # already agreeing: unchanged


def test_a_count_that_differs_from_the_data_is_a_config_error_naming_both(shapes_dir):
    cfg = tiny_config(model__num_classes=20, data__train_source=f"shapes:{shapes_dir}")
    with pytest.raises(config.ConfigError, match=r"--model.num_classes=20 but .* has 5 classes \(circle, square"):
        class_names.resolve(cfg)


def test_a_validation_source_with_other_classes_is_an_error_before_training(shapes_dir, tmp_path):
    other = {"images": [{"id": 1, "file_name": "000001.jpg", "height": 10, "width": 10}], "annotations": [],
             "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    cfg = tiny_config(model__num_classes=0, data__train_source=f"shapes:{shapes_dir}",
                      data__val_source=f"coco:{tmp_path / 'other.json'}:{shapes_dir}/val")
    assert class_names.resolve(cfg).model.num_classes == 5  # only checked when asked (periodic evaluation)
    with pytest.raises(ValueError, match="cat"):
        class_names.resolve(cfg, check_val=True)


@pytest.mark.parametrize("names, message", [(["cat", "dog", "cat"], "more than once"),
                                            (["cat", "dog, wild"], "comma")])
def test_names_a_run_cannot_store_are_a_config_error(shapes_dir, tmp_path, names, message):
    data = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    (tmp_path / "bad.json").write_text(json.dumps(data))
    cfg = tiny_config(model__num_classes=0, data__train_source=f"coco:{tmp_path / 'bad.json'}:{shapes_dir}/val")
    with pytest.raises(config.ConfigError, match=message):
        class_names.resolve(cfg)
