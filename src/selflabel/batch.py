"""Batch work over cases: skip what is done, shard by part or torchrun rank, collect failures by case.

One report type for every batch job (caching, prediction, pseudo-labelling): a bad case does not stop the others;
it is named in the report, and `BatchReport.raise_if_failed` turns the failures into one error line at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from selflabel.distributed import DistInfo, gather_objects
from selflabel.errors import SelflabelError
from selflabel.io import Case
from selflabel.progress import show_progress

T = TypeVar("T")


@dataclass
class BatchReport:
    """What a batch of cases did: written, skipped (already done), failed (case -> message), seconds per case."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self, written: str = "written", skipped: str = "skipped") -> str:
        """One line of counts, e.g. ``3 written, 1 skipped, 0 failed; 2.10 s per case`` (the words can change)."""
        timing = ""
        if self.seconds:
            timing = f"; {np.mean(list(self.seconds.values())):.2f} s per case"
        return f"{len(self.written)} {written}, {len(self.skipped)} {skipped}, {len(self.failed)} failed{timing}"

    def raise_if_failed(self) -> None:
        """One SelflabelError line: the first failure, and the other failed cases by name; nothing when none failed."""
        if self.failed:
            first, *others = self.failed
            more = f" (and {len(others)} more failed case(s): {', '.join(sorted(others))})" if others else ""
            raise SelflabelError(f"{self.failed[first]}{more}")

    def merge(self, other: BatchReport) -> BatchReport:
        """This report with `other`'s cases added (e.g. the caching step's failures before prediction)."""
        self.written += other.written
        self.skipped += other.skipped
        self.failed.update(other.failed)
        self.seconds.update(other.seconds)
        return self


def gather_report(report: BatchReport, info: DistInfo) -> BatchReport:
    """Every torchrun rank's report merged, on every rank (the report itself without DDP): one summary for the job.

    A collective call (every rank must make it); it also waits for every rank to finish its cases.
    """
    reports = gather_objects(report, info)
    if len(reports) == 1:
        return reports[0]
    merged = BatchReport()
    for part in reports:
        merged.merge(part)
    return merged


def shard(items: Sequence[T], num_parts: int, part_id: int) -> list[T]:
    """This part's items, ``items[part_id::num_parts]`` (each item in exactly one part)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise SelflabelError(f"--part-id must be in [0, {num_parts}) and --num-parts >= 1, got {part_id}/{num_parts}")
    return list(items)[part_id::num_parts]


def resolve_parts(num_parts: int | None, part_id: int | None, info: DistInfo) -> tuple[int, int]:
    """The (number of parts, this part) of the cases for this process.

    Neither given: one part per torchrun rank. Both given: that part, split again over the ranks of a torchrun job
    (``num_parts * world_size`` parts in all), so each machine of a manual split may itself run torchrun.
    """
    if num_parts is None and part_id is None:
        return info.world_size, info.rank
    if num_parts is None or part_id is None:
        raise SelflabelError("give both --num-parts and --part-id (or neither, to split by torchrun rank)")
    return num_parts * info.world_size, part_id * info.world_size + info.rank


def run_cases(
    cases: Sequence[Case],
    *,
    is_done: Callable[[Case], bool],
    work: Callable[[Case], None],
    desc: str,
    progress: bool = True,
) -> BatchReport:
    """Run `work` on every case not `is_done`, timing each and collecting failures by case name.

    Progress is a bar on a terminal and a plain line every half minute in a log (`selflabel.progress`).
    """
    report = BatchReport()
    todo = []
    for case in cases:
        if is_done(case):
            report.skipped.append(case.name)
        else:
            todo.append(case)
    bar = show_progress(todo, desc=desc, unit="case", enabled=progress and bool(todo))
    for case in bar:
        start = time.perf_counter()
        try:
            work(case)
        except SelflabelError as exc:
            report.failed[case.name] = str(exc)
        except Exception as exc:  # one odd file must not stop 2000 others; it is named in the summary
            report.failed[case.name] = f"{case.image}: {type(exc).__name__}: {exc}"
        else:
            report.seconds[case.name] = time.perf_counter() - start
            report.written.append(case.name)
            bar.set_postfix(last=f"{report.seconds[case.name]:.1f}s")
            continue
        bar.write(f"error: {report.failed[case.name]}")
    bar.close()
    return report
