"""An approximate reference for three organs of the real DICOM patient (../shared/data, no labels shipped).

Not an expert label: liver, spleen and aorta of this contrast-enhanced scan drawn by intensity alone, so that
options can be compared on a patient from another scanner by a number instead of by eye. Every step is fixed
here and uses no model:

- the series read as a user's would be (HU), median-filtered in-plane (5x5);
- liver: 60-140 HU, opened in-plane (disc of radius 6 px), the 3D component holding a seed voxel chosen by eye
  inside the liver, closed, holes filled per slice; spleen the same with 55-135 HU, radius 5 px and its own seed;
- aorta: per slice 130-320 HU, opened (radius 3 px), the component under 1000 px (the vertebra is larger) holding
  the seed on the middle slice, then on each next slice the one overlapping the slice before, holes filled.

Blood vessels inside the liver at its intensity count as liver, as FLARE22's labels do. IVC, stomach and pancreas
are not drawn (their contrast against their neighbours is too low for thresholds). Read the overlay before
trusting a number (`--figure`).

    python benchmarks/real_patient_reference.py --out /tmp/real_patient/reference.nii.gz [--figure F.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from selflabel.io import write_nifti
from selflabel.io.dicom import read_series
from selflabel.labels import FLARE22_ORGANS

SERIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator_dicom" / "series"
LIVER, SPLEEN, AORTA = 1, 3, 5
#: organ -> (HU range, opening radius in pixels, seed voxel (column, row from the last, slice) in the series as read)
SOLID = {LIVER: ((60.0, 140.0), 6, (180, 238, 10)), SPLEEN: ((55.0, 135.0), 5, (352, 187, 10))}
AORTA_RANGE, AORTA_RADIUS, AORTA_SEED, AORTA_MAX_PX = (130.0, 320.0), 3, (264, 213, 10), 1000


def _disc(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return yy**2 + xx**2 <= radius**2


def _fill_per_slice(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndi.binary_fill_holes(mask[..., z]) for z in range(mask.shape[-1])], axis=-1)


def solid_organ(smooth: np.ndarray, hu: tuple[float, float], radius: int, seed: tuple[int, int, int]) -> np.ndarray:
    """The 3D component of the opened HU range that holds `seed`, closed and hole-filled per slice."""
    disc = _disc(radius)[..., None]
    mask = ndi.binary_opening((smooth > hu[0]) & (smooth < hu[1]), structure=disc)
    components, _ = ndi.label(mask)
    if not components[seed]:
        raise SystemExit(f"the seed {seed} is not inside the {hu} HU mask: the series is not the expected one")
    organ = ndi.binary_closing(components == components[seed], structure=disc)
    return _fill_per_slice(organ)


def aorta(smooth: np.ndarray) -> np.ndarray:
    """The aorta traced slice by slice from the seed: the small HU-range component overlapping the slice before."""
    disc = _disc(AORTA_RADIUS)
    out = np.zeros(smooth.shape, dtype=bool)

    def pick(z: int, guide: np.ndarray) -> np.ndarray:
        mask = ndi.binary_opening((smooth[..., z] > AORTA_RANGE[0]) & (smooth[..., z] < AORTA_RANGE[1]), disc)
        components, n = ndi.label(mask)
        sizes = ndi.sum(np.ones_like(mask), components, index=np.arange(1, n + 1))
        overlap = ndi.sum(guide, components, index=np.arange(1, n + 1))
        overlap[sizes >= AORTA_MAX_PX] = 0
        if n == 0 or overlap.max() == 0:
            return np.zeros(mask.shape, dtype=bool)
        return ndi.binary_fill_holes(components == int(np.argmax(overlap)) + 1)

    z0 = AORTA_SEED[2]
    seed = np.zeros(smooth.shape[:2], dtype=bool)
    seed[AORTA_SEED[:2]] = True
    out[..., z0] = pick(z0, seed)
    for z in range(z0 + 1, smooth.shape[-1]):
        out[..., z] = pick(z, out[..., z - 1])
    for z in range(z0 - 1, -1, -1):
        out[..., z] = pick(z, out[..., z + 1])
    return out


def reference(array: np.ndarray) -> np.ndarray:
    """Labels (uint8, FLARE22 indices) of liver, spleen and aorta for the series' HU array."""
    smooth = ndi.median_filter(array.astype(np.float32), size=(5, 5, 1))
    labels = np.zeros(array.shape, dtype=np.uint8)
    for index, (hu, radius, seed) in SOLID.items():
        labels[solid_organ(smooth, hu, radius, seed) & (labels == 0)] = index
    labels[aorta(smooth) & (labels == 0)] = AORTA
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the reference NIfTI to write")
    parser.add_argument("--series", type=Path, default=SERIES)
    parser.add_argument("--figure", type=Path, help="also draw the reference over the scan")
    args = parser.parse_args(argv)
    volume = read_series(args.series)
    labels = reference(volume.array)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(args.out, labels, volume)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    for organ in FLARE22_ORGANS:
        if organ.index in (LIVER, SPLEEN, AORTA):
            print(f"{organ.name:>7}: {(labels == organ.index).sum() * voxel_ml:7.1f} mL")
    if args.figure:
        from selflabel.report import plot_pseudolabels

        image = args.out.with_name("reference_image.nii.gz")
        write_nifti(image, volume.array, volume)
        plot_pseudolabels({"approximate reference": (image, args.out)}, args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
