"""selflabel.batch: the report's summary and error line, parts by number and by torchrun rank, and the case loop
(skip what is done, keep going past a bad case, name it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from selflabel.batch import BatchReport, resolve_parts, run_cases, shard
from selflabel.distributed import DistInfo, dist_info
from selflabel.errors import InputError, SelflabelError
from selflabel.io import Case


def cases(n: int) -> list[Case]:
    return [Case(f"c{i}", Path(f"c{i}.nii.gz")) for i in range(n)]


# ---- the report ----


def test_summary_counts_and_mean_time():
    report = BatchReport(written=["a", "b"], skipped=["c"], failed={"d": "d: bad"}, seconds={"a": 1.0, "b": 3.0})
    assert report.summary() == "2 written, 1 skipped, 1 failed; 2.00 s per case"
    assert report.summary("cached", "up to date") == "2 cached, 1 up to date, 1 failed; 2.00 s per case"
    assert BatchReport(skipped=["c"]).summary() == "0 written, 1 skipped, 0 failed"  # no time without work


def test_no_failure_raises_nothing_and_one_failure_is_its_own_message():
    BatchReport(written=["a"]).raise_if_failed()
    with pytest.raises(SelflabelError) as caught:
        BatchReport(failed={"b": "b.nii.gz: not a NIfTI file"}).raise_if_failed()
    assert str(caught.value) == "b.nii.gz: not a NIfTI file"


def test_several_failures_give_the_first_and_name_the_others():
    report = BatchReport(failed={"x": "x.nii.gz: truncated", "c": "c: empty", "a": "a: shape"})
    with pytest.raises(SelflabelError) as caught:
        report.raise_if_failed()
    message = str(caught.value)
    assert message == "x.nii.gz: truncated (and 2 more failed case(s): a, c)"
    assert "\n" not in message


def test_merge_adds_the_other_report_s_cases():
    first = BatchReport(written=["a"], failed={"b": "b: bad"}, seconds={"a": 1.0})
    merged = first.merge(BatchReport(written=["c"], skipped=["d"], seconds={"c": 2.0}))
    assert merged is first
    assert merged.written == ["a", "c"] and merged.skipped == ["d"] and list(merged.failed) == ["b"]
    assert merged.seconds == {"a": 1.0, "c": 2.0}


# ---- parts ----


@pytest.mark.parametrize("num_parts", [1, 2, 3, 7, 9])
def test_parts_cover_every_case_exactly_once(num_parts):
    items = cases(7)
    parts = [shard(items, num_parts, i) for i in range(num_parts)]
    names = [c.name for part in parts for c in part]
    assert sorted(names) == sorted(c.name for c in items) and len(names) == 7
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    if num_parts == 3:
        assert [[c.name for c in p] for p in parts] == [["c0", "c3", "c6"], ["c1", "c4"], ["c2", "c5"]]


@pytest.mark.parametrize(("num_parts", "part_id"), [(2, 2), (2, -1), (0, 0)])
def test_bad_part_is_an_error_naming_the_options(num_parts, part_id):
    with pytest.raises(SelflabelError, match="--part-id must be in"):
        shard(cases(3), num_parts, part_id)


def test_parts_follow_the_torchrun_rank(monkeypatch):
    """Under torchrun (RANK/WORLD_SIZE set) a process takes its rank's share; an explicit part is split again over
    the ranks (part 2 of 3 on rank 1 of 2 is part 5 of 6); half an explicit split is refused."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    info = dist_info()
    assert resolve_parts(None, None, info) == (2, 1)
    assert resolve_parts(3, 2, info) == (6, 5)
    with pytest.raises(SelflabelError, match="give both --num-parts and --part-id"):
        resolve_parts(3, None, info)
    with pytest.raises(SelflabelError, match="give both --num-parts and --part-id"):
        resolve_parts(None, 0, info)
    assert [c.name for c in shard(cases(5), *resolve_parts(None, None, info))] == ["c1", "c3"]
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert resolve_parts(None, None, dist_info()) == (1, 0)
    assert resolve_parts(3, 2, dist_info()) == (3, 2)


def test_explicit_parts_split_over_ranks_cover_every_case_once():
    """Two machines (--num-parts 2), each a torchrun job of 3 ranks: every case once, in all six processes."""
    items = cases(20)
    seen = []
    for part_id in range(2):
        for rank in range(3):
            seen += shard(items, *resolve_parts(2, part_id, DistInfo(rank, rank, 3)))
    assert sorted(c.name for c in seen) == sorted(c.name for c in items) and len(seen) == 20


# ---- the loop ----


def test_run_cases_skips_done_cases_and_keeps_going_past_failures():
    done = {"c1"}
    ran = []

    def work(case: Case) -> None:
        ran.append(case.name)
        if case.name == "c2":
            raise InputError(case.image, "not a NIfTI file")
        if case.name == "c3":
            raise ValueError("odd header")

    report = run_cases(cases(5), is_done=lambda c: c.name in done, work=work, desc="test", progress=False)
    assert ran == ["c0", "c2", "c3", "c4"]  # c1 is done; the failures stop nothing
    assert report.skipped == ["c1"] and report.written == ["c0", "c4"]
    assert report.failed == {"c2": "c2.nii.gz: not a NIfTI file", "c3": "c3.nii.gz: ValueError: odd header"}
    assert set(report.seconds) == {"c0", "c4"} and all(s >= 0 for s in report.seconds.values())
    with pytest.raises(SelflabelError, match=r"^c2.nii.gz: not a NIfTI file \(and 1 more failed case\(s\): c3\)$"):
        report.raise_if_failed()


def test_run_cases_lets_an_interrupt_through():
    def work(case: Case) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cases(cases(2), is_done=lambda c: False, work=work, desc="test", progress=False)
