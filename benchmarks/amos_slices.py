"""A probe of two more real patients: the two AMOS CT slices of ../shared/data/sam_med2d_demo, with expert masks.

The slices (512x512 PNG, AMOS 2022 CT of two patients of another hospital and scanner) come without HU, spacing or
orientation, so each is made into a one-slice NIfTI volume on three stated guesses, then segmented as a user would
(`selflabel predict`) and scored per annotated organ (DSC; the slices annotate only the liver, aorta and IVC, and in
one the spleen, so nothing else is scored):

- HU: the PNGs are a linear map of HU (grey 0 outside the scanner's field of view). The slope, 13.0 HU per grey
  level, comes from amos_0006_90's two clear peaks, air (-1000 HU) and subcutaneous fat (-100 HU), 69 grey levels
  apart; each slice's offset puts its own air peak at -1000 HU.
- spacing: 0.8 mm in-plane (AMOS CT lies between about 0.6 and 0.9 mm), 5 mm slices.
- orientation: the PNG rows run posterior to anterior (the spine and table are at the top), its columns patient
  right to left (the liver on the image's left, the aorta left of the spine), i.e. voxel axes L, A, S.

Both slices are at the liver's dome (amos_0004_75 between the lungs and the heart), not the mid-abdomen that
FLARE's scans centre on: a hard case for models trained on an abdominal cohort.

    python benchmarks/amos_slices.py --out /tmp/amos RUN_DIR [RUN_DIR ...] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from selflabel.io import read_label, to_canonical, write_nifti
from selflabel.labels import BY_INDEX
from selflabel.metrics import dice

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sam_med2d_demo"
SLICES = ("amos_0004_75", "amos_0006_90")
MASKS = {"liver": 1, "spleen": 3, "aorta": 5, "inferior_vena_cava": 6}
HU_PER_GREY = 900.0 / 69.0  # amos_0006_90: air peak at grey 79, fat peak at 148
SPACING_MM = (0.8, 0.8, 5.0)


def air_peak(grey: np.ndarray) -> int:
    """The most common grey level inside the field of view (grey > 0): the air around the body."""
    return int(np.bincount(grey[grey > 0].ravel(), minlength=256).argmax())


def slice_volume(name: str, data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HU image, FLARE labels, affine) of one PNG slice as a (x, y, 1) volume with voxel axes L, A, S."""
    grey = np.asarray(Image.open(data / "images" / f"{name}.png"))[..., 0].astype(np.int64)
    hu = (grey - air_peak(grey)) * HU_PER_GREY - 1000.0
    labels = np.zeros(grey.shape, dtype=np.uint8)
    for organ, index in MASKS.items():
        mask_path = data / "masks" / f"{name}_{organ}_000.png"
        if mask_path.exists():
            labels[np.asarray(Image.open(mask_path)) > 0] = index
    affine = np.diag([-SPACING_MM[0], SPACING_MM[1], SPACING_MM[2], 1.0])  # columns to patient left, rows anterior
    return hu.T[..., None].astype(np.float32), labels.T[..., None], affine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (a work folder's models/*)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a setting for selflabel predict")
    args = parser.parse_args(argv)
    images, truth = args.out / "imagesTs", args.out / "labelsTs"
    images.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    for name in SLICES:
        hu, labels, affine = slice_volume(name, args.data)
        write_nifti(images / f"{name}_0000.nii.gz", hu, affine=affine)
        write_nifti(truth / f"{name}.nii.gz", labels, affine=affine)
    for run in args.runs:
        pred = args.out / f"{run.parent.parent.name}_{run.name}"
        sets = [arg for kv in args.sets for arg in ("--set", kv)]
        command = [sys.executable, "-m", "selflabel.cli", "predict", "-m", str(run), "-i", str(images),
                   "-o", str(pred), "--overwrite", "--quiet", *sets]  # fmt: skip
        subprocess.run(command, check=True)
        scores = []
        for name in SLICES:
            ref, out = read_label(truth / f"{name}.nii.gz"), read_label(pred / f"{name}.nii.gz")
            ref_array, out_array = to_canonical(ref.array, ref.affine), to_canonical(out.array, out.affine)
            organs = [int(i) for i in np.unique(ref_array) if i]
            row = {BY_INDEX[i].name: dice(out_array == i, ref_array == i) for i in organs}
            scores += list(row.values())
            found = ", ".join(f"{BY_INDEX[int(i)].name}" for i in np.unique(out_array) if i and i not in organs)
            print(f"{pred.name} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items())
                  + f"; also predicted (not annotated): {found or 'nothing'}", flush=True)  # fmt: skip
        print(f"{pred.name}: mean DSC over the {len(scores)} annotated organs {np.mean(scores):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
