"""A run folder's training logs: one writer and one reader each, used by training, resume and the report.

``log_iterations.csv``: one row per iteration (loss, CE, Dice, lr, slices per second, wall-clock time).
``log_epochs.jsonl``: one JSON object per epoch (iterations so far and, when validated, the validation scores).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from selflabel.atomic import atomic_write_text

ITERATIONS = "log_iterations.csv"
EPOCHS = "log_epochs.jsonl"
FIELDS = ["iteration", "epoch", "loss", "ce", "dice", "lr", "slices_per_s", "time"]


class IterationLog:
    """Append-only CSV of per-iteration loss, Dice, CE, lr and throughput."""

    def __init__(self, run_dir: Path):
        path = Path(run_dir) / ITERATIONS
        new = not path.is_file()
        self.fh = open(path, "a", newline="")
        self.writer = csv.writer(self.fh)
        if new:
            self.writer.writerow(FIELDS)
        self.last = time.perf_counter()

    def write(self, *, iteration: int, epoch: int, loss: float, parts: dict, lr: float, slices: int) -> None:
        now = time.perf_counter()
        rate = slices / max(now - self.last, 1e-9)
        self.last = now
        self.writer.writerow(
            [iteration, epoch, f"{loss:.6f}", f"{parts['ce']:.6f}", f"{parts['dice']:.6f}", f"{lr:.6e}",
             f"{rate:.2f}", f"{time.time():.3f}"]
        )  # fmt: skip
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def append_epoch(run_dir: Path, record: dict[str, Any]) -> None:
    """Add one epoch's record to ``log_epochs.jsonl``."""
    with open(Path(run_dir) / EPOCHS, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def read_iterations(run_dir: Path) -> list[dict[str, float]]:
    """Every iteration row, numbers parsed (``iteration`` and ``epoch`` as int); [] without a log."""
    path = Path(run_dir) / ITERATIONS
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: int(v) if k in ("iteration", "epoch") else float(v) for k, v in row.items()} for row in rows]


def read_epochs(run_dir: Path) -> list[dict[str, Any]]:
    """Every epoch record, in order; [] without a log."""
    path = Path(run_dir) / EPOCHS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate(run_dir: Path, *, iteration: int, epoch: int) -> None:
    """Drop rows written after the checkpoint a run resumes from (iterations >= `iteration`, epochs >= `epoch`)."""
    it_log, ep_log = Path(run_dir) / ITERATIONS, Path(run_dir) / EPOCHS
    if it_log.is_file():
        lines = it_log.read_text().splitlines()
        kept = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) < iteration]
        atomic_write_text(it_log, "\n".join(kept) + "\n")
    if ep_log.is_file():
        kept = [ln for ln in ep_log.read_text().splitlines() if ln and json.loads(ln)["epoch"] < epoch]
        atomic_write_text(ep_log, "".join(ln + "\n" for ln in kept))
