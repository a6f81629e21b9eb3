"""nnU-Net raw datasets (v2, and v1 read as v2): dataset.json, the case folders, pairing images with labels by case
name, and the scans of any input folder (NIfTI files or DICOM series)."""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from selflabel.atomic import atomic_write_json
from selflabel.errors import InputError
from selflabel.io.nifti import read_image, read_label
from selflabel.io.volume import Volume, check_same_grid
from selflabel.labels import OTHER_TOLERANCE_MM, flare_organ, organs_for
from selflabel.progress import warn_input

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


_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def image_files(
    folder: str | Path, file_ending: str = ".nii.gz", what: str = "image", strict: bool = False
) -> dict[str, Path]:
    """The one CT image of every case of an image folder: case name -> file, sorted by name.

    Names follow nnU-Net (``<case>_0000<ending>``, channel 0 = the CT) when the folder uses them (any file ends in
    ``_0000``, or `strict`); then a file ``<case>_0001<ending>`` (another channel) is ignored with a warning beside
    its case's ``_0000`` file, and skipped with a warning naming it when the case has no ``_0000`` file. Otherwise
    any ``<case><ending>`` is a case. `strict` (imagesTr) refuses every name that is not ``<case>_0000<ending>``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, f"{what} folder not found")
    stems = {
        path: path.name[: -len(file_ending)]
        for path in sorted(folder.glob(f"*{file_ending}"))
        if not path.name.startswith(".") and path.is_file()
    }
    nnunet = strict or any(stem.endswith(CHANNEL_SUFFIX) for stem in stems.values())
    images: dict[str, Path] = {}
    channels: list[tuple[Path, str, str]] = []
    for path, stem in stems.items():
        match = _CHANNEL.match(stem)
        if strict and not stem.endswith(CHANNEL_SUFFIX):
            raise InputError(
                path, f"expected <case>{CHANNEL_SUFFIX}{file_ending} (one CT channel, nnU-Net naming); got another name"
            )
        if nnunet and match and match["channel"] != CHANNEL_SUFFIX[1:]:
            channels.append((path, match["case"], match["channel"]))
            continue
        name = stem.removesuffix(CHANNEL_SUFFIX)
        if name in images:
            raise InputError(path, f"maps to the same case {name!r} as {images[name].name}")
        images[name] = path
    for path, case, channel in channels:
        ct = f"{case}{CHANNEL_SUFFIX}{file_ending}"
        if case in images:
            warn_input(path, f"channel {channel} of case {case!r} ignored: selflabel reads one CT channel ({ct})")
        else:
            warn_input(path, f"skipped: channel {channel} of case {case!r}, which has no {ct} (the CT channel "
                       f"selflabel reads); rename the file to {ct} if it is the CT")  # fmt: skip
    return dict(sorted(images.items()))


def list_cases(
    image_dir: str | Path, label_dir: str | Path | None = None, file_ending: str = ".nii.gz", strict: bool = False
) -> list[Case]:
    """Cases of an image folder (`image_files`), paired with labels by name when `label_dir` is given.

    Image files may be named ``<case>_0000<ending>`` (nnU-Net) or, for any folder of unlabelled scans,
    plain ``<case><ending>``. With `label_dir`, every image needs its label and every label its image.
    """
    images = image_files(image_dir, file_ending, "image", strict)
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


def list_scans(folder: str | Path, file_ending: str = ".nii.gz") -> list[Case]:
    """The scans of an input folder of `predict`/`pseudolabel`, as unlabelled cases sorted by name; a single NIfTI
    file given instead of a folder is the one scan.

    A scan is a NIfTI file (`image_files`: ``<case>_0000<ending>`` or ``<case><ending>``, case = the name less
    those) or a DICOM series: each subfolder holding DICOM files directly is one (case = the subfolder's name),
    and a folder that itself holds DICOM files is one series (case = the folder's name). A case's ``image`` is the
    file or the series folder; `read_image` reads either. Raises InputError naming the folder when it holds no
    scan (the wrong folder, almost always), or mixes a series' own files with other scans.
    """
    from selflabel.io.dicom import holds_dicom

    folder = Path(folder)
    if folder.is_file():
        if not folder.name.endswith(file_ending):
            raise InputError(folder, f"not a {file_ending} file: give a NIfTI scan, a folder of scans or of a series")
        return [Case(case_name(folder, file_ending), folder)]
    if not folder.is_dir():
        raise InputError(folder, "input folder not found")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    series = [p for p in subfolders if holds_dicom(p)]
    if holds_dicom(folder):
        niftis = sorted(p.name for p in folder.glob(f"*{file_ending}") if not p.name.startswith("."))
        if niftis or series:
            other = niftis[0] if niftis else f"series folder {series[0].name}/"
            raise InputError(folder, f"holds the files of a DICOM series and also {other}; give a folder of one "
                             "series, of series folders, or of NIfTI scans")  # fmt: skip
        return [Case(folder.name, folder)]
    cases = {name: Case(name, path) for name, path in image_files(folder, file_ending, "input").items()}
    for sub in series:
        if sub.name in cases:
            raise InputError(sub, f"series folder has the case name of {cases[sub.name].image.name}; rename one")
        cases[sub.name] = Case(sub.name, sub)
    if not cases:
        looked = f"<case>_0000{file_ending} or <case>{file_ending} files and DICOM series (one per subfolder, or "
        looked += "the folder itself)"
        raise InputError(folder, f"no scans found (looked for {looked}){_where_scans_are(folder)}")
    for sub in subfolders:
        if sub not in series and any(p.is_file() for p in sub.iterdir()):
            warn_input(sub, "skipped: holds no DICOM files (folders inside series folders are not searched)")
    return sorted(cases.values(), key=lambda case: case.name)


def _where_scans_are(folder: Path) -> str:
    """A hint for a folder without scans: the dataset it is, or its subfolder that holds NIfTI files."""
    if (folder / "dataset.json").is_file():
        return "; this is an nnU-Net dataset: give its imagesTs/ or unlabeledTr/"
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(sub.glob("*.nii*")):
            return f"; {sub.name}/ holds NIfTI files: give that folder"
    return ""


def _index_ranges(values: list[int]) -> str:
    """``[0, 1, 2, 3, 5, 6]`` -> ``"0-3, 5-6"``."""
    parts, start = [], None
    for i, value in enumerate(values):
        if start is None:
            start = value
        if i + 1 == len(values) or values[i + 1] != value + 1:
            parts.append(f"{start}-{value}" if value != start else f"{value}")
            start = None
    return ", ".join(parts)


def _parse_labels(path: Path, raw: object) -> tuple[dict[str, int], bool]:
    """dataset.json's 'labels' as name -> index; True when it was nnU-Net v1's index -> name (then inverted).

    Indices must be distinct, start at background 0 and follow one another (nnU-Net's rule): a gap would be a
    class never trained and, in reports, an organ scored "both empty" on every case.
    """
    if not isinstance(raw, dict) or not raw:
        raise InputError(path, "'labels' must be a non-empty mapping of name to index")
    inverted = all(str(k).strip().isdigit() for k in raw) and all(isinstance(v, str) for v in raw.values())
    if inverted:  # nnU-Net v1 / MSD: {"0": "background", "1": "liver"}
        names = list(raw.values())
        if len(set(names)) != len(names):
            raise InputError(path, "'labels' (index -> name, nnU-Net v1) gives one name to several indices")
        raw = {str(v): int(k) for k, v in raw.items()}
    labels: dict[str, int] = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(path, f"label {name!r} must map to one integer index, got {value!r} (regions unsupported)")
        labels[str(name)] = value
    if 0 not in labels.values():
        raise InputError(path, "'labels' needs a background entry with index 0")
    if len(set(labels.values())) != len(labels) or max(labels.values()) > 254 or min(labels.values()) < 0:
        raise InputError(path, "label indices must be distinct and in 0..254")
    values = sorted(labels.values())
    missing = sorted(set(range(values[-1] + 1)) - set(values))
    if missing:
        shown = ", ".join(map(str, missing))
        raise InputError(
            path, f"label indices must follow one another from 0, as nnU-Net requires; index {shown} missing "
            f"(labels {_index_ranges(values)}): renumber the labels here and in the label files"
        )  # fmt: skip
    return labels, inverted


def _read_meta(meta_path: Path) -> dict:
    """dataset.json as a dict with a 'labels' entry."""
    if not meta_path.is_file():
        raise InputError(meta_path, "missing; an nnU-Net raw dataset needs it, with 'labels' and 'file_ending'")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(meta_path, f"not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or "labels" not in meta:
        raise InputError(meta_path, "has no 'labels' mapping")
    return meta


def _warn_other_organs(meta_path: Path, labels: dict[str, int]) -> None:
    """One warning line when a label is not scored as the FLARE22 organ its name names (an unknown name, or a second
    name for one organ): say how it will be scored."""
    organs = {o.index: o for o in organs_for(labels)}
    other = [  # an unknown name has no FLARE22 organ (None), a second name is scored under another
        (name, organs[index]) for name, index in labels.items()
        if index and getattr(flare_organ(name), "name", None) != organs[index].name
    ]  # fmt: skip
    if not other:
        return
    said = "; ".join(
        f"{name!r} ({o.index}) as FLARE22's {o.name}" if o.name != name else f"{name!r} ({o.index}) as its own organ"
        for name, o in other
    )
    warn_input(
        meta_path, f"labels not among FLARE22's organ names are scored {said} (an own organ: NSD tolerance "
        f"{OTHER_TOLERANCE_MM:g} mm, no contrast-phase simulation)"
    )  # fmt: skip


def read_label_map(path: str | Path) -> dict[str, int]:
    """The label map (name -> index) of a dataset.json, or of the dataset.json in a dataset folder."""
    path = Path(path)
    meta_path = path / "dataset.json" if path.is_dir() else path
    return _parse_labels(meta_path, _read_meta(meta_path)["labels"])[0]


def load_dataset(root: str | Path) -> Dataset:
    """Discover an nnU-Net raw dataset: dataset.json, imagesTr/labelsTr, imagesTs[/labelsTs], unlabeledTr.

    nnU-Net v1's dataset.json ("modality", labels index -> name, no "file_ending") is read as v2 with one warning
    line naming the file and what was converted.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "dataset folder not found")
    meta_path = root / "dataset.json"
    meta = _read_meta(meta_path)
    labels, inverted = _parse_labels(meta_path, meta["labels"])
    _warn_other_organs(meta_path, labels)
    converted = []
    if "channel_names" in meta:
        channels = meta["channel_names"]
    elif "modality" in meta:
        channels = meta["modality"]
        converted.append(f'"modality" read as channel_names {json.dumps(channels)}')
    else:
        channels = {"0": "CT"}
        converted.append('no "channel_names": read as {"0": "CT"}')
    if not isinstance(channels, dict) or not channels:
        raise InputError(meta_path, 'channel_names must map "0" to the channel\'s name, e.g. {"0": "CT"}')
    if len(channels) > 1:
        raise InputError(meta_path, f"selflabel segments single-channel CT; channel_names lists {len(channels)}")
    if inverted:
        converted.append(f"labels index -> name inverted to name -> index ({len(labels)} labels)")
    if "file_ending" in meta:
        ending = str(meta["file_ending"])
    else:
        ending = ".nii.gz"
        converted.append('no "file_ending": read as ".nii.gz"')
    if converted:
        version = "nnU-Net v1 format" if "modality" in meta or inverted else "incomplete nnU-Net v2 format"
        warn_input(meta_path, f"{version}, read as v2: {'; '.join(converted)}; write it in v2 form to silence this")
    dataset = Dataset(root, labels, ending)
    for images, label_dir in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        if (root / label_dir).is_dir() and not (root / images).is_dir():  # e.g. a misspelt folder: cases lost
            raise InputError(root / label_dir, f"holds labels, but {images}/ is missing beside it")
    if (root / "imagesTr").is_dir():
        dataset.training = list_cases(root / "imagesTr", root / "labelsTr", ending, strict=True)
    if (root / "imagesTs").is_dir():
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
