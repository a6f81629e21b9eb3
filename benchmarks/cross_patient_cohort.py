"""A realct cohort whose unlabelled scans are partly another patient's: what pseudo-labels of a new anatomy give.

    python benchmarks/cross_patient_cohort.py OUT --base REALCT_COHORT --patient IMAGE.nii.gz \
        --patient-labels TOTALSEG.nii.gz --count 12 --seed 0

The labelled, validation and test cases are the base cohort's (`realct_cohort.py`: one patient, "A"), linked; of its
unlabelled scans the first ones are kept and the last `count` are replaced by as many scans of a second patient
("B"), so the students' data and time stay the same. B is the real DICOM series of ../shared (written as NIfTI by
`real_patient.py`, its `image.nii.gz`), and each of its scans is changed as `realct_cohort.py` changes A's (field of
view, grid, rotation and scale, a smooth displacement, blur and noise) from a generator of its own, except the
contrast phase: B was scanned enhanced and stays so. B's labels (TotalSegmentator's, mapped to FLARE22's ids) only
tell the generator where the organs lie; they are not written. The real patient's score
(`real_patient.py --totalsegmentator`) then measures what the students learnt from B's pseudo-labels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from real_patient import flare_from_totalsegmentator  # noqa: E402
from realct_cohort import Source, case_rng, draw_params, make_case  # noqa: E402

from selflabel.atomic import atomic_write_json  # noqa: E402
from selflabel.io import write_nifti  # noqa: E402

#: Case indices of B's scans start here, so that their generators differ from every A case's.
B_INDEX = 1000


def load_patient(image_path: Path, labels_path: Path) -> Source:
    """Patient B in RAS (x, y, z), labels mapped to FLARE22's ids."""
    image = nib.as_closest_canonical(nib.load(image_path))
    labels = nib.as_closest_canonical(nib.load(labels_path))
    if image.shape != labels.shape or not np.allclose(image.affine, labels.affine, atol=1e-3):
        raise SystemExit(f"{labels_path}: grid differs from {image_path}'s")
    array = np.maximum(np.asarray(image.dataobj, dtype=np.float32), -1024.0)
    label = flare_from_totalsegmentator(np.asarray(labels.dataobj).astype(np.int64)).astype(np.uint8)
    return Source(array, label, image.affine, tuple(float(s) for s in image.header.get_zooms()[:3]))


def patient_case(source: Source, seed: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """B's scan number `index` (image, label, affine as `make_case`): realct's changes drawn from its own
    generator, the phase as scanned."""
    rng = case_rng(seed, "unlabeled", B_INDEX + index)
    params = replace(draw_params(rng, source), phase="as scanned", enhancement=1.0, offsets={})
    return make_case(source, params, rng)


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.symlink(source.resolve(), target)


def write(out: Path, base: Path, patient: Source, count: int, seed: int) -> None:
    """The base cohort with its last `count` unlabelled scans replaced by patient B's (written atomically)."""
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        for path in sorted((base / folder).glob("*.nii.gz")):
            _link(path, out / folder / path.name)
    unlabeled = sorted((base / "unlabeledTr").glob("*.nii.gz"))
    if count > len(unlabeled):
        raise SystemExit(f"{base}: {len(unlabeled)} unlabelled scans, fewer than --count {count}")
    for path in unlabeled[: len(unlabeled) - count]:
        _link(path, out / "unlabeledTr" / path.name)
    for index in range(1, count + 1):
        target = out / "unlabeledTr" / f"PatientB_{index:05d}_0000.nii.gz"
        if not target.exists():
            image, _label, affine = patient_case(patient, seed, index)
            write_nifti(target, image, affine=affine)  # atomic: a temporary file, then a rename
    atomic_write_json(out / "dataset.json", json.loads((base / "dataset.json").read_text()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--base", type=Path, required=True, help="a realct cohort (realct_cohort.py)")
    parser.add_argument("--patient", type=Path, required=True, help="patient B's CT (NIfTI)")
    parser.add_argument("--patient-labels", type=Path, required=True, help="its TotalSegmentator v2 labels")
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write(args.out, args.base, load_patient(args.patient, args.patient_labels), args.count, args.seed)
    print(f"{args.out}: {args.count} of the unlabelled scans are patient B's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
