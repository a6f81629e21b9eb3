"""selflabel.training_log: one header across resumed writers, parsed rows, epoch records, and truncation on resume."""

from __future__ import annotations

import pytest

from selflabel.training_log import (
    EPOCHS,
    FIELDS,
    ITERATIONS,
    IterationLog,
    append_epoch,
    read_epochs,
    read_iterations,
    truncate,
)


def _log(run, iterations, epoch_of=lambda i: i // 3):
    log = IterationLog(run)
    for i in iterations:
        parts = {"ce": 0.25, "dice": 0.125}
        log.write(iteration=i, epoch=epoch_of(i), loss=1.0 / (i + 1), parts=parts, lr=1e-3 * 0.9**i, slices=8)
    log.close()


def test_a_resumed_writer_appends_under_the_one_header_and_rows_parse_back(tmp_path):
    assert read_iterations(tmp_path) == [] and read_epochs(tmp_path) == []
    _log(tmp_path, range(3))
    _log(tmp_path, range(3, 5))  # a second process, after a resume
    lines = (tmp_path / ITERATIONS).read_text().splitlines()
    assert lines[0] == ",".join(FIELDS) and sum(line == lines[0] for line in lines) == 1
    rows = read_iterations(tmp_path)
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3, 4] and [r["epoch"] for r in rows] == [0, 0, 0, 1, 1]
    assert isinstance(rows[0]["iteration"], int) and isinstance(rows[0]["loss"], float)
    assert rows[3]["loss"] == pytest.approx(0.25) and rows[4]["lr"] == pytest.approx(1e-3 * 0.9**4, rel=1e-6)
    assert rows[0]["ce"] == 0.25 and rows[0]["dice"] == 0.125
    assert all(r["slices_per_s"] > 0 for r in rows)
    assert rows[-1]["time"] >= rows[0]["time"] > 1e9  # wall-clock seconds since the epoch


def test_epoch_records_come_back_in_order(tmp_path):
    append_epoch(tmp_path, {"epoch": 0, "iterations": 3})
    append_epoch(tmp_path, {"epoch": 1, "iterations": 6, "mean_dsc": 0.5, "organs": {"Liver": {"dsc": 0.9}}})
    assert read_epochs(tmp_path) == [
        {"epoch": 0, "iterations": 3},
        {"epoch": 1, "iterations": 6, "mean_dsc": 0.5, "organs": {"Liver": {"dsc": 0.9}}},
    ]


def test_truncate_drops_what_was_logged_after_the_checkpoint(tmp_path):
    """Killed in epoch 2 after iteration 7, resumed from the checkpoint at iteration 6 (end of epoch 1)."""
    _log(tmp_path, range(8))
    for epoch in range(2):
        append_epoch(tmp_path, {"epoch": epoch, "iterations": 3 * (epoch + 1)})
    truncate(tmp_path, iteration=6, epoch=2)
    assert [r["iteration"] for r in read_iterations(tmp_path)] == [0, 1, 2, 3, 4, 5]
    assert [e["epoch"] for e in read_epochs(tmp_path)] == [0, 1]
    truncate(tmp_path, iteration=4, epoch=1)
    assert [r["iteration"] for r in read_iterations(tmp_path)] == [0, 1, 2, 3]
    assert [e["epoch"] for e in read_epochs(tmp_path)] == [0]
    assert (tmp_path / ITERATIONS).read_text().splitlines()[0] == ",".join(FIELDS)
    _log(tmp_path, range(4, 6))  # the resumed run goes on writing below the kept rows
    assert [r["iteration"] for r in read_iterations(tmp_path)] == [0, 1, 2, 3, 4, 5]
    truncate(tmp_path, iteration=0, epoch=0)
    assert read_iterations(tmp_path) == [] and read_epochs(tmp_path) == []


def test_truncate_without_logs_does_nothing(tmp_path):
    truncate(tmp_path, iteration=5, epoch=1)
    assert not (tmp_path / ITERATIONS).exists() and not (tmp_path / EPOCHS).exists()
