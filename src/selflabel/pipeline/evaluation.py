"""The recipe's evaluation stage: predict each case from its NIfTI file, profiled as FLARE does, then score."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from selflabel.atomic import atomic_write_json
from selflabel.efficiency import Profiler
from selflabel.evaluate import evaluate_folders
from selflabel.inference import Predictor, output_name
from selflabel.io import Case, read_image, write_nifti
from selflabel.labels import organs_for


def evaluate_model(predictor: Predictor, cases: Sequence[Case], out_dir: Path, progress: bool = True) -> dict:
    """Predict `cases` from their NIfTI files (FLARE-style, one profiled case at a time) and score them (the organs
    of the run's label map).

    Writes ``pred/<case>.nii.gz``, ``gt/`` (links to the labels), ``metrics.csv`` (+ summary JSON) and
    ``efficiency.json`` (per-case time, CPU/GPU-memory AUCs). Cases already predicted are skipped.
    """
    pred_dir, gt_dir = out_dir / "pred", out_dir / "gt"
    pred_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    efficiency_path = out_dir / "efficiency.json"
    efficiency = json.loads(efficiency_path.read_text()) if efficiency_path.is_file() else {}
    for case in cases:
        link = gt_dir / output_name(case)
        if not link.exists():
            link.symlink_to(Path(case.label).resolve())
        target = pred_dir / output_name(case)
        if target.is_file() and case.name in efficiency:
            continue
        with Profiler() as profiler:
            image = read_image(case.image)
            write_nifti(target, predictor.predict(image), reference=image)
        efficiency[case.name] = profiler.result().summary()
        atomic_write_json(efficiency_path, efficiency)
    organs = organs_for(predictor.labels)
    result = evaluate_folders(pred_dir, gt_dir, out_dir / "metrics.csv", workers=1, organs=organs)
    return {"mean_dsc": result.summary.mean_dsc, "mean_nsd": result.summary.mean_nsd}
