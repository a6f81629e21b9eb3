"""nnU-Net v2 raw datasets: dataset.json, the case folders, and pairing images with labels by case name."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from selflabel.atomic import atomic_write_json
from selflabel.errors import InputError
from selflabel.io.nifti import Volume, check_same_grid, read_image, read_label

CHANNEL_SUFFIX = "_0000"


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


def case_files(folder: str | Path, file_ending: str = ".nii.gz", what: str = "input") -> dict[str, list[Path]]:
    """Files of a folder grouped by case name (`case_name`), sorted; hidden files skipped.

    A case usually has one file; several mean several channels (``_0000``, ``_0001``) or two names for one case.
    Raises InputError naming the folder when it does not exist (`what` says which folder it is).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, f"{what} folder not found")
    groups: dict[str, list[Path]] = {}
    for path in sorted(folder.glob(f"*{file_ending}")):
        if not path.name.startswith("."):
            groups.setdefault(case_name(path, file_ending), []).append(path)
    return groups


def single_files(folder: str | Path, file_ending: str = ".nii.gz", what: str = "input") -> dict[str, Path]:
    """`case_files` with one file per case; two files of one case raise InputError naming the second."""
    out = {}
    for name, paths in case_files(folder, file_ending, what).items():
        if len(paths) > 1:
            raise InputError(paths[1], f"maps to the same case {name!r} as {paths[0].name} (several channels?)")
        out[name] = paths[0]
    return out


def list_cases(image_dir: str | Path, label_dir: str | Path | None = None, file_ending: str = ".nii.gz") -> list[Case]:
    """Cases of an image folder, paired with labels by name when `label_dir` is given.

    Image files may be named ``<case>_0000<ending>`` (nnU-Net) or, for any folder of unlabelled scans,
    plain ``<case><ending>``. With `label_dir`, every image needs its label and every label its image.
    """
    images = single_files(image_dir, file_ending, "image")
    if label_dir is None:
        return [Case(name, path) for name, path in images.items()]
    label_dir = Path(label_dir)
    labels = single_files(label_dir, file_ending, "label") if label_dir.is_dir() else {}
    for name, path in images.items():
        if name not in labels:
            raise InputError(path, f"has no label {label_dir / (name + file_ending)}")
    for name, path in labels.items():
        if name not in images:
            raise InputError(path, f"has no image {Path(image_dir) / (name + CHANNEL_SUFFIX + file_ending)}")
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
