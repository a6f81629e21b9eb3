"""A copy of an nnU-Net raw cohort at a finer in-plane grid: what the recipe costs on scans of a scanner's size.

    python benchmarks/upsampled_cohort.py /tmp/realct_s0 /tmp/realct_s0_x3 --factor 3

Every image (linear) and label map (nearest neighbour) of imagesTr/labelsTr, unlabeledTr and imagesTs/labelsTs is
resampled by `--factor` in-plane (slices unchanged) and its affine rescaled to match, so that the anatomy, the
organs and the world coordinates stay where they were. `benchmarks/realct_cohort.py`'s 2.2-3.4 mm cases become 512-ish
pixel slices at 0.7-1.1 mm with `--factor 3`, the size of a clinical CT. Existing output files are kept (rerun resumes).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from selflabel.io import read_image, read_label, write_nifti

FOLDERS: tuple[tuple[str, bool], ...] = (
    ("imagesTr", False), ("labelsTr", True), ("unlabeledTr", False), ("imagesTs", False), ("labelsTs", True),
)  # fmt: skip


def upsample(path: Path, out: Path, factor: float, label: bool) -> None:
    """Write `path` resampled by `factor` along its first two voxel axes to `out` (the in-plane axes of an axial
    scan stored as NIfTI)."""
    volume = read_label(path) if label else read_image(path)
    array = np.asarray(volume.array, dtype=np.uint8 if label else np.float32)
    zoomed = ndi.zoom(array, (factor, factor, 1), order=0 if label else 1, grid_mode=True, mode="nearest")
    affine = np.array(volume.affine, dtype=np.float64)
    scale = np.array([array.shape[0] / zoomed.shape[0], array.shape[1] / zoomed.shape[1], 1.0])
    # the new first voxel's centre sits half an old voxel minus half a new one from the old first centre
    affine[:3, 3] += affine[:3, :3] @ ((scale - 1.0) / 2.0)
    affine[:3, :3] = affine[:3, :3] @ np.diag(scale)
    write_nifti(out, zoomed if label else np.round(zoomed).astype(np.int16), affine=affine)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="an nnU-Net raw cohort (dataset.json, imagesTr, ...)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--factor", type=float, default=3.0, help="in-plane upsampling factor (default 3)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    jobs = []
    for folder, label in FOLDERS:
        for path in sorted((args.source / folder).glob("*.nii.gz")):
            target = args.out / folder / path.name
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                jobs.append((path, target, args.factor, label))
    if args.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            list(pool.map(upsample, *zip(*jobs, strict=True)))
    else:
        for job in jobs:
            upsample(*job)
    shutil.copy(args.source / "dataset.json", args.out / "dataset.json")
    print(f"{args.out}: {len(jobs)} files written at {args.factor}x in-plane")
    return 0


if __name__ == "__main__":
    sys.exit(main())
