"""NIfTI in and out, with geometry; a folder passed as an image is read as one DICOM series.

A `Volume`'s array is in the file's own voxel order (i, j, k), exactly as nibabel returns it (see
`selflabel.io.volume` for the axes and the canonical layout the models see). Every reader raises `InputError` naming
the file and the problem; writers are atomic.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from selflabel.atomic import atomic_path
from selflabel.errors import InputError
from selflabel.io.dicom import nifti_header, read_series, series_geometry
from selflabel.io.volume import Volume, affine_spacing
from selflabel.progress import warn_input


def _load(path: Path) -> nib.Nifti1Image:
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for a bad header
        raise InputError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"expected a NIfTI image, got {type(img).__name__}")
    pixdim, placed = np.asarray(img.header.get_zooms()[:3], float), np.asarray(affine_spacing(img.affine))
    if pixdim.shape == placed.shape and not np.allclose(pixdim, placed, rtol=1e-3, atol=1e-4):  # a 2D file: later
        warn_input(path, f"its header's voxel size (pixdim {_mm(pixdim)}) differs from its affine's ({_mm(placed)}); "
                   "the affine's is used, as for the voxels' positions", every_rank=True)  # fmt: skip
    return img


def _mm(values: np.ndarray) -> str:
    return " x ".join(f"{v:g}" for v in values) + " mm"


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
