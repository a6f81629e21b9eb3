"""NIfTI in and out, with geometry, and discovery of nnU-Net v2 raw datasets.

Axis order: a `Volume`'s array is in the file's own voxel order (i, j, k), exactly as nibabel returns it;
`affine` maps voxel indices to world millimetres in RAS+ (x to the patient's Right... see nibabel's
coordinate-system docs), and `spacing` is the voxel size in mm along i, j, k (from the header zooms).
`to_canonical` re-orders any volume to the project's canonical (z, y, x) layout, axcodes ``("S", "P", "L")``:
axis 0 runs inferior -> superior, so ``array[z]`` is an axial slice shown the radiological way
(anterior at the top, the patient's right on the image's left). `from_canonical` undoes it exactly.

Every reader raises `InputError` naming the file and the problem; writers are atomic.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from selflabel.atomic import atomic_path, atomic_write_json
from selflabel.errors import InputError

CANONICAL_AXCODES: tuple[str, str, str] = ("S", "P", "L")
CHANNEL_SUFFIX = "_0000"


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
    """Read a CT volume as float32 (scaling applied). Raises InputError for NaN/inf, non-3D or unreadable data."""
    path = Path(path)
    img = _load(path)
    data = _voxels(path, img, np.float32)
    bad = data.size - int(np.count_nonzero(np.isfinite(data)))
    if bad:
        raise InputError(path, f"contains {bad} NaN or infinite voxels")
    return Volume(data, img.affine.copy(), img.header.copy(), path)


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


def check_same_grid(image: Volume, label: Volume, atol_mm: float = 1e-3) -> None:
    """Raise InputError (naming the label) unless image and label share shape and affine."""
    where = label.path or "label"
    if image.array.shape != label.array.shape:
        raise InputError(where, f"shape {label.array.shape} differs from its image's {image.array.shape}")
    if not np.allclose(image.affine, label.affine, atol=atol_mm, rtol=1e-5):
        raise InputError(where, "affine (orientation/spacing/origin) differs from its image's")


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


# ---- nnU-Net v2 raw datasets ----


def case_name(path: str | Path, file_ending: str = ".nii.gz") -> str:
    """Case identifier of an image or label file: the file name less its ending and its ``_0000`` suffix.

    Only ``_0000`` is dropped (selflabel reads one CT channel): a label ``FLARE22_Tr_0001.nii.gz`` keeps its
    trailing digits, and its image ``FLARE22_Tr_0001_0000.nii.gz`` maps to the same name.

    >>> case_name("imagesTr/FLARE22_Tr_0001_0000.nii.gz")
    'FLARE22_Tr_0001'
    """
    name = Path(path).name
    if name.endswith(file_ending):
        name = name[: -len(file_ending)]
    return name.removesuffix(CHANNEL_SUFFIX)


@dataclass(frozen=True)
class Case:
    """One case: its name, its (single-channel) image and, when labelled, its label file."""

    name: str
    image: Path
    label: Path | None = None


@dataclass
class Dataset:
    """An nnU-Net v2 raw dataset.

    labels: name -> index, background 0 included, as in dataset.json.
    training: labelled cases (imagesTr + labelsTr); test: imagesTs (+ labelsTs when present);
    unlabeled: unlabeledTr (FLARE22's unlabelled scans), without labels.
    """

    root: Path
    labels: dict[str, int]
    file_ending: str = ".nii.gz"
    training: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)
    unlabeled: list[Case] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return max(self.labels.values()) + 1

    @property
    def label_values(self) -> list[int]:
        return sorted(self.labels.values())


def _check_image_names(folder: Path, file_ending: str) -> None:
    """nnU-Net image folders name every image ``<case>_0000<ending>``."""
    for path in sorted(folder.glob(f"*{file_ending}")):
        if path.name.startswith("."):
            continue
        stem = path.name[: -len(file_ending)]
        if not stem.endswith(CHANNEL_SUFFIX):
            raise InputError(
                path, f"expected <case>{CHANNEL_SUFFIX}{file_ending} (one CT channel, nnU-Net naming); got another name"
            )


def list_cases(image_dir: str | Path, label_dir: str | Path | None = None, file_ending: str = ".nii.gz") -> list[Case]:
    """Cases of an image folder, paired with labels by name when `label_dir` is given.

    Image files may be named ``<case>_0000<ending>`` (nnU-Net) or, for any folder of unlabelled scans,
    plain ``<case><ending>``. With `label_dir`, every image needs its label and every label its image.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise InputError(image_dir, "folder not found")
    paths = [p for p in sorted(image_dir.glob(f"*{file_ending}")) if not p.name.startswith(".")]
    images = {case_name(p, file_ending): p for p in paths}
    if len(images) != len(paths):
        raise InputError(image_dir, "two image files map to the same case name (several channels?)")
    if label_dir is None:
        return [Case(name, path) for name, path in images.items()]
    label_dir = Path(label_dir)
    label_paths = [p for p in sorted(label_dir.glob(f"*{file_ending}")) if not p.name.startswith(".")]
    labels = {case_name(p, file_ending): p for p in label_paths}
    for name, path in images.items():
        if name not in labels:
            raise InputError(path, f"has no label {label_dir / (name + file_ending)}")
    for name, path in labels.items():
        if name not in images:
            raise InputError(path, f"has no image {image_dir / (name + CHANNEL_SUFFIX + file_ending)}")
    return [Case(name, path, labels[name]) for name, path in images.items()]


def _parse_labels(path: Path, raw: object) -> dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        raise InputError(path, "'labels' must be a non-empty mapping of name to index")
    if all(str(k).isdigit() for k in raw):  # nnU-Net v1 / MSD style: index -> name
        raw = {str(v): int(k) for k, v in raw.items()}
    labels: dict[str, int] = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(path, f"label {name!r} must map to one integer index, got {value!r} (regions unsupported)")
        labels[str(name)] = value
    if 0 not in labels.values():
        raise InputError(path, "'labels' needs a background entry with index 0")
    if len(set(labels.values())) != len(labels) or max(labels.values()) > 254:
        raise InputError(path, "label indices must be distinct and below 255")
    return labels


def load_dataset(root: str | Path) -> Dataset:
    """Discover an nnU-Net v2 raw dataset: dataset.json, imagesTr/labelsTr, imagesTs[/labelsTs], unlabeledTr."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not root.is_dir():
        raise InputError(root, "dataset folder not found")
    if not meta_path.is_file():
        raise InputError(meta_path, "missing; an nnU-Net raw dataset needs it, with 'labels' and 'file_ending'")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(meta_path, f"not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or "labels" not in meta:
        raise InputError(meta_path, "has no 'labels' mapping")
    labels = _parse_labels(meta_path, meta["labels"])
    ending = str(meta.get("file_ending", ".nii.gz"))
    channels = meta.get("channel_names", meta.get("modality", {"0": "CT"}))
    if isinstance(channels, dict) and len(channels) > 1:
        raise InputError(meta_path, f"selflabel segments single-channel CT; channel_names lists {len(channels)}")
    dataset = Dataset(root, labels, ending)
    if (root / "imagesTr").is_dir():
        _check_image_names(root / "imagesTr", ending)
        dataset.training = list_cases(root / "imagesTr", root / "labelsTr", ending)
    if (root / "imagesTs").is_dir():
        _check_image_names(root / "imagesTs", ending)
        label_dir = root / "labelsTs" if (root / "labelsTs").is_dir() else None
        dataset.test = list_cases(root / "imagesTs", label_dir, ending)
    if (root / "unlabeledTr").is_dir():
        dataset.unlabeled = list_cases(root / "unlabeledTr", None, ending)
    if not dataset.training and not dataset.test and not dataset.unlabeled:
        raise InputError(root, "no cases found (expected imagesTr/, imagesTs/ or unlabeledTr/)")
    return dataset


def write_dataset_json(root: str | Path, labels: dict[str, int], num_training: int, name: str = "") -> None:
    """Write an nnU-Net v2 dataset.json for a single-channel CT dataset."""
    atomic_write_json(
        Path(root) / "dataset.json",
        {
            "name": name,
            "channel_names": {"0": "CT"},
            "labels": labels,
            "numTraining": num_training,
            "file_ending": ".nii.gz",
        },
    )


def read_case(case: Case, allowed: Collection[int] | None = None) -> tuple[Volume, Volume | None]:
    """Read a case's image and (if any) label, checking that they share one grid."""
    image = read_image(case.image)
    if case.label is None:
        return image, None
    label = read_label(case.label, allowed)
    check_same_grid(image, label)
    return image, label
