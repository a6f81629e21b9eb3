"""DICOM CT series in: one folder of single-frame slices -> a `Volume` with the series' geometry (read with pydicom).

Slices are ordered by their position along the slice normal (ImagePositionPatient projected on the cross product
of the two ImageOrientationPatient directions), never by file name or InstanceNumber; voxels are stored values
times RescaleSlope plus RescaleIntercept (HU), slice by slice. The volume's axes are (i, j, k) = (column, row
counted from the last, slice) and its affine maps them to RAS+ millimetres (DICOM's patient axes are LPS, so x and y
change sign): column i steps PixelSpacing[1] along the row direction, j steps PixelSpacing[0] against the column
direction from the last row, and slice k steps from the first slice's position to the next (a gantry tilt stays in
the affine, exactly). The rows are stored last to first as dcm2niix and dicom2nifti store them (``L A S`` for an
axial series), so that a NIfTI written for a series lines up voxel for voxel with those converters' images and with
labels drawn on them, not only in millimetres.

A series is refused, naming the folder or the file, when it mixes several series, is not CT, has slices of
another orientation, size or pixel spacing, two slices at one position, a missing slice or uneven slice spacing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from selflabel.errors import InputError
from selflabel.io.volume import Volume
from selflabel.progress import warn_input

#: Relative tolerance on slice spacing (1 %) and absolute tolerance on direction cosines.
SPACING_RTOL = 0.01
DIRECTION_ATOL = 1e-3

#: Files that are part of a DICOM export but not images of a series (skipped without a word).
_EXPORT_FILES = {"DICOMDIR", "VERSION", "LOCKFILE", "Thumbs.db", "desktop.ini"}
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part-10 file (the ``DICM`` marker after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _candidates(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in _EXPORT_FILES
    )


def holds_dicom(folder: Path) -> bool:
    """True when `folder` directly holds at least one DICOM file (checks files until one is found)."""
    return any(is_dicom_file(p) for p in _candidates(folder))


@dataclass
class Slice:
    """One slice's file, its header (pydicom dataset, pixels not yet decoded) and its position along the normal."""

    path: Path
    ds: Any
    position: float = 0.0


def _floats(s: Slice, keyword: str, count: int) -> np.ndarray:
    value = s.ds.get(keyword)
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape != (count,):
        raise InputError(s.path, f"has no valid {keyword} ({count} numbers); cannot place the slice in space")
    return out


def _read_headers(folder: Path) -> list[Slice]:
    import pydicom

    slices, skipped = [], []
    for path in _candidates(folder):
        if not is_dicom_file(path):
            skipped.append(path.name)
            continue
        try:
            ds = pydicom.dcmread(path, defer_size="1 KB")  # pixel data is read when it is decoded
        except Exception as exc:  # pydicom raises several types for a damaged file
            raise InputError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None
        sop_class = str(getattr(ds.get("file_meta", {}), "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
        if sop_class == _DICOMDIR_CLASS:
            continue
        if "PixelData" not in ds:
            kind = pydicom.uid.UID(sop_class).name
            if "Image Storage" in kind:  # pydicom reads a cut-off file without a word
                raise InputError(path, f"truncated or damaged: a {kind} file without pixel data")
            skipped.append(path.name)  # a report, a presentation state, ...
            continue
        slices.append(Slice(path, ds))
    if skipped:
        example = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warn_input(folder, f"skipped {len(skipped)} file(s) that are not DICOM images ({example})", every_rank=True)
    if not slices:
        raise InputError(folder, "holds no DICOM images (files with a 'DICM' marker and pixel data)")
    return slices


def _series_key(ds: Any) -> tuple[str, str, str]:
    """What tells series apart: SeriesInstanceUID (may be blanked by anonymisation), number and description."""
    return tuple(str(ds.get(k) or "") for k in ("SeriesInstanceUID", "SeriesNumber", "SeriesDescription"))


def _check_one_ct_series(folder: Path, slices: list[Slice]) -> None:
    groups: dict[tuple[str, str, str], list[Slice]] = {}
    for s in slices:
        groups.setdefault(_series_key(s.ds), []).append(s)
    if len(groups) > 1:
        described = "; ".join(
            f"{len(group)} file(s) like {group[0].path.name} (series {key[1] or '?'} {key[2]!r}, UID {key[0] or '?'})"
            for key, group in sorted(groups.items(), key=lambda kv: -len(kv[1]))
        )
        raise InputError(folder, f"mixes {len(groups)} series: {described}; put each series in a folder of its own")
    for s in slices:
        modality = str(s.ds.get("Modality", "")).strip()
        if modality != "CT":
            raise InputError(s.path, f"modality {modality or '(none)'}, not CT; selflabel segments CT series only")
        frames = int(s.ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise InputError(
                s.path, f"a multi-frame (enhanced) DICOM of {frames} frames; selflabel reads single-frame series "
                "(convert it first, e.g. dcm2niix -z y)"
            )  # fmt: skip
        if int(s.ds.get("SamplesPerPixel", 1)) != 1:
            raise InputError(s.path, "not a greyscale image (SamplesPerPixel > 1)")


@dataclass(frozen=True)
class SeriesGeometry:
    """A checked series: slices in order along the normal, the (i, j, k) shape and the RAS+ affine (mm)."""

    slices: list[Slice]
    shape: tuple[int, int, int]
    affine: np.ndarray


def _ordered(folder: Path, slices: list[Slice]) -> SeriesGeometry:
    first = slices[0]
    orientation = _floats(first, "ImageOrientationPatient", 6)
    pixel = _floats(first, "PixelSpacing", 2)
    rows, cols = int(first.ds.get("Rows", 0)), int(first.ds.get("Columns", 0))
    for s in slices[1:]:
        if not np.allclose(_floats(s, "ImageOrientationPatient", 6), orientation, atol=DIRECTION_ATOL):
            raise InputError(s.path, f"orientation differs from {first.path.name}'s (a localizer or another series?)")
        if not np.allclose(_floats(s, "PixelSpacing", 2), pixel, rtol=1e-4):
            raise InputError(s.path, f"pixel spacing differs from {first.path.name}'s {pixel.tolist()} mm")
        if (int(s.ds.get("Rows", 0)), int(s.ds.get("Columns", 0))) != (rows, cols):
            raise InputError(s.path, f"size differs from {first.path.name}'s {rows}x{cols} pixels")
    if len(slices) < 2:
        raise InputError(folder, f"holds a single slice ({first.path.name}); a CT series needs at least 2")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    for s in slices:
        s.position = float(_floats(s, "ImagePositionPatient", 3) @ normal)
    slices = sorted(slices, key=lambda s: s.position)
    gaps = np.diff([s.position for s in slices])
    for a, b, gap in zip(slices[:-1], slices[1:], gaps, strict=True):
        if gap < 1e-3:
            raise InputError(
                folder, f"{a.path.name} and {b.path.name} lie at the same position ({a.position:.2f} mm): "
                "duplicated files, or two series in one folder"
            )  # fmt: skip
    step = float(np.median(gaps))
    for a, b, gap in zip(slices[:-1], slices[1:], gaps, strict=True):
        if abs(gap - step) > SPACING_RTOL * step:
            missing = round(gap / step) - 1
            whole = missing >= 1 and abs(gap - (missing + 1) * step) <= SPACING_RTOL * step
            what = f"{missing} slice(s) missing" if whole else "uneven slice spacing"
            raise InputError(
                folder, f"{what}: {gap:.3f} mm between {a.path.name} and {b.path.name}, {step:.3f} mm elsewhere"
            )
    start = _floats(slices[0], "ImagePositionPatient", 3)
    end = _floats(slices[-1], "ImagePositionPatient", 3)
    slice_step = (end - start) / (len(slices) - 1)
    for k, s in enumerate(slices):  # every slice where the regular grid puts it (within a tenth of a pixel)
        if np.linalg.norm(_floats(s, "ImagePositionPatient", 3) - (start + k * slice_step)) > 0.1 * min(pixel):
            raise InputError(s.path, "lies off the line through the other slices' positions; not one regular grid")
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel[1]  # i: along a row, one column to the next
    lps[:3, 1] = -col_dir * pixel[0]  # j: up a column, from the last row to the first (dcm2niix's row order)
    lps[:3, 2] = slice_step
    lps[:3, 3] = start + col_dir * pixel[0] * (rows - 1)  # the last row's first pixel
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM's LPS -> NIfTI's RAS
    return SeriesGeometry(slices, (cols, rows, len(slices)), affine)


def series_geometry(folder: str | Path) -> SeriesGeometry:
    """Read and check a series' headers (no pixel decoding). Raises InputError naming the folder or the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "DICOM series folder not found")
    slices = _read_headers(folder)
    _check_one_ct_series(folder, slices)
    return _ordered(folder, slices)


def nifti_header(shape: tuple[int, ...], affine: np.ndarray) -> nib.Nifti1Header:
    """A NIfTI header for a volume of `shape` on `affine` (scanner coordinates, mm), as written for a series."""
    img = nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), affine)
    header = img.header.copy()
    header.set_data_shape(shape)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    header["descrip"] = b"selflabel: from a DICOM series"
    return header


def _pixels(s: Slice) -> np.ndarray:
    try:
        stored = s.ds.pixel_array
    except Exception as exc:  # pydicom raises several types for missing decoders and corrupt data
        syntax = getattr(getattr(s.ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(s.path, f"pixel data ({name}) could not be decoded: {first}") from None
    slope = float(s.ds.get("RescaleSlope", 1) or 1)
    intercept = float(s.ds.get("RescaleIntercept", 0) or 0)
    return stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def read_series(folder: str | Path) -> Volume:
    """Read a CT series folder as a float32 `Volume` in HU, axes (column, row from the last, slice), with its RAS+
    affine."""
    folder = Path(folder)
    geometry = series_geometry(folder)
    cols, rows, n = geometry.shape
    array = np.empty((cols, rows, n), dtype=np.float32)
    for k, s in enumerate(geometry.slices):
        array[:, :, k] = _pixels(s).T[:, ::-1]  # pixel_array is (row, column)
        s.ds = None  # the file's data and its decoded copy are not needed any more
    return Volume(array, geometry.affine, nifti_header(array.shape, geometry.affine), folder)
