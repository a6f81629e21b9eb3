"""selflabel.progress: a bar on a terminal, plain lines every half minute in a log, summary lines and input
warnings once per torchrun job (a real 2-process torchrun)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from selflabel import progress
from selflabel.batch import run_cases
from selflabel.io import Case
from selflabel.progress import LineProgress, show_progress
from tests.conftest import TINY, cli_sets, make_dataset, torchrun_cli


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_every_interval_and_at_the_end():
    """100 items, one a second, a line at most every 30 s: lines at 30, 60 and 90 s and one at the end."""
    clock, stream = FakeClock(), io.StringIO()
    bar = LineProgress(total=100, desc="predict", unit="case", interval=30.0, stream=stream, clock=clock)
    for _ in range(100):
        clock.now += 1.0
        bar.update(1)
        bar.set_postfix(last="1.0s")
    bar.close()
    bar.close()  # a second close adds nothing
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines == [
        "predict: 30/100 case (30 %), 1.00 s/case, 0:30 elapsed, ~1:10 left; last=1.0s",
        "predict: 60/100 case (60 %), 1.00 s/case, 1:00 elapsed, ~0:40 left; last=1.0s",
        "predict: 90/100 case (90 %), 1.00 s/case, 1:30 elapsed, ~0:10 left; last=1.0s",
        "predict: 100/100 case (100 %), 1.00 s/case, 1:40 elapsed; last=1.0s",
    ]


def test_a_resumed_count_gives_the_rate_of_this_run():
    clock, stream = FakeClock(), io.StringIO()
    bar = LineProgress(total=1000, initial=400, desc="train run", unit="it", interval=60.0, stream=stream, clock=clock)
    for _ in range(240):
        clock.now += 0.25
        bar.update(1)
    bar.close()
    assert stream.getvalue().splitlines() == [
        "train run: 640/1000 it (64 %), 4.00 it/s, 1:00 elapsed, ~1:30 left",
        "train run: 640/1000 it (64 %), 4.00 it/s, 1:00 elapsed, ~1:30 left",
    ]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_lines_in_a_log_nothing_when_disabled(monkeypatch):
    monkeypatch.setattr("sys.stderr", Terminal())
    assert type(show_progress(range(3), desc="x")).__name__ == "_Bar"
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert isinstance(show_progress(range(3), desc="x"), LineProgress)
    quiet = show_progress(range(3), desc="x", enabled=False)
    assert list(quiet) == [0, 1, 2] and not isinstance(quiet, LineProgress)


def test_batch_work_in_a_log_prints_lines_not_redraws(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.0)  # a line after every case
    cases = [Case(f"c{i}", Path(f"c{i}.nii.gz")) for i in range(3)]
    report = run_cases(cases, is_done=lambda c: False, work=lambda c: None, desc="predict", progress=True)
    assert report.written == ["c0", "c1", "c2"]
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line.split(",")[0] for line in err.splitlines()] == [
        "predict: 1/3 case (33 %)",
        "predict: 2/3 case (67 %)",
        "predict: 3/3 case (100 %)",
        "predict: 3/3 case (100 %)",  # the closing line
    ]


def test_summary_lines_and_shared_warnings_come_from_rank_0(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    progress.say("trained 1 epochs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        progress.warn_input("dataset.json", "seen alike by every rank")
        progress.warn_input("case_7", "read by this rank alone", every_rank=True)
    assert capsys.readouterr().out == ""
    assert [str(w.message) for w in caught] == ["case_7: read by this rank alone"]
    monkeypatch.setenv("RANK", "0")
    progress.say("trained 1 epochs")
    assert capsys.readouterr().out == "trained 1 epochs\n"


def test_torchrun_training_log_has_one_summary_and_no_redraws(tmp_path):
    """A real 2-process torchrun of `selflabel train` writing to pipes (a log): the summary line once, progress as
    plain lines from rank 0 alone, not one carriage-return redraw."""
    root = make_dataset(tmp_path / "Dataset", n_train=3, n_unlabeled=0, n_test=0)
    args = ["train", root, "--out", tmp_path / "run", *cli_sets({**TINY, "train.epochs": 1})]
    done = torchrun_cli(args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 1 epochs") == 1, done.stdout
    assert "\r" not in done.stdout + done.stderr
    assert sum(line.startswith("train run: 3/3 it") for line in done.stderr.splitlines()) == 1, done.stderr
    assert sum(line.startswith("epoch 0: val DSC") for line in done.stdout.splitlines()) == 1, done.stdout
