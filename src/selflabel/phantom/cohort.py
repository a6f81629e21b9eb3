"""Synthetic cohorts on disk in the nnU-Net v2 raw layout, each case seeded on its own."""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selflabel.errors import InputError, SelflabelError
from selflabel.labels import FLARE22_LABELS
from selflabel.phantom.case import MIN_SIZE, MIN_SLICES, make_case

#: Bump when the generator changes what a seed produces (a cohort.json with another version is rewritten).
PHANTOM_VERSION = 1
#: Cohort splits, in the order used to seed cases.
SPLITS: tuple[str, str, str] = ("labeled", "unlabeled", "test")


def case_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of case `index` (1-based) of `split`: independent of every other case."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS.index(split), int(index)]))


def case_files(out_dir: Path, split: str, index: int) -> tuple[str, Path, Path | None]:
    """Case name, image path and (for labelled and test cases) label path of case `index` (1-based)."""
    if split == "labeled":
        name = f"FLARE22_Tr_{index:04d}"
        return name, out_dir / "imagesTr" / f"{name}_0000.nii.gz", out_dir / "labelsTr" / f"{name}.nii.gz"
    if split == "unlabeled":
        name = f"Case_{index:05d}"
        return name, out_dir / "unlabeledTr" / f"{name}_0000.nii.gz", None
    if split == "test":
        name = f"FLARETs_{index:04d}"
        return name, out_dir / "imagesTs" / f"{name}_0000.nii.gz", out_dir / "labelsTs" / f"{name}.nii.gz"
    raise SelflabelError(f"unknown split {split!r}; expected one of {SPLITS}")


_SUBFOLDERS = ("imagesTr", "labelsTr", "unlabeledTr", "imagesTs", "labelsTs")
COHORT_FILE = "cohort.json"


@dataclass
class CohortSummary:
    """What `write_cohort` made: counts per split, shapes, time, and whether an existing cohort was reused."""

    out_dir: Path
    counts: dict[str, int]
    shapes: list[tuple[int, int, int]]
    spacings: list[tuple[float, float, float]]
    phases: dict[str, int]
    seconds: float
    reused: bool = False
    removed: int = 0

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """One line for the command line."""
        n = sum(self.counts.values())
        zs = sorted(s[2] for s in self.shapes)
        shape = f"{self.shapes[0][0]}x{self.shapes[0][1]}x{zs[0]}..{zs[-1]}" if self.shapes else "-"
        verb = "reused" if self.reused else "wrote"
        phases = ", ".join(f"{k} {v}" for k, v in self.phases.items())
        return (
            f"{verb} {n} cases ({self.counts['labeled']} labelled, {self.counts['unlabeled']} unlabelled, "
            f"{self.counts['test']} test; {shape} voxels; {phases}) in {self.out_dir} in {self.seconds:.1f} s"
        )


def _make_and_write(job: tuple[str, int, int, int, int, str]) -> dict[str, Any]:
    """Worker: make case `index` of `split` and write it atomically. Returns its cohort.json entry."""
    from selflabel.io import write_nifti

    split, index, seed, size, slices, out = job
    case = make_case(case_rng(seed, split, index), size=size, slices=slices)
    name, image_path, label_path = case_files(Path(out), split, index)
    write_nifti(image_path, case.image, affine=case.affine)
    if label_path is not None:
        write_nifti(label_path, case.label, affine=case.affine)
    meta = {"name": name, "split": split, "index": index, **case.meta}
    return meta


def _cohort_params(labeled: int, unlabeled: int, test: int, seed: int, size: int, slices: int) -> dict[str, int]:
    return {
        "version": PHANTOM_VERSION,
        "labeled": labeled,
        "unlabeled": unlabeled,
        "test": test,
        "seed": seed,
        "size": size,
        "slices": slices,
    }


def _expected_files(out_dir: Path, params: dict[str, int]) -> list[Path]:
    files = [out_dir / "dataset.json"]
    for split in SPLITS:
        for i in range(1, params[split] + 1):
            _, image, label = case_files(out_dir, split, i)
            files += [image] + ([label] if label is not None else [])
    return files


def _summary(out_dir: Path, cases: list[dict[str, Any]], seconds: float, reused: bool, removed: int) -> CohortSummary:
    counts = {split: sum(c["split"] == split for c in cases) for split in SPLITS}
    phases: dict[str, int] = {}
    for c in cases:
        phases[c["phase"]] = phases.get(c["phase"], 0) + 1
    return CohortSummary(
        out_dir,
        counts,
        [tuple(c["shape"]) for c in cases],
        [tuple(c["spacing_mm"]) for c in cases],
        dict(sorted(phases.items())),
        seconds,
        reused,
        removed,
    )


def write_cohort(
    out_dir: str | Path,
    labeled: int,
    unlabeled: int,
    test: int,
    seed: int = 0,
    size: int = 192,
    slices: int = 64,
    workers: int | None = None,
) -> CohortSummary:
    """Write a synthetic FLARE22-style cohort in the nnU-Net v2 raw layout.

    Layout: dataset.json (FLARE22 labels, one CT channel, .nii.gz), imagesTr/FLARE22_Tr_0001_0000.nii.gz and
    labelsTr/FLARE22_Tr_0001.nii.gz (labelled), unlabeledTr/Case_00001_0000.nii.gz (no labels), imagesTs/
    FLARETs_0001_0000.nii.gz and labelsTs/FLARETs_0001.nii.gz (test), and cohort.json (parameters, per-case facts).

    A folder that already holds a complete cohort with the same parameters is reused as it is. A folder holding a
    cohort with other parameters (or an unfinished one) has its case files replaced. A non-empty folder without
    cohort.json is refused, so that a real dataset is never overwritten.

    Raises:
        SelflabelError: bad counts or sizes. InputError: `out_dir` is a file or holds data not made here.
    """
    from selflabel.atomic import atomic_write_json
    from selflabel.io import write_dataset_json

    _check_counts(labeled, unlabeled, test, size, slices)
    out = Path(out_dir)
    params = _cohort_params(labeled, unlabeled, test, seed, size, slices)
    start = time.perf_counter()
    reusable, removed = _clear_old_cohort(out, params)
    if reusable is not None:
        return _summary(out, reusable, time.perf_counter() - start, reused=True, removed=0)
    out.mkdir(parents=True, exist_ok=True)
    record = out / COHORT_FILE
    atomic_write_json(record, {"generator": "selflabel.phantom", "params": params, "complete": False, "cases": []})
    write_dataset_json(out, dict(FLARE22_LABELS), labeled, name="selflabel synthetic abdomen (selflabel.phantom)")
    jobs = [(split, i, seed, size, slices, str(out)) for split in SPLITS for i in range(1, params[split] + 1)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            cases = list(pool.map(_make_and_write, jobs))
    else:
        cases = [_make_and_write(job) for job in jobs]
    atomic_write_json(record, {"generator": "selflabel.phantom", "params": params, "complete": True, "cases": cases})
    return _summary(out, cases, time.perf_counter() - start, reused=False, removed=removed)


def _check_counts(labeled: int, unlabeled: int, test: int, size: int, slices: int) -> None:
    """Raise SelflabelError for negative or all-zero case counts, or a grid too small for the small organs."""
    for name, value in (("labeled", labeled), ("unlabeled", unlabeled), ("test", test)):
        if value < 0:
            raise SelflabelError(f"--{name} must be >= 0, got {value}")
    if labeled + unlabeled + test == 0:
        raise SelflabelError("nothing to make: --labeled, --unlabeled and --test are all 0")
    if size < MIN_SIZE or slices < MIN_SLICES:
        raise SelflabelError(f"--size must be >= {MIN_SIZE} and --slices >= {MIN_SLICES} (got {size}, {slices})")


def _clear_old_cohort(out: Path, params: dict[str, int]) -> tuple[list[dict[str, Any]] | None, int]:
    """Look at what `out` holds before writing a cohort with `params`.

    Returns the cases of a complete cohort with the same parameters (to reuse, nothing removed), else None and the
    number of case files removed from an older cohort.

    Raises:
        InputError: `out` is a file, or is not empty and holds no readable cohort.json.
    """
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if not (out.is_dir() and any(out.iterdir())):
        return None, 0
    record = out / COHORT_FILE
    if not record.is_file():
        raise InputError(out, f"is not empty and has no {COHORT_FILE} from demo-data; choose a new or empty folder")
    try:
        old = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(record, f"unreadable ({exc}); delete the folder to regenerate") from None
    if old.get("params") == params and old.get("complete") and all(p.is_file() for p in _expected_files(out, params)):
        return old["cases"], 0
    removed = 0
    for sub in _SUBFOLDERS:
        if (out / sub).is_dir():
            removed += sum(1 for p in (out / sub).iterdir() if p.is_file())
            shutil.rmtree(out / sub)
    return None, removed
