"""tools/benchmark.py modes run end to end and end with their JSON line (numbers are not asserted)."""

import json
import os

import pytest
from conftest import cli_flags, run_tool, tiny_config

from scratchdet_tf.models import ssd


def _run(*args):
    run = run_tool("benchmark", *args, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_input_mode_reports_pipeline_images_per_sec(shapes_dir):
    result = _run("input", f"--source=shapes:{shapes_dir}", "--image_size=64", "--seconds=1", "--batch_size=4")
    assert result["mode"] == "input" and result["images_per_sec"] > 0


@pytest.mark.slow
def test_train_mode_reports_each_precision(shapes_dir):
    cfg = tiny_config(data__train_source=f"shapes:{shapes_dir}", train__batch_size=4)
    result = _run("train", *cli_flags(cfg), f"--source=shapes:{shapes_dir}", "--train_steps=3",
                  "--precisions=float32,mixed_bfloat16", "--xla=false")
    assert result["mode"] == "train" and result["source"] == f"shapes:{shapes_dir}"
    assert result["float32_images_per_sec"] > 0 and result["mixed_bfloat16_images_per_sec"] > 0
    # The headline: the first combination, with its conv FLOP rate (3 x 2 x MACs per image).
    assert result["images_per_sec"] == result["float32_images_per_sec"]
    macs = ssd.conv_macs(ssd.build_model(cfg.model, cfg.anchors))
    assert result["gflops_per_sec"] == pytest.approx(result["images_per_sec"] * 6 * macs / 1e9, rel=1e-2, abs=0.01)


@pytest.mark.slow
def test_train_mode_needs_no_dataset_of_the_config():
    # The config's own source (TFDS VOC, not on this machine) is not read: a fresh shapes dataset is
    # warped to the config's input size by the usual pipeline.
    cfg = tiny_config(train__batch_size=2, data__train_source="tfds:voc/2007:train+validation")
    result = _run("train", *cli_flags(cfg), "--train_steps=3", "--precisions=float32", "--xla=false")
    assert result["source"].startswith("shapes:") and result["image_size"] == cfg.model.image_size
    assert result["images_per_sec"] > 0 and result["gflops_per_sec"] > 0


@pytest.mark.slow
def test_benchmark_infer_mode_reports_speed_from_the_export_info(exported_tflite):
    result = run_tool("benchmark", "infer", f"--model={os.path.join(exported_tflite['dir'], 'model_int8.tflite')}",
                      "--iterations=3")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["mode"] == "infer" and summary["model"].endswith("model_int8.tflite") and summary["batch"] == 1
    # latency_ms is printed rounded to 0.01 ms, and a tiny model runs in a fraction of a millisecond.
    latency = summary["latency_ms"]
    assert latency > 0
    assert 0.99e3 / (latency + 0.005) <= summary["images_per_sec"] <= 1.01e3 / max(latency - 0.005, 1e-6)
    macs = ssd.conv_macs(exported_tflite["model"])
    assert summary["gflops_per_sec"] == pytest.approx(2 * macs * summary["images_per_sec"] / 1e9, abs=0.1)
