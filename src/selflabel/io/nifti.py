"""NIfTI in and out, with geometry, and the canonical orientation the models see.

Axis order: a `Volume`'s array is in the file's own voxel order (i, j, k), exactly as nibabel returns it;
`affine` maps voxel indices to world millimetres in RAS+ (x to the patient's Right... see nibabel's
coordinate-system docs), and `spacing` is the voxel size in mm along i, j, k (from the header zooms).
`to_canonical` re-orders any volume to the project's canonical (z, y, x) layout, axcodes ``("S", "P", "L")``:
axis 0 runs inferior -> superior, so ``array[z]`` is an axial slice shown the radiological way
(anterior at the top, the patient's right on the image's left). `from_canonical` undoes it exactly.

Every reader raises `InputError` naming the file and the problem; writers are atomic.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from selflabel.atomic import atomic_path
from selflabel.errors import InputError

CANONICAL_AXCODES: tuple[str, str, str] = ("S", "P", "L")


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
        """Voxel size in mm along the array axes (i, j, k)."""
        return tuple(float(z) for z in self.header.get_zooms()[:3])

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


def _load(path: Path) -> nib.Nifti1Image:
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for a bad header
        raise InputError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"expected a NIfTI image, got {type(img).__name__}")
    return img


def _voxels(path: Path, img: nib.Nifti1Image, dtype: type) -> np.ndarray:
    """Read the voxel data, turning decompression and size errors into InputError."""
    try:
        data = np.asarray(img.dataobj, dtype=dtype) if dtype is not None else np.asarray(img.dataobj)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise InputError(path, f"unreadable or truncated NIfTI data ({type(exc).__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"is {data.ndim}D with shape {tuple(data.shape)}; expected a 3D volume")
    return data


def read_image(path: str | Path) -> Volume:
    """Read a CT volume as float32 (scaling applied): a NIfTI file, or a folder holding one DICOM series.

    Raises InputError for NaN/inf, non-3D or unreadable data, and for a series that is not one regular CT grid.
    """
    path = Path(path)
    if path.is_dir():
        from selflabel.io.dicom import read_series

        return read_series(path)
    img = _load(path)
    data = _voxels(path, img, np.float32)
    bad = data.size - int(np.count_nonzero(np.isfinite(data)))
    if bad:
        raise InputError(path, f"contains {bad} NaN or infinite voxels")
    return Volume(data, img.affine.copy(), img.header.copy(), path)


def read_header(path: str | Path) -> nib.Nifti1Header:
    """The NIfTI header an image's outputs are written with: the file's own, or a DICOM series' geometry."""
    path = Path(path)
    if path.is_dir():
        from selflabel.io.dicom import nifti_header, series_geometry

        geometry = series_geometry(path)
        return nifti_header(geometry.shape, geometry.affine)
    return _load(path).header.copy()


def source_stamp(path: str | Path) -> dict:
    """What identifies an input's current content: path, size and modification time (a series: of all its files)."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    stats = [p.stat() for p in files]
    return {
        "path": str(path.resolve()),
        "size": sum(s.st_size for s in stats),
        "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
        **({"files": len(files)} if path.is_dir() else {}),
    }


def read_label(path: str | Path, allowed: Collection[int] | None = None) -> Volume:
    """Read a label map as uint8. Raises InputError for non-integer values or values outside `allowed`."""
    path = Path(path)
    img = _load(path)
    data = _voxels(path, img, None)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise InputError(path, "label map has non-integer values")
    values = np.unique(data)
    if allowed is not None:
        extra = sorted(int(v) for v in values if int(v) not in set(allowed))
        if extra:
            raise InputError(path, f"label values {extra} are not in the label map {sorted(allowed)}")
    elif values.size and (values.min() < 0 or values.max() > 255):
        raise InputError(path, f"label values must lie in 0..255, found {values.min()}..{values.max()}")
    return Volume(data.astype(np.uint8), img.affine.copy(), img.header.copy(), path)


def check_same_grid(reference: Volume, other: Volume, reference_is: str = "its image's", atol_mm: float = 1e-3) -> None:
    """Raise InputError naming `other` unless it shares shape and affine with `reference`.

    `reference_is` names the reference in the message, e.g. "its image's" or "the ground truth's".
    """
    where = other.path or "volume"
    if reference.array.shape != other.array.shape:
        raise InputError(where, f"shape {other.array.shape} differs from {reference_is} {reference.array.shape}")
    if not np.allclose(reference.affine, other.affine, atol=atol_mm, rtol=1e-5):
        raise InputError(where, f"affine (orientation/spacing/origin) differs from {reference_is}")


def write_nifti(
    path: str | Path,
    array: np.ndarray,
    reference: Volume | None = None,
    affine: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
) -> Path:
    """Write `array` atomically, with the reference's affine and header (or a given affine).

    The header's data type becomes the array's; scaling is reset so the values are stored as given.
    """
    path = Path(path)
    if reference is not None:
        img = nib.Nifti1Image(array, reference.affine, header=reference.header.copy())
    else:
        if affine is None:
            affine = np.diag([*(spacing or (1.0, 1.0, 1.0)), 1.0])
        img = nib.Nifti1Image(array, affine)
    img.set_data_dtype(array.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    if reference is None:
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


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
