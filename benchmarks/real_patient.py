"""A qualitative check on a real patient from another scanner: the DICOM series in ../shared/data (no labels).

Each given run folder segments the series as a user would (`selflabel predict` on the DICOM folder); the script
prints each organ's volume in mL and its centroid's position in the body (as fractions of the body's bounding box,
right-to-left, anterior-to-posterior), so that a liver found on the patient's left, or an aorta of 2 L, shows
up without labels, and draws the predictions over the scan (axial, coronal, sagittal) to <out>/<name>.png.
With `--reference` (FLARE labels: the approximate reference of liver, spleen and aorta from
`real_patient_reference.py`), it also prints the DSC of each organ in the reference and their mean. With
`--totalsegmentator`, the reference is a TotalSegmentator v2 multi-label file instead, mapped to FLARE's ids: its
project's own output for this series is `tests/reference_files/example_seg_dicom.nii.gz` of wasserth/TotalSegmentator
(the fast model; model-made, not an expert's, but it draws every organ present: 7 of FLARE's 13).

    python benchmarks/real_patient.py --out /tmp/real_patient [--reference REF.nii.gz [--totalsegmentator]] \
        [--set KEY=VALUE ...] [--ensemble] RUN_DIR [RUN_DIR ...]

`--set` passes settings on to `selflabel predict` (e.g. `--set inference.tta_zoom=[0.9,1.1]`); `--ensemble` makes one
prediction with every given run together (`selflabel predict -m A -m B ...`: their probabilities averaged).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

from selflabel.io import read_image, read_label, to_canonical, write_nifti
from selflabel.io.dicom import read_series
from selflabel.labels import BY_INDEX
from selflabel.metrics import dice
from selflabel.report import plot_pseudolabels

SERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator_dicom" / "series"
#: TotalSegmentator v2 class id -> FLARE22 id (its class list, as in ../shared/data/totalsegmentator_example/SOURCE.md)
TOTALSEG_V2 = {5: 1, 2: 2, 1: 3, 7: 4, 52: 5, 63: 6, 8: 7, 9: 8, 4: 9, 15: 10, 6: 11, 19: 12, 3: 13}


def flare_from_totalsegmentator(labels: np.ndarray) -> np.ndarray:
    """A TotalSegmentator v2 multi-label array with FLARE22's ids (every other class background)."""
    lookup = np.zeros(max(int(labels.max()), max(TOTALSEG_V2)) + 1, dtype=np.uint8)
    for source, target in TOTALSEG_V2.items():
        lookup[source] = target
    return lookup[labels.astype(np.int64)]


def describe(image_path: Path, label_path: Path) -> list[str]:
    """One line per organ found: volume (mL) and centroid as fractions of the body box (R->L, A->P, I->S)."""
    image, labels = read_image(image_path), read_label(label_path)
    img = to_canonical(image.array, image.affine)  # (z, y, x): towards S, P and L in the canonical layout
    lab = to_canonical(labels.array, labels.affine)
    body = np.argwhere(img > -300)
    lo, hi = body.min(0), body.max(0) + 1
    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    lines = []
    for index in sorted(int(v) for v in np.unique(lab) if v):
        where = np.argwhere(lab == index)
        frac = (where.mean(0) - lo) / (hi - lo)
        lines.append(
            f"{BY_INDEX[index].name:>13}: {len(where) * voxel_ml:8.1f} mL, centroid R->L {frac[2]:.2f}, "
            f"A->P {frac[1]:.2f}, I->S {frac[0]:.2f}"
        )
    return lines


def reference_dice(reference_path: Path, label_path: Path, totalsegmentator: bool = False) -> str:
    """DSC of the prediction for each organ of the reference, and their mean, on one line."""
    ref, pred = read_label(reference_path), read_label(label_path)
    ref_array, pred_array = to_canonical(ref.array, ref.affine), to_canonical(pred.array, pred.affine)
    if totalsegmentator:
        ref_array = flare_from_totalsegmentator(ref_array)
    scores = {BY_INDEX[i].name: dice(pred_array == i, ref_array == i) for i in sorted(np.unique(ref_array)) if i}
    listed = ", ".join(f"{name} {value:.3f}" for name, value in scores.items())
    return f"  DSC vs the reference: {listed}; mean of {len(scores)} {np.mean(list(scores.values())):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (selflabel train / a work folder's models/*)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--series", type=Path, default=SERIES)
    parser.add_argument("--reference", type=Path, help="reference labels (real_patient_reference.py's, FLARE ids)")
    parser.add_argument("--totalsegmentator", action="store_true", help="the reference has TotalSegmentator v2 ids")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a setting for selflabel predict")
    parser.add_argument("--ensemble", action="store_true", help="one prediction by every run together (-m A -m B ...)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    image_path = args.out / "image.nii.gz"
    volume = read_series(args.series)
    write_nifti(image_path, volume.array, volume)
    for runs in [args.runs] if args.ensemble else [[run] for run in args.runs]:
        name = "+".join(f"{run.parent.parent.name}_{run.name}" for run in runs)
        pred = args.out / (f"ensemble_of_{len(runs)}" if len(runs) > 1 else name)
        sets = [arg for kv in args.sets for arg in ("--set", kv)]
        models = [arg for run in runs for arg in ("-m", str(run))]
        command = [sys.executable, "-m", "selflabel.cli", "predict", *models, "-i", str(args.series.parent),
                   "-o", str(pred), "--overwrite", "--quiet", *sets]  # fmt: skip
        subprocess.run(command, check=True)
        label_path = pred / f"{args.series.name}.nii.gz"
        print(f"{name}:\n" + "\n".join(describe(image_path, label_path)), flush=True)
        if args.reference:
            print(reference_dice(args.reference, label_path, args.totalsegmentator), flush=True)
        plot_pseudolabels({pred.name: (image_path, label_path)}, args.out / f"{pred.name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
