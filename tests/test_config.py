"""Config tree and dotted flags: round trips, flagfiles, and errors that name the flag."""

import dataclasses
import json
import os

import pytest
from absl import flags
from conftest import ROOT, run_tool

from scratchdet_tf import config, run_dir
from scratchdet_tf.cli import config_flags
from scratchdet_tf.config import flagfile


def parse(argv):
    """Fresh FlagValues with the config flags, parsed from argv (flagfiles expanded)."""
    fv = flags.FlagValues()
    config_flags.define_flags(fv)
    fv(["prog"] + flagfile.expand(argv))
    return config_flags.config_from_flags(fv)


def test_defaults_are_the_paper_network():
    cfg = parse([])
    assert cfg == config.Config()
    assert (cfg.model.backbone, cfg.model.depth, cfg.model.root_depth, cfg.model.first_stride) == (
        "root_resnet", 34, 3, 1)


def test_one_dotted_flag_per_leaf():
    fv = flags.FlagValues()
    config_flags.define_flags(fv)
    leaves = {f"{s.name}.{f.name}" for s in dataclasses.fields(config.Config)
              for f in dataclasses.fields(s.default_factory)}
    assert leaves <= set(fv)
    assert {"train.max_steps", "train.checkpoint_every_steps", "train.deterministic", "train.seed",
            "train.jit_compile", "train.strategy", "train.mixed_precision"} <= leaves


def test_overrides_parse_every_kind():
    cfg = parse(["--train.batch_size=4", "--model.width=0.5", "--train.jit_compile=true",
                 "--anchors.aspect_ratios=2;2,3;2,3;2,3;2;3", "--train.lr_boundaries=10,20",
                 "--export.tflite=fp32,int8", "--anchors.steps="])
    assert cfg.train.batch_size == 4 and cfg.model.width == 0.5 and cfg.train.jit_compile is True
    assert cfg.anchors.aspect_ratios[-1] == (3.0,)
    assert cfg.train.lr_boundaries == (10, 20)
    assert cfg.export.tflite == ("fp32", "int8")
    assert cfg.anchors.steps == ()


def test_flagfile_round_trip_restores_the_config(tmp_path):
    cfg = parse(["--flagfile=" + os.path.join(ROOT, "configs/shapes_demo.cfg"), "--train.seed=7"])
    run_dir.write_config(cfg, str(tmp_path))
    again = parse([f"--flagfile={tmp_path / 'flags.cfg'}"])
    assert again == cfg
    with open(tmp_path / "config.json") as f:
        assert config.from_dict(json.load(f)) == cfg


def test_last_occurrence_wins_and_nested_includes_resolve_from_the_file(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "a.cfg").write_text("--train.batch_size=8\n--train.seed=1\n")
    (tmp_path / "top.cfg").write_text("# comment\n--flagfile=base/a.cfg\n--train.seed=2\n")
    cwd = os.getcwd()
    os.chdir("/")  # includes resolve relative to the including file, not the working dir
    try:
        cfg = parse([f"--flagfile={tmp_path / 'top.cfg'}", "--train.batch_size=16"])
    finally:
        os.chdir(cwd)
    assert (cfg.train.batch_size, cfg.train.seed) == (16, 2)


def test_missing_flagfile_names_the_file(tmp_path):
    with pytest.raises(flagfile.FlagfileError, match="nope.cfg"):
        flagfile.expand([f"--flagfile={tmp_path / 'nope.cfg'}"])


def test_flagfile_cycle_is_an_error(tmp_path):
    (tmp_path / "a.cfg").write_text("--flagfile=b.cfg\n")
    (tmp_path / "b.cfg").write_text("--flagfile=a.cfg\n")
    with pytest.raises(flagfile.FlagfileError, match="cycle"):
        flagfile.expand([f"--flagfile={tmp_path / 'a.cfg'}"])


@pytest.mark.parametrize("argv, flag, allowed", [
    (["--train.batch_size=-4"], "train.batch_size", "must be > 0"),
    (["--model.backbone=resnet50"], "model.backbone", "root_resnet, vgg16"),
    (["--anchors.aspect_ratios=2;2,3"], "anchors.aspect_ratios", "6 ';'-separated levels"),
    (["--train.strategy=horovod"], "train.strategy", "default, mirrored, multi_worker, tpu"),
    (["--train.mixed_precision=fp8"], "train.mixed_precision", "float32, mixed_bfloat16, mixed_float16"),
    (["--model.depth=50"], "model.depth", "18, 34"),
    (["--model.root_kernel=7", "--model.root_depth=3"], "model.root_depth", "exactly one conv"),
    (["--model.first_stride=1", "--model.root_pool=false"], "model.root_pool", "max-pool is needed"),
    (["--anchors.min_sizes=1,2,3", "--anchors.max_sizes=", "--anchors.aspect_ratios=2;2;2",
      "--anchors.steps="], "anchors.min_sizes", "6 levels"),
    (["--anchors.min_sizes=a,b"], "anchors.min_sizes", "comma-separated numbers"),
    (["--train.lr_boundaries=20,10"], "train.lr_boundaries", "strictly increasing"),
    (["--model.num_classes=20", "--data.class_names=a,b"], "data.class_names", "20 names"),
    (["--model.num_classes=-1"], "model.num_classes", "0 (from the training data)"),
    (["--train.best_metric=AP"], "train.best_metric", "mAP_07, mAP_area"),
    (["--eval.metric=coco", "--train.best_metric=mAP_07"], "train.best_metric", "AP, AP50"),
    (["--train.patience=3"], "train.patience", "--train.eval_every_steps"),
    (["--export.tflite=fp64"], "export.tflite", "fp32, fp16, dynamic, int8"),
])
def test_invalid_values_raise_naming_the_flag_and_the_allowed_values(argv, flag, allowed):
    with pytest.raises(config.ConfigError) as e:
        parse(argv)
    assert f"--{flag}=" in str(e.value) and allowed in str(e.value)


def test_unknown_flag_stops_the_tool_with_its_name():
    run = run_tool("model_summary", "--model.bacbone=vgg16", timeout=120)
    assert run.returncode == 1
    assert "model.bacbone" in run.stderr


def test_invalid_value_stops_the_tool_with_the_allowed_values():
    run = run_tool("model_summary", "--model.backbone=resnet50", timeout=120)
    assert run.returncode == 1
    assert "--model.backbone=resnet50" in run.stderr and "root_resnet, vgg16" in run.stderr


def test_replace_updates_leaves():
    cfg = config.replace(config.Config(), model__width=0.25, train__batch_size=2)
    assert cfg.model.width == 0.25 and cfg.train.batch_size == 2 and cfg.model.depth == 34
    with pytest.raises(config.ConfigError):
        config.replace(cfg, train__batch_size=0)


def test_best_metric_choices_are_what_evaluation_reports():
    from scratchdet_tf.evaluation import coco_metric

    assert config.METRIC_KEYS["coco"] == coco_metric.COCO_STAT_NAMES
    assert [config.headline_metric(m) for m in ("voc07", "voc12", "coco")] == ["mAP_07", "mAP_area", "AP"]
