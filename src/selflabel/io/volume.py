"""A CT volume with its geometry, and the canonical orientation the models see.

Axis order: a `Volume`'s array is in the file's own voxel order (i, j, k); `affine` maps voxel indices to world
millimetres in RAS+ (x to the patient's Right... see nibabel's coordinate-system docs), and `spacing` is the voxel
size in mm along i, j, k (from the header zooms). `to_canonical` re-orders any volume to the project's canonical
(z, y, x) layout, axcodes ``("S", "P", "L")``: axis 0 runs inferior -> superior, so ``array[z]`` is an axial slice
shown the radiological way (anterior at the top, the patient's right on the image's left). `from_canonical` undoes
it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from selflabel.errors import InputError

CANONICAL_AXCODES: tuple[str, str, str] = ("S", "P", "L")


def affine_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis of a 4x4 voxel -> world affine: its columns' lengths."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0))


@dataclass
class Volume:
    """A 3D array with its geometry.

    array: voxels in the file's (i, j, k) order; float32 for images, uint8 for labels.
    affine: 4x4 voxel -> world (mm, RAS+).
    header: the NIfTI header, kept so that written outputs carry the input's header.
    """

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header = field(repr=False)
    path: Path | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes (i, j, k): the affine's, which places the voxels (a header's pixdim
        can disagree with its sform; `read_image` warns then)."""
        return affine_spacing(self.affine)

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Anatomical direction each array axis points to, e.g. ``("R", "A", "S")``."""
        return tuple(nib.orientations.aff2axcodes(self.affine))

    @property
    def axial_axis(self) -> int:
        """The array axis that runs inferior <-> superior (the one axial slices are taken along)."""
        return axial_axis(self.affine)


def axial_axis(affine: np.ndarray) -> int:
    """Index of the voxel axis closest to the world S-I direction."""
    ornt = nib.orientations.io_orientation(affine)
    return int(np.flatnonzero(ornt[:, 0] == 2)[0])


def check_same_grid(reference: Volume, other: Volume, reference_is: str = "its image's", atol_mm: float = 1e-3) -> None:
    """Raise InputError naming `other` unless it shares shape and affine with `reference`.

    `reference_is` names the reference in the message, e.g. "its image's" or "the ground truth's".
    """
    where = other.path or "volume"
    if reference.array.shape != other.array.shape:
        raise InputError(where, f"shape {other.array.shape} differs from {reference_is} {reference.array.shape}")
    if not np.allclose(reference.affine, other.affine, atol=atol_mm, rtol=1e-5):
        raise InputError(where, f"affine (orientation/spacing/origin) differs from {reference_is}")


def _canonical_transform(affine: np.ndarray) -> np.ndarray:
    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(CANONICAL_AXCODES))


def to_canonical(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Re-order (transpose and flip, no resampling) a volume to the canonical (z, y, x) layout."""
    return nib.orientations.apply_orientation(array, _canonical_transform(affine))


def from_canonical(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Undo `to_canonical` for a volume whose original affine is `affine`; extra leading axes are not allowed."""
    ornt = nib.orientations.io_orientation(affine)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(CANONICAL_AXCODES), ornt)
    return nib.orientations.apply_orientation(array, back)


def canonical_axes(values: Sequence[float], affine: np.ndarray) -> tuple:
    """Re-order per-axis values (shape, spacing in mm) of a volume to its canonical (z, y, x) order."""
    out: list = [None, None, None]
    for axis, (target, _flip) in enumerate(_canonical_transform(affine)):
        out[int(target)] = values[axis]
    return tuple(out)
