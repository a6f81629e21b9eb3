"""Organ volumes of label maps (predictions or ground truth), in mL: one CSV row per case and a summary.

The CSV has the case's file name, then ``<Organ>_mL`` for each organ of the label map (FLARE22's 13 by default),
from the voxel counts and the voxel size of each file's header. The summary printed gives each organ's mean and
standard deviation over the cases that hold it, and how many do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from selflabel.atomic import atomic_write_csv
from selflabel.errors import InputError
from selflabel.io import read_label, single_files
from selflabel.labels import FLARE22_ORGANS, Organ

__all__ = ["format_volumes", "label_volumes", "organ_volumes_ml", "write_volumes"]


def organ_volumes_ml(labels: np.ndarray, spacing: Sequence[float], names: dict[int, str]) -> dict[str, float]:
    """Volume in mL of every organ (label value -> name, background left out) of a label array at voxel size
    `spacing` (mm); 0.0 for an organ it does not hold."""
    counts = np.bincount(labels.ravel(), minlength=max(names) + 1)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {name: float(counts[index]) * voxel_ml for index, name in names.items() if index > 0}


def label_volumes(path: Path, organs: Sequence[Organ] = FLARE22_ORGANS) -> dict[str, float]:
    """Organ short name -> volume in mL of one label file (0.0 for an organ it does not hold)."""
    labels = read_label(path)
    return organ_volumes_ml(labels.array, labels.spacing, {o.index: o.short for o in organs})


def _files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    files = list(single_files(source, what="label").values())
    if not files:
        raise InputError(source, "no .nii.gz label maps")
    return files


def write_volumes(source: str | Path, out_csv: str | Path, organs: Sequence[Organ] = FLARE22_ORGANS) -> dict:
    """Volumes of every label map of a folder (or one file) to `out_csv` (atomically); returns name -> volumes."""
    rows = {path.name: label_volumes(path, organs) for path in _files(Path(source))}
    header = ["Name", *(f"{o.short}_mL" for o in organs)]
    atomic_write_csv(out_csv, header, ([name, *(f"{v[o.short]:.2f}" for o in organs)] for name, v in rows.items()))
    return rows


def format_volumes(rows: dict[str, dict[str, float]], organs: Sequence[Organ] = FLARE22_ORGANS) -> str:
    """A table: per organ, the cases that hold it and their volumes' mean ± sd in mL."""
    width = max(len(o.name) for o in organs)
    lines = [f"{'organ':<{width}}  {'cases':>7}  {'mL, mean ± sd over the cases holding it':>40}"]
    for organ in organs:
        held = [v[organ.short] for v in rows.values() if v[organ.short] > 0]
        spread = f"{np.mean(held):.1f} ± {np.std(held):.1f}" if held else "-"
        lines.append(f"{organ.name:<{width}}  {f'{len(held)}/{len(rows)}':>7}  {spread:>40}")
    return "\n".join(lines)
