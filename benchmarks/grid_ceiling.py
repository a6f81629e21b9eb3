"""The most a model can score at a given in-plane grid: the test labels themselves, taken down to the model's grid
and back up the way predictions are, scored with FLARE22's DSC/NSD.

For every test case of a cohort: the CPU preset's body crop, the label resized to S x S (as the cache holds training
labels), one-hot "probabilities" of it resized back bilinearly and arg-maxed (`resized_argmax`, as every prediction
is) and pasted into the full grid, then `selflabel evaluate` against the original label. A model trained and
predicting at that grid cannot do much better than this oracle, so it bounds both a teacher and its student: a
student gain of g points needs a teacher at least g points under the ceiling.

    python benchmarks/grid_ceiling.py COHORT [COHORT ...] --sizes 64 80 96 128 --out /tmp/ceiling
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from selflabel.config import load_config
from selflabel.inference import output_name
from selflabel.io import Volume, canonical_axes, from_canonical, load_dataset, read_image, read_label, to_canonical
from selflabel.preprocess.crop import paste
from selflabel.preprocess.volume import crop_box, prepare_label
from selflabel.slicewise import resized_argmax


def oracle(image: Volume, label: Volume, size: int, preset: str) -> np.ndarray:
    """The label at `size` x `size` and back, in the label's own voxel order."""
    cfg = load_config(preset, overrides={"preprocess.image_size": size}).preprocess
    canonical = np.ascontiguousarray(to_canonical(image.array, image.affine))
    box = crop_box(canonical, canonical_axes(image.spacing, image.affine), cfg)
    _, lowres = prepare_label(label, size, box, cfg.label_resize)
    onehot = F.one_hot(torch.from_numpy(lowres).long(), 14).permute(0, 3, 1, 2).float()
    full = paste(resized_argmax(onehot, box.size).numpy(), box)
    return np.asfortranarray(from_canonical(full, label.affine))


def ceiling(cohort: Path, size: int, out: Path, preset: str) -> dict[str, float]:
    """Write the oracle of every test case at `size`, score it, return the summary's means."""
    from selflabel.io import write_nifti

    dataset = load_dataset(cohort)
    pred = out / cohort.name / str(size)
    pred.mkdir(parents=True, exist_ok=True)
    for case in dataset.test:
        image, label = read_image(case.image), read_label(case.label)
        write_nifti(pred / output_name(case), oracle(image, label, size, preset), reference=label)
    csv = out / cohort.name / f"{size}.csv"
    command = [sys.executable, "-m", "selflabel.cli", "evaluate", "--pred", str(pred), "--gt",
               str(cohort / "labelsTs"), "--out", str(csv), "--workers", "2"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    summary = json.loads(csv.with_name(f"{size}_summary.json").read_text())
    organs = {name: scores["DSC_mean"] for name, scores in summary["organs"].items()}
    return {"dsc": summary["mean_DSC"], "nsd": summary["mean_NSD"], "per_organ": organs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohorts", nargs="+", type=Path)
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 80, 96, 128])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print("| cohort | grid | oracle test DSC | oracle test NSD | per organ DSC |")
    print("|---|---|---|---|---|")
    for cohort in args.cohorts:
        for size in args.sizes:
            row = ceiling(cohort, size, args.out, args.preset)
            organs = " ".join(f"{k} {v:.2f}" for k, v in row["per_organ"].items())
            print(f"| {cohort.name} | {size} | {row['dsc']:.3f} | {row['nsd']:.3f} | {organs} |", flush=True)


if __name__ == "__main__":
    main()
