"""The on-disk cache that training and pseudo-labelling read: every case at the model's grid, made once.

Each case goes through `selflabel.preprocess.volume` (canonical (z, y, x) layout, the configured intensity
normalisation, every axial slice resized to the model's in-plane size).

Cache layout (one folder, flat, memory-mappable):
    <case>.npy       image, float16, (Z, S, S) with S = image_size
    <case>_seg.npy   label at the same grid, uint8 (labelled cases)
    <case>_gt.npy    label at the original in-plane grid, canonical (Z, H, W), uint8 (labelled cases; validation)
    <case>.json      geometry, statistics, settings and source stamps; written last, so it marks a complete case

A 512x512x100 scan takes 224*224*100*2 bytes ~ 10 MB (plus 5 MB of labels), so FLARE22's 2000 unlabelled scans
fit in ~20 GB.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selflabel.atomic import atomic_path, atomic_write_json
from selflabel.batch import BatchReport
from selflabel.config import PreprocessConfig
from selflabel.errors import InputError, SelflabelError
from selflabel.io import Case, canonical_axes, load_dataset, read_case, source_stamp
from selflabel.labels import IGNORE_INDEX
from selflabel.preprocess.volume import prepare_image, prepare_label
from selflabel.progress import Progress, show_progress, warn_input

CACHE_VERSION = 1


@dataclass(frozen=True)
class CacheEntry:
    """Paths of one case in the cache."""

    folder: Path
    name: str

    @property
    def image(self) -> Path:
        return self.folder / f"{self.name}.npy"

    @property
    def seg(self) -> Path:
        return self.folder / f"{self.name}_seg.npy"

    @property
    def weight(self) -> Path:
        return self.folder / f"{self.name}_weight.npy"

    @property
    def gt(self) -> Path:
        return self.folder / f"{self.name}_gt.npy"

    @property
    def meta(self) -> Path:
        return self.folder / f"{self.name}.json"

    def read_meta(self) -> dict[str, Any]:
        return json.loads(self.meta.read_text())


def _stamp(path: Path | None) -> dict[str, Any] | None:
    return None if path is None else source_stamp(path)  # a DICOM series: all its files


def _settings(cfg: PreprocessConfig) -> dict[str, Any]:
    return {"version": CACHE_VERSION, **json.loads(json.dumps(asdict(cfg)))}


def is_cached(case: Case, folder: Path, cfg: PreprocessConfig) -> bool:
    """True when the cache holds this case, made from the same files with the same settings."""
    entry = CacheEntry(folder, case.name)
    if not entry.meta.is_file():
        return False
    try:
        meta = entry.read_meta()
        up_to_date = (
            meta["settings"] == _settings(cfg)
            and meta["source"]["image"] == _stamp(case.image)
            and meta["source"]["label"] == _stamp(case.label)
        )
    except (OSError, KeyError, json.JSONDecodeError):
        return False
    files = [entry.image] + ([entry.seg, entry.gt] if case.label is not None else [])
    return up_to_date and all(p.is_file() for p in files)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def organs_present(seg: np.ndarray) -> np.ndarray:
    """(Z, 256) bool: the organs each axial slice of a (Z, S, S) uint8 label volume holds (background 0 and ignored
    voxels, `IGNORE_INDEX`, are not organs)."""
    slices = len(seg)
    keys = seg.reshape(slices, -1).astype(np.int32) + 256 * np.arange(slices, dtype=np.int32)[:, None]
    present = np.bincount(keys.ravel(), minlength=slices * 256).reshape(slices, 256) > 0  # one pass, no sorting
    present[:, [0, IGNORE_INDEX]] = False
    return present


def organ_slices(seg: np.ndarray) -> dict[str, list[int]]:
    """Axial slices holding each organ of a (Z, S, S) label volume: ``{"1": [z, ...], ...}`` (JSON keys)."""
    present = organs_present(seg)
    return {str(label): np.flatnonzero(present[:, label]).tolist() for label in np.flatnonzero(present.any(axis=0))}


def foreground_slices(seg: np.ndarray) -> list[int]:
    """Axial slices holding any organ voxel (neither background nor ignored) of a (Z, S, S) label volume."""
    organ = (seg > 0) & (seg != IGNORE_INDEX)
    return np.flatnonzero(organ.reshape(len(organ), -1).any(1)).tolist()


def cache_case(case: Case, folder: Path, cfg: PreprocessConfig, label_values: Sequence[int] | None = None) -> dict:
    """Preprocess one case into `folder`; return its metadata. Raises InputError for bad input.

    On any error the case's files are removed, so the cache never holds half a case.
    """
    torch.set_num_threads(1)
    entry = CacheEntry(folder, case.name)
    try:
        return _write_case(case, entry, cfg, label_values)
    except BaseException:
        for path in (entry.meta, entry.image, entry.seg, entry.gt):
            path.unlink(missing_ok=True)
        raise


def _write_case(case: Case, entry: CacheEntry, cfg: PreprocessConfig, label_values: Sequence[int] | None) -> dict:
    image, label = read_case(case, label_values)
    if label is not None and not label.array.any():
        warn_input(case.label, "holds background only: no organ labelled (the wrong file?); trained as such",
                   every_rank=True)  # fmt: skip
    entry.meta.unlink(missing_ok=True)  # the case is incomplete until its JSON is written again
    tensor, stats, box = prepare_image(image, cfg)
    _save_npy(entry.image, tensor.numpy().astype(np.float16))
    meta: dict[str, Any] = {
        "case": case.name,
        "settings": _settings(cfg),
        "source": {"image": _stamp(case.image), "label": _stamp(case.label)},
        "shape": list(image.array.shape),
        "affine": image.affine.tolist(),
        "spacing": list(image.spacing),
        "axcodes": list(image.axcodes),
        "canonical_shape": [int(n) for n in canonical_axes(image.array.shape, image.affine)],
        "canonical_spacing": list(canonical_axes(image.spacing, image.affine)),
        "intensity": stats,
        "crop": box.to_list(),
        "labelled": label is not None,
    }
    if label is not None:
        gt, seg = prepare_label(label, cfg.image_size, box, cfg.label_resize)
        _save_npy(entry.gt, gt)
        _save_npy(entry.seg, seg)
        meta["foreground_slices"] = foreground_slices(seg)
        meta["organ_slices"] = organ_slices(seg)
        meta["label_values"] = np.unique(seg).tolist()
    atomic_write_json(entry.meta, meta)
    return meta


def cache_size(folder: Path) -> int:
    """Bytes taken by the cache's files."""
    return sum(p.stat().st_size for p in folder.glob("*") if p.is_file() and not p.name.startswith("."))


def preprocess_cases(
    cases: Sequence[Case],
    folder: str | Path,
    cfg: PreprocessConfig,
    label_values: Sequence[int] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> BatchReport:
    """Cache every case not already up to date, in parallel over cases, with a progress bar.

    A bad case does not stop the others; its error is collected in `failed` (case -> message).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cases if not is_cached(c, folder, cfg)]
    report = BatchReport(skipped=[c.name for c in cases if c not in todo])
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    bar = show_progress(total=len(todo), desc="preprocess", unit="case", enabled=progress and bool(todo))
    if workers == 1:
        results = (_try_cache(c, folder, cfg, label_values) for c in todo)
        _collect(results, report, bar)
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_try_cache, c, folder, cfg, label_values) for c in todo]
            _collect((f.result() for f in futures), report, bar)
    bar.close()
    return report


def _try_cache(case: Case, folder: Path, cfg: PreprocessConfig, label_values) -> tuple[str, str | None]:
    try:
        cache_case(case, folder, cfg, label_values)
        return case.name, None
    except SelflabelError as exc:
        return case.name, str(exc)


def _collect(results, report: BatchReport, bar: Progress) -> None:
    for name, error in results:
        if error is None:
            report.written.append(name)
        else:
            report.failed[name] = error
            bar.write(f"error: {error}")
        bar.update(1)


def preprocess_dataset(
    data_dir: str | Path,
    cache_dir: str | Path,
    cfg: PreprocessConfig,
    groups: Sequence[str] = ("training", "test", "unlabeled"),
    workers: int | None = None,
    progress: bool = True,
) -> BatchReport:
    """Cache the chosen case groups of an nnU-Net raw dataset (labels of test cases are not cached)."""

    dataset = load_dataset(data_dir)
    cases: list[Case] = []
    for group in groups:
        members = getattr(dataset, group)
        cases += [Case(c.name, c.image) for c in members] if group == "test" else members
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(data_dir, f"case name {dup!r} appears in two groups; names must be unique")
    return preprocess_cases(cases, cache_dir, cfg, dataset.label_values, workers, progress)
