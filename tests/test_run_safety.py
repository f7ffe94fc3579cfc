"""No lost runs: one owner per run folder, resume from what is really on disk, signals, failed saves.

Faults are injected the way they happen: the index file deleted, the newest data file truncated, a
second trainer launched into the same folder, SIGTERM sent to a training process, a save that fails.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from conftest import ROOT, cli_flags, run_tool, tiny_train_config, tool_command

from scratchdet_tf import config, run_dir
from scratchdet_tf.training import train_lib


def tiny_cfg(shapes_dir, **train):
    return tiny_train_config(shapes_dir, depth=10, **{"max_steps": 4, "checkpoint_every_steps": 2, **train})


def snapshot(model_dir, names):
    out = {}
    for name in names:
        with open(os.path.join(model_dir, name), "rb") as f:
            out[name] = f.read()
    return out


# --- the lock ---


def test_a_second_owner_is_refused_and_the_lock_dies_with_its_owner(tmp_path):
    model_dir = str(tmp_path / "run")
    with run_dir.RunLock(model_dir):
        with pytest.raises(run_dir.RunDirError, match=rf"in use by another trainer \(pid {os.getpid()} on "):
            with run_dir.RunLock(model_dir):
                pass
    with run_dir.RunLock(model_dir):  # released on exit
        pass
    # A holder killed with SIGKILL runs no cleanup; the kernel drops its flock all the same.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from scratchdet_tf import run_dir\n"
        "with run_dir.RunLock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)"), model_dir],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(run_dir.RunDirError, match=rf"pid {holder.pid} "):
        with run_dir.RunLock(model_dir):
            pass
    holder.kill()
    holder.wait()
    with run_dir.RunLock(model_dir):
        pass


def test_model_dir_that_is_a_file_is_one_clear_error(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(run_dir.RunDirError, match="exists and is not a folder"):
        with run_dir.RunLock(str(path)):
            pass


# --- resuming from what is on disk ---


@pytest.mark.slow
def test_missing_index_resumes_from_the_newest_checkpoint_and_keeps_the_others(shapes_dir, tmp_path):
    model_dir = str(tmp_path)
    train_lib.train(tiny_cfg(shapes_dir), model_dir)
    os.remove(os.path.join(model_dir, "checkpoint"))
    kept = snapshot(model_dir, ["ckpt-2.index", "ckpt-2.data-00000-of-00001",
                                "ckpt-4.index", "ckpt-4.data-00000-of-00001"])
    result = train_lib.train(tiny_cfg(shapes_dir, max_steps=6), model_dir)
    assert result["step"] == 6 and result["steps_this_run"] == 2  # resumed at 4, not started over
    assert snapshot(model_dir, kept) == kept
    assert os.path.basename(tf.train.latest_checkpoint(model_dir)) == "ckpt-6"


@pytest.mark.slow
def test_truncated_newest_checkpoint_is_skipped_for_the_previous_one(shapes_dir, tmp_path, caplog):
    model_dir = str(tmp_path)
    train_lib.train(tiny_cfg(shapes_dir), model_dir)
    data = os.path.join(model_dir, "ckpt-4.data-00000-of-00001")
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    restored = run_dir.restore_model(model_dir)  # evaluation / export fall back the same way
    assert os.path.basename(restored.checkpoint) == "ckpt-2" and restored.step == 2
    assert "ckpt-4 is unreadable" in caplog.text
    result = train_lib.train(tiny_cfg(shapes_dir, max_steps=6), model_dir)
    assert result["steps_this_run"] == 4 and result["step"] == 6


def test_no_readable_checkpoint_stops_and_touches_nothing(shapes_dir, tmp_path):
    model_dir = str(tmp_path)
    train_lib.train(tiny_cfg(shapes_dir), model_dir)
    for step in (2, 4):
        data = os.path.join(model_dir, f"ckpt-{step}.data-00000-of-00001")
        with open(data, "r+b") as f:
            f.truncate(10)

    def state():  # every file of the run but the lock (which records its owner on each launch)
        names = [n for n in os.listdir(model_dir) if n != run_dir.LOCK_FILE]
        return {n: os.path.getmtime(os.path.join(model_dir, n)) for n in names}

    before = state()
    with pytest.raises(run_dir.RunDirError, match="no readable checkpoint .*ckpt-4: .*ckpt-2: .*nothing was changed"):
        train_lib.train(tiny_cfg(shapes_dir, max_steps=6), model_dir)
    assert state() == before


# --- the run's configuration ---


@pytest.mark.slow
def test_relaunch_may_extend_but_not_change_the_computation(shapes_dir, tmp_path):
    model_dir = str(tmp_path)
    train_lib.train(tiny_cfg(shapes_dir), model_dir)
    files = snapshot(model_dir, ["config.json", "flags.cfg"])
    with pytest.raises(config.ConfigError, match=r"train.learning_rate: 0.01 -> 0.02.*--allow_config_change"):
        train_lib.train(tiny_cfg(shapes_dir, max_steps=6, learning_rate=0.02), model_dir)
    assert snapshot(model_dir, files) == files
    # A bad data source with an allowed change: the error comes before anything is written.
    bad = tiny_cfg(shapes_dir, max_steps=6)
    bad = config.replace(bad, data__train_source=f"shapes:{tmp_path}/missing")
    with pytest.raises((FileNotFoundError, ValueError), match="missing"):
        train_lib.train(bad, model_dir, allow_config_change=True)
    assert snapshot(model_dir, files) == files
    longer = train_lib.train(tiny_cfg(shapes_dir, max_steps=6), model_dir)  # only the length changed
    assert longer["step"] == 6
    changed = train_lib.train(tiny_cfg(shapes_dir, max_steps=8, learning_rate=0.02), model_dir,
                              allow_config_change=True)
    assert changed["step"] == 8
    with open(os.path.join(model_dir, "config.json")) as f:
        assert json.load(f)["train"]["learning_rate"] == 0.02


# --- failed saves ---


@pytest.mark.slow
def test_failed_save_leaves_no_partial_checkpoint_and_keeps_the_earlier_ones(shapes_dir, tmp_path, monkeypatch):
    model_dir = str(tmp_path)
    train_lib.train(tiny_cfg(shapes_dir), model_dir)
    kept = snapshot(model_dir, ["ckpt-4.index", "ckpt-4.data-00000-of-00001"])
    real_save = tf.train.CheckpointManager.save

    def disk_full(self, checkpoint_number=None, **kwargs):
        os.makedirs(os.path.join(self.directory, f"ckpt-{checkpoint_number}_temp"))  # what TF leaves
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", disk_full)
    with pytest.raises(run_dir.RunDirError, match=r"could not save checkpoint .*ckpt-6: No space left on device; "
                                                  "the earlier checkpoints are intact"):
        train_lib.train(tiny_cfg(shapes_dir, max_steps=6), model_dir)
    assert not os.path.exists(os.path.join(model_dir, "ckpt-6_temp"))
    assert snapshot(model_dir, kept) == kept
    monkeypatch.setattr(tf.train.CheckpointManager, "save", real_save)
    assert train_lib.train(tiny_cfg(shapes_dir, max_steps=6), model_dir)["steps_this_run"] == 2


# --- the command line: a second launch, SIGTERM, resume ---


def _tool(shapes_dir, model_dir, *extra):
    """tools/train.py's arguments for the tiny config at depth 10, not deterministic, logging every step."""
    cfg = config.replace(tiny_train_config(shapes_dir, depth=10, deterministic=False), data__deterministic=False)
    return [f"--model_dir={model_dir}", *cli_flags(cfg), *extra]


@pytest.mark.slow
def test_second_launch_is_refused_and_sigterm_saves_the_current_step(shapes_dir, tmp_path):
    model_dir = tmp_path / "run"
    steps = ["--train.max_steps=100000", "--train.checkpoint_every_steps=100000"]
    proc = subprocess.Popen(tool_command("train", *_tool(shapes_dir, model_dir, *steps)), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = model_dir / "training_log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (log.exists() and log.read_text().count("\n") >= 3):
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read()[-2000:]

    second = run_tool("train", *_tool(shapes_dir, model_dir, *steps))
    assert second.returncode == 1
    assert f"in use by another trainer (pid {proc.pid} on " in second.stderr
    assert "Traceback" not in second.stderr

    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert time.time() - sent < 60
    assert proc.returncode == 128 + signal.SIGTERM
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "interrupted" and result["signal"] == "SIGTERM"
    stopped = result["step"]
    assert os.path.isfile(model_dir / f"ckpt-{stopped}.index")  # saved at the step it stopped, not before
    assert f"saved {model_dir}/ckpt-{stopped} at step {stopped}" in err

    resumed = run_tool("train", *_tool(shapes_dir, model_dir, f"--train.max_steps={stopped + 2}",
                                       "--train.checkpoint_every_steps=100000"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert final["step"] == stopped + 2 and final["steps_this_run"] == 2


@pytest.mark.parametrize("source,message", [
    ("foo:bar", "FATAL ValueError: data source 'foo:bar' (in 'foo:bar') must start with one of"),
    ("tfds:nonexistent/1:train", "FATAL FileNotFoundError: TFDS dataset 'nonexistent/1': Dataset nonexistent not "
                                 "found."),
])
def test_bad_data_source_is_one_line_and_leaves_no_folder(tmp_path, source, message):
    model_dir = tmp_path / "run"
    run = run_tool("train", *_tool("unused", model_dir, f"--data.train_source={source}",
                                   f"--data.tfds_data_dir={tmp_path}"))
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith(message), run.stderr[-1500:]
    assert "Traceback" not in run.stderr
    assert not model_dir.exists()
