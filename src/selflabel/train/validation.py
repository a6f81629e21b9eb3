"""Validation during training: whole cached volumes scored with FLARE22's DSC and NSD, shared over ranks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selflabel.checkpoints import ModelSpec
from selflabel.config import Config
from selflabel.distributed import DistInfo, gather_objects
from selflabel.labels import FLARE22_ORGANS, Organ
from selflabel.metrics import CaseScores, score_case, summarize
from selflabel.preprocess import CacheEntry, CropBox
from selflabel.slicewise import predict_in_box


def selection_score(mean_dsc: float, mean_nsd: float) -> float:
    """What `best.pt` is chosen by: mean DSC + mean NSD over organs (the paper's rule)."""
    return mean_dsc + mean_nsd


def is_improvement(score: float, best: float | None) -> bool:
    """Strictly better than the best so far (the first validation always is); ties keep the earlier model."""
    return best is None or score > best


def validate_cases(
    model: torch.nn.Module,
    cache_dir: Path,
    cases: Sequence[str],
    *,
    spec: ModelSpec,
    cfg: Config,
    organs: Sequence[Organ] = FLARE22_ORGANS,
    info: DistInfo | None = None,
) -> list[tuple[str, CaseScores]]:
    """Score whole validation volumes (at their original grid) with FLARE22's DSC and NSD of `organs` (the run's
    label map's: `selflabel.labels.organs_for`); ranks share the cases."""
    info = info or DistInfo()
    model.eval()
    results = []
    for name in list(cases)[info.rank :: info.world_size]:
        entry = CacheEntry(cache_dir, name)
        meta = entry.read_meta()
        volume = torch.from_numpy(np.load(entry.image).astype(np.float32))
        gt = np.load(entry.gt)
        box = CropBox.from_list(meta["crop"])
        pred = predict_in_box(
            model, volume, box, context=spec.context, batch_size=cfg.inference.batch_size, amp=cfg.train.amp
        ).labels
        spacing = tuple(meta["canonical_spacing"])
        results.append((name, score_case(pred, gt, spacing, axial_axis=0, organs=organs)))
    gathered = gather_objects(results, info)
    return sorted((r for part in gathered for r in part), key=lambda r: r[0])


def summarize_validation(results: Sequence[tuple[str, CaseScores]]) -> dict[str, Any]:
    """Mean DSC and NSD per organ and over organs (FLARE's headline numbers)."""
    summary = summarize([scores for _, scores in results])
    organs = {name: {"dsc": s.dsc_mean, "nsd": s.nsd_mean} for name, s in summary.organs.items()}
    return {"mean_dsc": summary.mean_dsc, "mean_nsd": summary.mean_nsd, "organs": organs}
