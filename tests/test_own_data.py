"""README "Train on your own data", end to end on tiny datasets written by the test.

The README's commands, run as a new user runs them (the tools in child processes), on a 12-image YOLO
dataset with the README's class names; the same flagfiles with COCO and VOC (custom classes) sources in
process. Only the size changes: ``TINY`` shrinks the network to 1/16 width at 64 px and the run to 4
steps, evaluating every 2.
"""

import json
import os

import keras
import pytest
from absl import flags
from conftest import ROOT, run_tool

from scratchdet_tf import run_dir
from scratchdet_tf.cli import config_flags
from scratchdet_tf.config import flagfile
from scratchdet_tf.data import shapes
from scratchdet_tf.detector import Detector
from scratchdet_tf.training import best, train_lib

NAMES = ("ball", "box", "tent", "plus", "donut")  # the README's
TINY = ["--model.width=0.0625", "--model.image_size=64", "--anchors.steps=", "--train.batch_size=4",
        "--train.max_steps=4", "--train.eval_every_steps=2", "--train.checkpoint_every_steps=2",
        "--train.warmup_steps=0", "--train.deterministic=true", "--data.deterministic=true"]


def last_json(run):
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_readme_yolo_walkthrough_trains_keeps_the_best_evaluates_exports_and_detects(tmp_path):
    data, run, export = str(tmp_path / "my_yolo"), str(tmp_path / "runs" / "my_yolo"), str(tmp_path / "export" / "1")
    made = last_json(run_tool("make_shapes", f"--out_dir={data}", "--layout=yolo", "--num_train=12", "--num_val=4",
                              f"--class_names={','.join(NAMES)}"))
    assert made["train_source"] == f"yolo:{data}/data.yaml:train"

    trained = last_json(run_tool("train", "--flagfile=configs/own_data_small.cfg", f"--model_dir={run}",
                                 f"--data.train_source={made['train_source']}",
                                 f"--data.val_source={made['val_source']}", *TINY))
    assert trained["status"] == "finished" and trained["step"] == 4
    assert trained["best"]["dir"] == os.path.join(run, "best") and trained["best"]["metric"] == "AP"
    assert trained["best"]["step"] in (2, 4) and best.read(run)["step"] == trained["best"]["step"]
    stored = run_dir.load_config(run)
    assert stored.model.num_classes == 5 and stored.data.class_names == NAMES  # from the dataset YAML
    assert os.path.getsize(os.path.join(run, "training_curves.png")) > 10_000
    for name in ("metrics.json", "per_class.txt", "pr_curves.png", "confusion_matrix.png"):
        assert os.path.isfile(os.path.join(run, "eval", name)), name  # the newest periodic evaluation's

    evaluated = last_json(run_tool("eval", f"--model_dir={run}/best"))
    assert evaluated["num_images"] == 4 and "AP" in evaluated
    table = open(os.path.join(run, "best", "eval", "per_class.txt")).read()
    assert all(name in table for name in NAMES)

    exported = last_json(run_tool("export", f"--model_dir={run}/best", f"--export_dir={export}"))
    assert exported["step"] == trained["best"]["step"]
    out = str(tmp_path / "out")
    detected = last_json(run_tool("detect", f"--model={export}", f"--images={data}/images/val", f"--out_dir={out}",
                                  "--score_threshold=0"))
    assert detected["images"] == 4 and detected["detections"] > 0
    first = json.load(open(os.path.join(out, "detections.json")))["images"][0]["detections"][0]
    assert first["class"] in NAMES

    keras.backend.clear_session()
    detector = Detector.from_run(run, score_threshold=0.0)  # the notebook way: the best checkpoint
    result = detector.predict(os.path.join(data, "images", "val", "000001.jpg"))
    assert detector.class_names == NAMES and set(result.class_names) <= set(NAMES) and len(result) > 0


def _config(*args):
    fv = flags.FlagValues()
    config_flags.define_flags(fv)
    fv(["prog"] + flagfile.expand(list(args)))
    return config_flags.config_from_flags(fv)


@pytest.mark.slow
@pytest.mark.parametrize("layout, flagfile_name", [("voc", "own_data.cfg"), ("coco", "own_data_small.cfg")])
def test_the_own_data_configs_take_classes_from_voc_and_coco_folders(layout, flagfile_name, tmp_path):
    data = str(tmp_path / "data")
    shapes.write_dataset(data, num_train=8, num_val=4, layout=layout, class_names=NAMES)
    uris = shapes.source_uris(data, layout)
    cfg = _config(f"--flagfile={os.path.join(ROOT, 'configs', flagfile_name)}", f"--data.train_source={uris['train']}",
                  f"--data.val_source={uris['val']}", *TINY)
    assert cfg.model.num_classes == 0 and cfg.train.patience > 0
    keras.backend.clear_session()
    result = train_lib.train(cfg, str(tmp_path / "run"))
    assert result["status"] == "finished" and result["best"]["metric"] == "AP"
    stored = run_dir.load_config(str(tmp_path / "run"))
    # VOC: the devkit's labelmap.txt (as CVAT writes it); COCO: the categories, by id.
    assert stored.data.class_names == NAMES
