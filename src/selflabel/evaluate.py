"""Score a folder of predicted label maps against ground truth the FLARE22 way, and write FLARE's CSV.

Cases are paired by name (`selflabel.io.case_name`: the file name less ``.nii.gz`` and a ``_0000`` suffix), so a
prediction ``FLARE22_Tr_0001.nii.gz`` (or ``FLARE22_Tr_0001_0000.nii.gz``) scores against the ground truth
``FLARE22_Tr_0001.nii.gz``. The CSV has FLARE22_DSC_NSD_Eval.py's shape: ``Name`` (the case's file name, as FLARE
writes it, e.g. ``FLARE22_Tr_0001.nii.gz``), the 13 ``<Organ>_DSC`` columns, then the 13 ``<Organ>_NSD`` columns,
values rounded to 4 decimals, one row per ground-truth case sorted by name. Unlike FLARE's script (which lists the
prediction folder), a ground truth without a prediction scores 0 for every organ, with a warning, and a prediction
without a ground truth is reported and not scored. Spacing and the axial axis come from the ground truth's header.

A summary (per-organ mean ± std and the organ-averaged mean DSC and NSD, over the rounded values the CSV holds, and
per organ the number of cases whose ground truth holds it) is written beside the CSV as ``<csv stem>_summary.json``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selflabel.atomic import atomic_write_csv, atomic_write_text
from selflabel.errors import InputError, SelflabelError
from selflabel.io import case_name, check_same_grid, read_label, single_files
from selflabel.labels import FLARE22_ORGANS, Organ
from selflabel.metrics import NSD_MIN_DICE, CaseScores, ScoreSummary, score_case, summarize

__all__ = [
    "CaseResult",
    "csv_columns",
    "EvaluationSummary",
    "evaluate_folders",
    "format_summary",
    "score_files",
    "summary_path",
]

logger = logging.getLogger(__name__)


def csv_columns(organs: Sequence[Organ] = FLARE22_ORGANS) -> tuple[str, ...]:
    """FLARE's CSV header: the case name, then ``<Organ>_DSC`` for every organ, then ``<Organ>_NSD``."""
    return ("Name", *(f"{o.short}_DSC" for o in organs), *(f"{o.short}_NSD" for o in organs))


@dataclass(frozen=True)
class CaseResult:
    """One CSV row. name: the ground truth's file name; prediction: None when it was missing (scores all 0)."""

    name: str
    scores: CaseScores
    prediction: Path | None


@dataclass
class EvaluationSummary:
    """What `evaluate_folders` wrote: per-case rows, their summary, missing and extra predictions, output files."""

    cases: list[CaseResult]
    summary: ScoreSummary
    missing: list[str] = field(default_factory=list)
    extra: list[Path] = field(default_factory=list)
    csv_path: Path | None = None
    json_path: Path | None = None


def summary_path(out_csv: str | Path) -> Path:
    """Where the JSON summary of `out_csv` goes: ``metrics.csv`` -> ``metrics_summary.json``."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.name.removesuffix(".csv") + "_summary.json")


def score_files(
    pred_path: str | Path,
    gt_path: str | Path,
    nsd_min_dice: float = NSD_MIN_DICE,
    organs: Sequence[Organ] = FLARE22_ORGANS,
) -> CaseScores:
    """FLARE22 scores (unrounded) of one prediction file against its ground-truth file, for each of `organs`.

    Raises:
        InputError: a file is unreadable or not a label map, or the two differ in shape or affine.
    """
    gt = read_label(gt_path)
    pred = read_label(pred_path)
    check_same_grid(gt, pred, "the ground truth's")
    return score_case(
        pred.array, gt.array, gt.spacing, axial_axis=gt.axial_axis, organs=organs, nsd_min_dice=nsd_min_dice
    )


def _score_job(job: tuple[Path, Path, float, Sequence[Organ]]) -> tuple[str, object]:
    """Worker: ("ok", scores) or ("error", (path, problem)); InputError does not survive pickling as itself."""
    try:
        return "ok", score_files(*job)
    except InputError as exc:
        return "error", (str(exc.path), exc.problem)


def _organs_in(path: Path, organs: Sequence[Organ]) -> dict[str, bool]:
    """Which organs a ground-truth file holds (for a case without a prediction, which is not scored)."""
    present = set(np.unique(read_label(path).array).tolist())
    return {o.short: o.index in present for o in organs}


def _write_csv(path: Path, cases: Sequence[CaseResult], organs: Sequence[Organ]) -> None:
    columns = csv_columns(organs)
    rows = ([case.name, *(repr(float(case.scores.row()[c])) for c in columns[1:])] for case in cases)
    atomic_write_csv(path, columns, rows)


def _score_jobs(jobs: list[tuple], workers: int, file_ending: str) -> dict[str, CaseScores]:
    """Scores per case name of (prediction, ground truth, nsd_min_dice, organs) jobs, in `workers` processes.

    Raises InputError for the first job whose files could not be scored.
    """
    if workers > 1 and len(jobs) > 1:
        # spawn: a forked copy of a process with threads (torch, a GUI backend) can deadlock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            outcomes = list(pool.map(_score_job, jobs))
    else:
        outcomes = [_score_job(job) for job in jobs]
    scored: dict[str, CaseScores] = {}
    for (pred_path, *_), (status, value) in zip(jobs, outcomes, strict=True):
        if status == "error":
            raise InputError(*value)
        scored[case_name(pred_path, file_ending)] = value
    return scored


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    out_csv: str | Path,
    workers: int | None = None,
    file_ending: str = ".nii.gz",
    nsd_min_dice: float = NSD_MIN_DICE,
    organs: Sequence[Organ] = FLARE22_ORGANS,
) -> EvaluationSummary:
    """Score every ground-truth case against its prediction; write FLARE's CSV and a JSON summary (atomically).

    Args:
        pred_dir: folder of predicted label maps (FLARE22 label values).
        gt_dir: folder of ground-truth label maps; one CSV row per file.
        out_csv: the CSV to write; the summary goes to `summary_path(out_csv)`.
        workers: processes scoring cases in parallel (default: CPU count, at most 4); 1 scores in this process.
        file_ending: label file ending.
        nsd_min_dice: NSD is 0 below this DSC (0.2; 0 reproduces FLARE22's script, see selflabel.metrics).
        organs: the organs scored (a dataset's own: `selflabel.labels.organs_for`).

    Raises:
        InputError: a folder is missing or has no ground truth, two files map to one case, a file is unreadable,
            or a prediction's shape/affine differs from its ground truth's.
        SelflabelError: workers < 1.
    """
    pred_dir, gt_dir, out_csv = Path(pred_dir), Path(gt_dir), Path(out_csv)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    if workers < 1:
        raise SelflabelError(f"--workers must be at least 1, got {workers}")
    gts = single_files(gt_dir, file_ending, "ground-truth")
    preds = single_files(pred_dir, file_ending, "prediction")
    if not gts:
        raise InputError(gt_dir, f"no ground-truth files ending in {file_ending}")
    missing = [name for name in gts if name not in preds]
    extra = [preds[name] for name in preds if name not in gts]
    for name in missing:
        logger.warning("no prediction for %s in %s: scored 0 for every organ", gts[name].name, pred_dir)
    for path in extra:
        logger.warning("prediction %s has no ground truth in %s: not scored", path, gt_dir)

    jobs = [(preds[name], gts[name], nsd_min_dice, tuple(organs)) for name in gts if name in preds]
    scored = _score_jobs(jobs, workers, file_ending)
    cases = [
        CaseResult(path.name, scored[name].rounded(), preds[name])
        if name in scored
        else CaseResult(path.name, CaseScores.zeros(organs, _organs_in(path, organs)), None)
        for name, path in gts.items()
    ]
    summary = summarize([case.scores for case in cases])
    json_path = summary_path(out_csv)
    _write_csv(out_csv, cases, organs)
    record = {
        **summary.to_dict(),
        "missing_predictions": [gts[name].name for name in missing],
        "extra_predictions": [path.name for path in extra],
        "nsd_min_dice": nsd_min_dice,
        "pred_dir": str(pred_dir),
        "gt_dir": str(gt_dir),
        "csv": out_csv.name,
    }
    atomic_write_text(json_path, json.dumps(record, indent=2) + "\n")
    return EvaluationSummary(cases, summary, [gts[name].name for name in missing], extra, out_csv, json_path)


def format_summary(result: EvaluationSummary) -> str:
    """A plain-text table: per organ DSC and NSD mean ± std, then the mean over organs, then what was missing."""
    summary = result.summary
    lines = [f"{'Organ':<12} {'DSC':>17} {'NSD':>17}"]
    for name, organ in summary.organs.items():
        dsc = f"{organ.dsc_mean:.4f} ± {organ.dsc_std:.4f}"
        nsd = f"{organ.nsd_mean:.4f} ± {organ.nsd_std:.4f}"
        lines.append(f"{name:<12} {dsc:>17} {nsd:>17}")
    lines.append(f"{'Mean':<12} {summary.mean_dsc:>17.4f} {summary.mean_nsd:>17.4f}")
    lines.append(f"{summary.num_cases} cases; CSV: {result.csv_path}; summary: {result.json_path}")
    if result.missing:
        lines.append(f"{len(result.missing)} missing prediction(s), scored 0: {', '.join(result.missing)}")
    if result.extra:
        lines.append(f"{len(result.extra)} extra prediction(s), not scored: {', '.join(p.name for p in result.extra)}")
    return "\n".join(lines)
