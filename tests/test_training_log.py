"""training_log (the run's JSON-lines curves) and the curves figure, against hand-written records."""

import numpy as np
import pytest
from PIL import Image

from scratchdet_tf import plots
from scratchdet_tf.training import training_log


def test_log_appends_records_and_a_resume_drops_steps_after_its_checkpoint(tmp_path):
    log = training_log.TrainingLog(str(tmp_path))
    for step in (10, 20, 30):
        log.append(step, step * 0.5, cls_loss=4.0 - step / 10, lr=0.05)
    log.append(20, 9.0, eval={"mAP_07": 0.5})
    with open(tmp_path / training_log.FILE_NAME, "a") as f:
        f.write('{"step": 40, "secon')  # torn by a kill
    assert [r["step"] for r in training_log.read(str(tmp_path))] == [10, 20, 30, 20]

    resumed = training_log.TrainingLog(str(tmp_path), start_step=20)  # the checkpoint was at step 20
    resumed.append(30, 2.0, cls_loss=1.0)
    records = training_log.read(str(tmp_path))
    assert [r["step"] for r in records] == [10, 20, 20, 30]
    assert records[-1]["seconds"] == pytest.approx(10.0 + 2.0)  # continues from the latest kept time


def test_first_passing_reports_the_first_evaluation_at_the_threshold():
    records = [{"step": 1, "seconds": 5.0, "cls_loss": 3.0}, {"step": 2, "seconds": 10.0, "eval": {"mAP_07": 0.5}},
               {"step": 3, "seconds": 20.0, "eval": {"mAP_07": 0.9}}, {"step": 4, "seconds": 30.0,
                                                                       "eval": {"mAP_07": 0.95}}]
    assert training_log.first_passing(records, "mAP_07", 0.9) == 20.0
    assert training_log.first_passing(records, "mAP_07", 0.99) is None


def test_no_model_dir_writes_nothing(tmp_path):
    training_log.TrainingLog(None).append(1, 1.0, cls_loss=1.0)
    assert not list(tmp_path.iterdir())


def test_training_curves_png_is_written(tmp_path):
    records = [{"step": s, "seconds": s / 10, "cls_loss": 4.0 / s, "box_loss": 2.0 / s} for s in range(1, 50)]
    records.append({"step": 49, "seconds": 4.9, "eval": {"mAP_07": 0.7}})
    path = plots.plot_training_curves(records, str(tmp_path / "out" / "curves.png"), plateau=3.86, target=0.9)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (420, 1200, 3) and image.std() > 10  # something drawn
