"""tools/export.py: reads a training run's folder, applies flag overrides, names a missing run."""

import json
import os

import pytest
import tensorflow as tf
from conftest import calibrated_model, export_config, run_tool, synthetic_batch

from scratchdet_tf import run_dir
from scratchdet_tf.export import predictor


@pytest.mark.slow
def test_export_tool_reads_the_run_and_applies_flag_overrides(tmp_path):
    cfg = export_config()
    model, _ = calibrated_model(cfg)
    model_dir, export_dir = tmp_path / "run", tmp_path / "export" / "1"
    run_dir.write_config(cfg, str(model_dir))
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(model_dir), 1).save(checkpoint_number=12)
    result = run_tool("export", f"--model_dir={model_dir}", f"--export_dir={export_dir}", "--tflite=fp32",
                      "--export.max_detections=5")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["step"] == 12
    assert summary["tflite_bytes"]["fp32"] == os.path.getsize(export_dir / "model_fp32.tflite")
    out = predictor.load_predict_fn(str(export_dir))(synthetic_batch(1))
    assert out["boxes"].shape == (1, 5, 4)  # the override reached the export
    missing = run_tool("export", f"--model_dir={tmp_path / 'nope'}", f"--export_dir={export_dir}", timeout=120)
    assert missing.returncode == 1 and "nope" in missing.stderr
