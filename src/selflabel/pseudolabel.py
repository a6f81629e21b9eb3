"""Pseudo-labels for unlabelled scans, with the confidence of every one, and the selection of trustworthy cases.

For each case: the teacher's labels as NIfTI in the input's geometry (``OUT/<case>.nii.gz``), training labels at
the model's grid (``OUT/train/<case>_seg.npy``, optionally with voxels under a confidence threshold set to 255,
which the loss ignores) and a JSON of statistics: mean maximum softmax probability and mean entropy over the
predicted foreground and the fraction of that foreground under `low_confidence_tau` (at the training labels'
grid, where the confidence is), the foreground's share of the scan and organ volumes in ml (at the input's), and,
when a previous round exists, the fraction of foreground voxels whose label changed (voxels that round
ignored left out). ``pseudolabels.csv`` gathers them. Case selection (the FLARE22 winners' quality control) drops
the least confident fraction of cases and/or those that changed most between rounds; ``selected.json`` lists the
kept cases and why others were dropped. With ``pseudolabel.companion_rate``, slices missing an organ that the
labelled slices always show beside another one are ignored whole (`selflabel.anatomy`; ``companions.json`` records
the rule and each case its ``doubtful_fraction``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selflabel.anatomy import Companions
from selflabel.atomic import atomic_path, atomic_write_csv, atomic_write_json
from selflabel.batch import BatchReport, gather_report, resolve_parts, run_cases, shard
from selflabel.config import PseudoLabelConfig, save_config
from selflabel.distributed import dist_info, init_distributed
from selflabel.errors import InputError, SelflabelError
from selflabel.inference import Predictor, output_name, run_list
from selflabel.io import Case, Volume, from_canonical, list_scans, read_header, write_nifti
from selflabel.labels import IGNORE_INDEX
from selflabel.preprocess import CacheEntry, CropBox, foreground_slices, organ_slices, preprocess_cases
from selflabel.report import offered_model
from selflabel.volumes import organ_volumes_ml

STAT_FIELDS = [
    "case", "mean_confidence", "mean_entropy", "uncertain_fraction", "foreground_fraction", "changed",
    "doubtful_fraction",
]  # fmt: skip


def confidence_stats(
    labels: np.ndarray, confidence: np.ndarray, entropy: np.ndarray, low_confidence_tau: float
) -> dict[str, float]:
    """Confidence of one pseudo-label, over its predicted foreground (labels > 0).

    Args:
        labels: (...) predicted labels. confidence: same shape, maximum softmax probability. entropy: same shape, nats.
    Returns:
        mean_confidence, mean_entropy and uncertain_fraction (share of foreground voxels with confidence below
        `low_confidence_tau`) over the foreground. With no foreground, the means are over all voxels and
        uncertain_fraction is 0.
    """
    fg = labels > 0
    region = fg if fg.any() else np.ones_like(fg)
    conf = confidence[region].astype(np.float64)
    return {
        "mean_confidence": float(conf.mean()),
        "mean_entropy": float(entropy[region].astype(np.float64).mean()),
        "uncertain_fraction": float((confidence[fg] < low_confidence_tau).mean()) if fg.any() else 0.0,
    }


def changed_fraction(current: np.ndarray, previous: np.ndarray) -> float:
    """Share of the foreground (of either label map) whose label differs: changed voxels / foreground voxels."""
    fg = (current > 0) | (previous > 0)
    if not fg.any():
        return 0.0
    return float((current[fg] != previous[fg]).mean())


def filter_by_confidence(labels: np.ndarray, confidence: np.ndarray, tau: float, scope: str = "all") -> np.ndarray:
    """Labels with voxels whose confidence is below `tau` set to the ignore value 255 (a copy; tau 0 = unchanged);
    `scope` ``"background"``: only voxels labelled background."""
    out = labels.copy()
    if tau > 0:
        doubtful = confidence < tau
        out[doubtful & (labels == 0) if scope == "background" else doubtful] = IGNORE_INDEX
    return out


@dataclass(frozen=True)
class Selection:
    """Cases kept for student training, and those dropped with the reason."""

    kept: list[str]
    dropped: dict[str, str]


def select_cases(stats: Sequence[dict[str, Any]], cfg: PseudoLabelConfig) -> Selection:
    """Drop the `drop_least_confident` fraction with the lowest mean confidence, then the `drop_most_changed`
    fraction with the highest change between rounds (only among cases that have a change value)."""
    rows = sorted(stats, key=lambda r: r["case"])
    dropped: dict[str, str] = {}
    n_conf = int(np.floor(cfg.drop_least_confident * len(rows)))
    for row in sorted(rows, key=lambda r: (r["mean_confidence"], r["case"]))[:n_conf]:
        dropped[row["case"]] = f"least confident (mean confidence {row['mean_confidence']:.4f})"
    with_change = [r for r in rows if r.get("changed") is not None and r["case"] not in dropped]
    n_changed = int(np.floor(cfg.drop_most_changed * len(rows)))
    for row in sorted(with_change, key=lambda r: (-r["changed"], r["case"]))[:n_changed]:
        dropped[row["case"]] = f"changed most since the previous round ({row['changed']:.4f} of its foreground)"
    return Selection([r["case"] for r in rows if r["case"] not in dropped], dropped)


class PseudoLabeller:
    """Writes pseudo-labels of cached cases with `predictor` into `out_dir`; training labels at `train_size`
    (the student's grid; None = the predictor's own), slices that break `companions` ignored."""

    def __init__(
        self,
        predictor: Predictor,
        cache_dir: Path,
        out_dir: Path,
        previous_dir: Path | None = None,
        train_size: int | None = None,
        companions: Companions | None = None,
    ):
        self.predictor = predictor
        self.companions = companions
        self.train_size = train_size or predictor.config.preprocess.image_size
        self.cache_dir = Path(cache_dir)
        self.out_dir = Path(out_dir)
        self.train_dir = self.out_dir / "train"
        self.previous_dir = Path(previous_dir) / "train" if previous_dir else None
        self.cfg = predictor.config.pseudolabel
        self.names = {index: name for name, index in predictor.labels.items()}
        self.train_dir.mkdir(parents=True, exist_ok=True)

    def is_done(self, case: Case) -> bool:
        """Labelled already, with the same confidence filter, weights, grid and previous round (or none)."""
        meta = CacheEntry(self.train_dir, case.name).meta
        if not meta.is_file():
            return False
        stats = json.loads(meta.read_text())
        same_previous = (stats.get("changed") is not None) == (self.previous_dir is not None)
        same_weights = stats.get("soft_weights", False) == self.cfg.soft_weights
        same_grid = stats.get("train_size", self.predictor.config.preprocess.image_size) == self.train_size
        same_tau = stats.get("confidence_tau") == self.cfg.confidence_tau
        same_scope = stats.get("confidence_scope", "all") == self.cfg.confidence_scope  # older runs: "all"
        same_check = stats.get("companion_rate", 0.0) == self.cfg.companion_rate
        return same_tau and same_scope and same_check and same_previous and same_weights and same_grid

    def label(self, case: Case) -> None:
        """Predict one cached case and write its NIfTI, training labels and statistics (the JSON last)."""
        entry = CacheEntry(self.cache_dir, case.name)
        meta = entry.read_meta()
        volume = torch.from_numpy(np.load(entry.image).astype(np.float32))
        affine = np.asarray(meta["affine"])
        pred = self.predictor.predict_prepared(
            volume, CropBox.from_list(meta["crop"]), with_confidence=True, slice_mm=meta["canonical_spacing"][0],
            lowres_size=self.train_size,
        )  # fmt: skip
        header = read_header(case.image)  # a NIfTI file's own header, or a DICOM series' geometry
        labels = np.asfortranarray(from_canonical(pred.labels, affine))  # NIfTI's voxel order: no transposing copy
        write_nifti(self.out_dir / output_name(case), labels, reference=Volume(labels, affine, header))
        train_labels = filter_by_confidence(
            pred.lowres_labels, pred.lowres_confidence, self.cfg.confidence_tau, self.cfg.confidence_scope
        )
        doubtful = self.companions.doubtful(pred.lowres_labels) if self.companions else []
        train_labels[doubtful] = IGNORE_INDEX
        target = CacheEntry(self.train_dir, case.name)
        with atomic_path(target.seg) as tmp:
            np.save(tmp, train_labels)
        if self.cfg.soft_weights:
            with atomic_path(target.weight) as tmp:
                np.save(tmp, pred.lowres_confidence)
        stats = {
            "case": case.name,
            **confidence_stats(
                pred.lowres_labels, pred.lowres_confidence, pred.lowres_entropy, self.cfg.low_confidence_tau
            ),
            "foreground_fraction": float(np.count_nonzero(pred.labels) / pred.labels.size),
            "changed": self._changed(case.name, pred.lowres_labels),
            "doubtful_fraction": len(doubtful) / len(train_labels) if self.companions else None,
            "volumes_ml": organ_volumes_ml(pred.labels, meta["canonical_spacing"], self.names),
            "foreground_slices": foreground_slices(train_labels),
            "organ_slices": organ_slices(train_labels),
            "confidence_tau": self.cfg.confidence_tau,
            "confidence_scope": self.cfg.confidence_scope,
            "companion_rate": self.cfg.companion_rate,
            "soft_weights": self.cfg.soft_weights,
            "train_size": self.train_size,
        }
        atomic_write_json(target.meta, stats)

    def _changed(self, name: str, labels: np.ndarray) -> float | None:
        if self.previous_dir is None:
            return None
        path = CacheEntry(self.previous_dir, name).seg
        if not path.is_file():
            return None
        previous = np.load(path)
        if previous.shape != labels.shape:
            raise InputError(path, f"shape {previous.shape} differs from this round's {labels.shape} (other settings?)")
        known = previous != IGNORE_INDEX  # voxels the previous round left unlabelled cannot have changed
        return changed_fraction(labels[known], previous[known])


def read_stats(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every case's statistics from a pseudo-label folder, sorted by case."""
    rows = [json.loads(p.read_text()) for p in sorted((Path(out_dir) / "train").glob("*.json"))]
    return sorted(rows, key=lambda r: r["case"])


def write_table(out_dir: str | Path, cfg: PseudoLabelConfig) -> Selection:
    """Write ``pseudolabels.csv`` (one row per case, organ volumes included) and ``selected.json``."""
    out_dir = Path(out_dir)
    stats = read_stats(out_dir)
    if not stats:
        raise SelflabelError(f"{out_dir}: no pseudo-labels to summarise")
    organs = list(stats[0]["volumes_ml"])
    selection = select_cases(stats, cfg)
    header = [*STAT_FIELDS, "selected", *[f"{o}_ml" for o in organs]]
    rows = (
        [row["case"], *[_fmt(row.get(k)) for k in STAT_FIELDS[1:]], int(row["case"] in selection.kept),
         *[f"{row['volumes_ml'][o]:.2f}" for o in organs]]
        for row in stats
    )  # fmt: skip
    atomic_write_csv(out_dir / "pseudolabels.csv", header, rows)
    atomic_write_json(out_dir / "selected.json", {"kept": selection.kept, "dropped": selection.dropped})
    return selection


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.6f}"


def learn_companions(labelled: Sequence[tuple[str | Path, Sequence[str]]], rate: float) -> Companions | None:
    """The organs expert-labelled cases show together at `rate` (`Companions.learn`), from (cache folder, cases)
    pairs; None when `rate` is 0."""
    if rate <= 0:
        return None
    segs = []
    for cache_dir, cases in labelled:
        for name in cases:
            path = CacheEntry(Path(cache_dir), name).seg
            if not path.is_file():
                raise InputError(path, "labels of a training case are missing (pseudolabel.companion_rate needs them)")
            segs.append(np.load(path))
    return Companions.learn(segs, rate)


def run_companions(run_dir: str | Path, rate: float) -> Companions | None:
    """`learn_companions` of the expert-labelled sources a run trained on (its ``split.json``)."""
    path = Path(run_dir) / "split.json"
    if rate <= 0:
        return None
    if not path.is_file():
        raise InputError(path, "missing: pseudolabel.companion_rate learns from the run's labelled cases "
                         "(--set pseudolabel.companion_rate=0 to pseudo-label without the check)")  # fmt: skip
    record = json.loads(path.read_text())
    expert = [(s["cache_dir"], s["cases"]) for s in record["sources"] if s["label_dir"] == s["cache_dir"]]
    return learn_companions(expert, rate)  # pseudo-labels live apart from their cache: not expert's


def load_teacher(run_dir: str | Path | Sequence[str | Path], overrides: Mapping[str, Any] | None = None) -> Predictor:
    """The run's model that makes pseudo-labels: its best checkpoint, or the ensemble ``pseudolabel.checkpoints``
    names (`overrides` change the run's settings first), adapting its BatchNorm to each scan and mixing its slices
    by their spacing as ``pseudolabel.adapt_bn`` and ``pseudolabel.z_smoothing_mm`` say. Several runs: the ensemble
    of each one's models, with the first run's settings (`Predictor.from_runs`)."""
    runs = run_list(run_dir)
    teacher = Predictor.from_runs(runs, overrides=overrides)
    own = teacher.config.pseudolabel
    teacher = teacher.with_overrides(
        {"inference.adapt_bn": own.adapt_bn, "inference.z_smoothing_mm": own.z_smoothing_mm}
    )
    if own.checkpoints == "best_and_latest":
        for run in runs:
            teacher = teacher.ensemble_with(Predictor.from_run(run, which="latest", overrides=overrides))
    return teacher


def pseudolabel_cases(
    predictor: Predictor,
    cases: Sequence[Case],
    *,
    cache_dir: str | Path,
    out_dir: str | Path,
    previous_dir: str | Path | None = None,
    overwrite: bool = False,
    num_parts: int | None = None,
    part_id: int | None = None,
    progress: bool = True,
    train_size: int | None = None,
    companions: Companions | None = None,
) -> tuple[BatchReport, Selection | None]:
    """Cache (if needed) and pseudo-label `cases`; rank 0 then writes the table, the selection and config.yaml.

    Sharded by `num_parts`/`part_id` or by torchrun rank; finished cases are skipped unless `overwrite`.
    `train_size`: the in-plane side of the training labels (a student's grid; None = the predictor's).
    `companions`: the labelled slices' rule (`learn_companions`), needed with ``pseudolabel.companion_rate``.
    """
    if predictor.config.pseudolabel.companion_rate > 0 and companions is None:
        raise SelflabelError("pseudolabel.companion_rate needs the labelled cases' companions (learn_companions)")
    info = dist_info()
    init_distributed(info, next(predictor.model.parameters()).device)
    parts, part = resolve_parts(num_parts, part_id, info)
    mine = shard(cases, parts, part)
    cached = preprocess_cases(mine, cache_dir, predictor.config.preprocess, progress=progress)
    previous = Path(previous_dir) if previous_dir else None
    labeller = PseudoLabeller(predictor, Path(cache_dir), Path(out_dir), previous, train_size, companions)
    if info.is_main:
        save_config(predictor.config, Path(out_dir) / "config.yaml")
        if companions is not None:
            atomic_write_json(Path(out_dir) / "companions.json", companions.to_json())

    def done(case: Case) -> bool:
        return not overwrite and labeller.is_done(case)

    readable = [case for case in mine if case.name not in cached.failed]  # a bad scan must not stop the others
    report = run_cases(readable, is_done=done, work=labeller.label, desc="pseudo-label", progress=progress)
    report.failed.update(cached.failed)
    report = gather_report(report, info)  # every rank's cases, once every rank is done
    selection = None
    if info.is_main and (report.written or report.skipped):  # from every part's JSONs: the last part's is complete
        selection = write_table(out_dir, predictor.config.pseudolabel)
    return report, selection


def pseudolabel_folder(
    run_dir: str | Path | Sequence[str | Path],
    input_dir: str | Path,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    previous_dir: str | Path | None = None,
    overwrite: bool = False,
    num_parts: int | None = None,
    part_id: int | None = None,
    progress: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[BatchReport, Selection | None]:
    """`selflabel pseudolabel`: pseudo-label every scan of a folder (NIfTI files or DICOM series: `list_scans`).

    `overrides` change the run's saved settings (dotted keys, e.g. ``{"pseudolabel.confidence_tau": 0.9}``). Several
    runs pseudo-label as an ensemble (`load_teacher`); the anatomical check learns from the first run's labelled cases.
    """
    scans = list_scans(input_dir)  # before the model loads: a wrong folder is told at once
    predictor = load_teacher(run_dir, overrides)
    cache = Path(cache_dir) if cache_dir else Path(out_dir) / "cache"
    first = offered_model(run_list(run_dir)[0])
    companions = run_companions(first, predictor.config.pseudolabel.companion_rate)
    return pseudolabel_cases(
        predictor, scans, cache_dir=cache, out_dir=out_dir, previous_dir=previous_dir,
        overwrite=overwrite, num_parts=num_parts, part_id=part_id, progress=progress, companions=companions,
    )  # fmt: skip
