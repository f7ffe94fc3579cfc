"""The run's learning curves as JSON lines (``<model_dir>/training_log.jsonl``), written by training.

One object per line: a training record ``{"step", "seconds", "loss", "cls_loss", "box_loss", "lr",
"images_per_sec"}`` at every log step, or an evaluation record ``{"step", "seconds", "eval":
{"mAP_07", ...}}`` at every periodic evaluation. ``seconds`` counts training time only (periodic
evaluation excluded) and continues across resumed runs. ``plots.plot_training_curves`` draws it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List

FILE_NAME = "training_log.jsonl"


class TrainingLog:
    """Appends records to ``<model_dir>/training_log.jsonl``; ``model_dir=None`` writes nothing.

    On a resumed run (``start_step > 0``) records after ``start_step`` (left by a run that was
    killed after its last checkpoint) are dropped, and ``seconds`` continue from the last kept one.
    """

    def __init__(self, model_dir: str | None, start_step: int = 0):
        self.path = os.path.join(model_dir, FILE_NAME) if model_dir else None
        self.offset = 0.0
        if not self.path:
            return
        kept = [r for r in read(model_dir) if r["step"] <= start_step] if start_step else []
        if kept:
            self.offset = max(r["seconds"] for r in kept)
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def append(self, step: int, seconds: float, **values) -> None:
        if not self.path:
            return
        record = {"step": int(step), "seconds": round(self.offset + seconds, 3)}
        for key, value in values.items():
            if isinstance(value, float):
                value = round(value, 6) if math.isfinite(value) else None
            record[key] = value
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read(model_dir: str) -> List[Dict]:
    """The records of ``<model_dir>/training_log.jsonl`` in file order; [] when there is none.

    A torn last line (a run killed mid-write) is skipped.
    """
    path = os.path.join(model_dir, FILE_NAME)
    if not os.path.isfile(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def first_passing(records: List[Dict], metric: str, threshold: float) -> float | None:
    """Training seconds of the first evaluation record whose ``metric`` reaches ``threshold``, else None."""
    for r in records:
        value = r.get("eval", {}).get(metric)
        if value is not None and value >= threshold:
            return r["seconds"]
    return None
