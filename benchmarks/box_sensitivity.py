"""How much does a model depend on where the body box puts the organs? The real patient of another scanner, boxed
with several margins (a wider box shows the organs smaller and elsewhere), scored against the approximate reference.

    python benchmarks/real_patient_reference.py --out REF.nii.gz
    python benchmarks/box_sensitivity.py --reference REF.nii.gz [--margins 0 10 40 80] RUN_DIR [RUN_DIR ...]

One line per run and margin (`preprocess.crop_margin_mm`; the preset's is 10; `--opening` also sets
`preprocess.body_opening_mm`, which keeps the patient's arms out of the box): the DSC of liver, spleen and aorta
against the reference and their mean, and the stomach, IVC and pancreas volumes (mL; not in the reference). A model
that learnt the organs rather than their place in the box keeps its scores across the margins.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from real_patient import SERIES  # this folder's script: the same DICOM series

from selflabel.inference.predictor import Predictor
from selflabel.io import read_label, to_canonical
from selflabel.io.dicom import read_series
from selflabel.metrics import dice

SCORED = {"liver": 1, "spleen": 3, "aorta": 5}
VOLUMES = {"stomach": 11, "IVC": 6, "pancreas": 4}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (a work folder's models/*)")
    parser.add_argument("--reference", type=Path, required=True, help="real_patient_reference.py output")
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 10.0, 40.0, 80.0])
    parser.add_argument("--opening", type=float, default=0.0, help="preprocess.body_opening_mm (0 = the run's)")
    parser.add_argument("--series", type=Path, default=SERIES)
    args = parser.parse_args(argv)
    image = read_series(args.series)
    ref = read_label(args.reference)
    reference = to_canonical(ref.array, ref.affine)
    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    for run in args.runs:
        name = f"{run.parent.parent.name}_{run.name}"
        for margin in args.margins:
            overrides = {"preprocess.crop_margin_mm": margin}
            if args.opening:
                overrides["preprocess.body_opening_mm"] = args.opening
            predictor = Predictor.from_run(run, overrides=overrides)
            labels = to_canonical(predictor.predict(image), image.affine)
            scores = [dice(labels == i, reference == i) for i in SCORED.values()]
            volumes = " ".join(f"{k} {(labels == i).sum() * voxel_ml:.1f}" for k, i in VOLUMES.items())
            listed = " ".join(f"{k} {s:.3f}" for k, s in zip(SCORED, scores, strict=True))
            print(f"{name} margin {margin:g} mm: {listed}; mean {np.mean(scores):.3f} | mL: {volumes}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
