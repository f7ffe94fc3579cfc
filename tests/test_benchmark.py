"""tools/benchmark.py modes run end to end and end with their JSON line (numbers are not asserted)."""

import json
import os
import subprocess
import sys

import pytest

from scratchdet_tf.data import shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("shapes"))
    shapes.write_split(d, "train", 8, seed=0)
    shapes.write_split(d, "val", 2, seed=0)
    return d


def _run(*args):
    run = subprocess.run([sys.executable, "tools/benchmark.py", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_input_mode_reports_pipeline_images_per_sec(shapes_dir):
    result = _run("input", f"--source=shapes:{shapes_dir}", "--image_size=64", "--seconds=1", "--batch_size=4")
    assert result["mode"] == "input" and result["images_per_sec"] > 0


def test_train_mode_reports_each_precision(shapes_dir):
    result = _run("train", "--model.depth=18", "--model.width=0.0625", "--model.image_size=64",
                  "--model.num_classes=5", "--anchors.steps=", f"--data.train_source=shapes:{shapes_dir}",
                  "--train.batch_size=4", "--train_steps=3", "--precisions=float32,mixed_bfloat16", "--xla=false")
    assert result["mode"] == "train"
    assert result["float32_images_per_sec"] > 0 and result["mixed_bfloat16_images_per_sec"] > 0
