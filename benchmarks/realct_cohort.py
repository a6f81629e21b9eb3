"""A semi-synthetic cohort from the one real CT of ../shared: every case is that scan, changed reproducibly.

    python benchmarks/realct_cohort.py OUT --labeled 4 --unlabeled 24 --test 8 --seed 0
    python benchmarks/realct_cohort.py OUT --labeled 2 --unlabeled 0 --test 2 --preview /tmp/realct.png

Source: ``totalsegmentator_example/original/example_ct.nii.gz`` (122x101x112 voxels at 3 mm, RAS, non-contrast)
with its FLARE22 labels ``flare13/example_ct_label_flare13.nii.gz`` (model-made; no esophagus). Each case is drawn
from its own generator seeded from ``(seed, split, index)`` (a case does not depend on how many others are made)
and made in this order:

1. **Field of view**: a z-crop keeping 55-100 % of the slices at a random position (among the positions that keep
   >= 85 % of the organs' axial extent, so that a case still shows the abdomen); in-plane, either air padding
   (-1000 HU) on random sides up to 1.6x the width, or a crop inside the air around the body.
2. **Grid**: in-plane voxels of 2.2-3.4 mm and slices of 2.5-4 mm; the affine keeps the source's orientation and
   puts the origin where the new first voxel's centre lies in the world.
3. **Anatomy**: an in-plane rotation (+-8 deg) and scale (+-10 %) about the field's centre, plus a smooth random
   3D displacement (Gaussian-weighted sum over a coarse 5x5x4 control grid, peak 3-12 mm); `--anatomy F` widens
   all three ranges F-fold (F = 2: +-16 deg, +-20 %, 6-24 mm), for cohorts of more varied build. Image linear, labels
   nearest neighbour, both through the same source coordinates (`scipy.ndimage.map_coordinates`); outside the
   scan in-plane is air, beyond its first/last slice the edge slice repeats.
4. **Contrast phase** (non-contrast, arterial, portal-venous, delayed): per-organ HU offsets inside the deformed
   labels (kidneys: cortex <= 6 mm from the border vs medulla), times a per-patient enhancement factor 0.8-1.2,
   applied to soft tissue only (gas, fat and bone inside a label stay), the offset map blurred by a 1-voxel
   Gaussian so edges are not label-perfect. Vessels outside the label map stay unenhanced.
5. **Acquisition**: a Gaussian blur of sigma 0-0.8 voxel, then Gaussian noise of sd 5-25 HU; int16 HU.

Writes the nnU-Net v2 raw layout of `selflabel demo-data` (dataset.json with the FLARE22 labels, imagesTr/labelsTr,
unlabeledTr, imagesTs/labelsTs) and cohort.json (parameters and per-case facts). A folder holding the same cohort
is reused; one holding another cohort from here has its case files replaced; any other non-empty folder is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from selflabel.errors import InputError, SelflabelError
from selflabel.io import read_image, read_label, write_dataset_json, write_nifti
from selflabel.labels import FLARE22_LABELS
from selflabel.phantom import case_files

#: Bump when what a seed produces changes (a cohort.json with another version is rewritten).
VERSION = 1
SPLITS: tuple[str, str, str] = ("labeled", "unlabeled", "test")
PHASES: tuple[str, str, str, str] = ("non-contrast", "arterial", "portal-venous", "delayed")
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator_example"
IMAGE_FILE = Path("original") / "example_ct.nii.gz"
LABEL_FILE = Path("flare13") / "example_ct_label_flare13.nii.gz"
COHORT_FILE = "cohort.json"
AIR_HU = -1000.0

_L = FLARE22_LABELS
#: Label values enhanced together, by the names of `PHASE_OFFSETS`; the kidneys split into cortex and medulla.
GROUPS: dict[str, tuple[int, ...]] = {
    "liver": (_L["liver"],),
    "spleen": (_L["spleen"],),
    "pancreas": (_L["pancreas"],),
    "aorta": (_L["aorta"],),
    "ivc": (_L["inferior_vena_cava"],),
    "adrenal": (_L["right_adrenal_gland"], _L["left_adrenal_gland"]),
    "gut": (_L["stomach"], _L["duodenum"], _L["esophagus"]),
}
KIDNEYS: tuple[int, int] = (_L["right_kidney"], _L["left_kidney"])
#: Kidney voxels at most this far (mm) from the kidney's border are cortex.
CORTEX_MM = 6.0
#: HU offset ranges (low, high) per phase; one value is drawn per case and group. Gallbladder (bile) never enhances.
PHASE_OFFSETS: dict[str, dict[str, tuple[float, float]]] = {
    "non-contrast": {},
    "arterial": {
        "aorta": (200, 300), "ivc": (10, 40), "kidney_cortex": (100, 150), "kidney_medulla": (20, 40),
        "spleen": (60, 90), "liver": (15, 30), "pancreas": (50, 80), "adrenal": (30, 50), "gut": (20, 40),
    },
    "portal-venous": {
        "aorta": (120, 160), "ivc": (100, 130), "kidney_cortex": (120, 150), "kidney_medulla": (100, 130),
        "spleen": (70, 90), "liver": (50, 70), "pancreas": (40, 60), "adrenal": (25, 45), "gut": (20, 40),
    },
    "delayed": {
        "aorta": (40, 60), "ivc": (40, 60), "kidney_cortex": (60, 90), "kidney_medulla": (60, 90),
        "spleen": (30, 45), "liver": (25, 40), "pancreas": (20, 35), "adrenal": (15, 25), "gut": (10, 20),
    },
}  # fmt: skip
#: Coarse control grid of the displacement field (x, y, z points across the output grid).
CONTROL_GRID: tuple[int, int, int] = (5, 5, 4)


@dataclass(frozen=True)
class Source:
    """The real scan: image (x, y, z) float32 HU clipped to >= -1024, label uint8, 4x4 RAS affine, spacing (mm)."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def organ_z(self) -> tuple[int, int]:
        """First and last slice holding any label."""
        z = np.flatnonzero(self.label.any(axis=(0, 1)))
        return int(z[0]), int(z[-1])

    @property
    def body_box(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """In-plane voxel bounds [lo, hi) of everything denser than -500 HU (body and table), x then y."""
        dense = (self.image > -500).any(axis=2)
        xs, ys = np.flatnonzero(dense.any(axis=1)), np.flatnonzero(dense.any(axis=0))
        return (int(xs[0]), int(xs[-1]) + 1), (int(ys[0]), int(ys[-1]) + 1)


def load_source(source_dir: str | Path = DEFAULT_SOURCE) -> Source:
    """Read the example CT and its FLARE22 labels. Raises InputError naming a missing or mismatched file."""
    root = Path(source_dir)
    image, label = read_image(root / IMAGE_FILE), read_label(root / LABEL_FILE, FLARE22_LABELS.values())
    if image.array.shape != label.array.shape or not np.allclose(image.affine, label.affine, atol=1e-3):
        raise InputError(root / LABEL_FILE, "grid differs from the CT's")
    return Source(np.maximum(image.array, -1024.0), label.array, image.affine, image.spacing)


@dataclass(frozen=True)
class CaseParams:
    """Everything that makes one case, in source voxel units unless said otherwise.

    z_keep: source slices [lo, hi) kept. x_box, y_box: in-plane source voxel bounds [lo, hi) of the field of view
    (may reach beyond the scan: air). spacing: output voxel size (mm, x y z). angle_deg, scale: in-plane rotation
    and scale of the anatomy. control: (3, *CONTROL_GRID) displacement control values (mm). phase, offsets (HU per
    group of `PHASE_OFFSETS`, the enhancement factor applied), noise_sd (HU), blur_sigma (output voxels).
    """

    z_keep: tuple[int, int]
    x_box: tuple[int, int]
    y_box: tuple[int, int]
    spacing: tuple[float, float, float]
    angle_deg: float = 0.0
    scale: float = 1.0
    control: np.ndarray | None = field(default=None, compare=False)
    phase: str = "non-contrast"
    enhancement: float = 1.0
    offsets: dict[str, float] = field(default_factory=dict)
    noise_sd: float = 0.0
    blur_sigma: float = 0.0

    def meta(self) -> dict[str, Any]:
        """JSON-friendly facts for cohort.json (the control grid summarised by its peak in mm)."""
        record = {k: v for k, v in asdict(self).items() if k != "control"}
        peak = 0.0 if self.control is None else float(np.sqrt((self.control**2).sum(axis=0)).max())
        record["displacement_peak_mm"] = round(peak, 2)
        return record


def identity_params(source: Source) -> CaseParams:
    """Parameters that reproduce the source exactly (a check of the geometry)."""
    nx, ny, nz = source.image.shape
    return CaseParams((0, nz), (0, nx), (0, ny), source.spacing)


def case_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of case `index` (1-based) of `split`, independent of every other case."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS.index(split), int(index), 0x5EA1]))


def draw_params(rng: np.random.Generator, source: Source, anatomy: float = 1.0) -> CaseParams:
    """Draw one case's parameters (the draw order is part of what a seed means: append, never reorder).

    anatomy: widens the ranges of rotation, scale and displacement by this factor (1: the cohort of VERSION 1).
    """
    nx, ny, nz = source.image.shape
    # z-crop: 55-100 % of the slices, at a position keeping >= 85 % of the organs' axial extent
    keep = int(round(rng.uniform(0.55, 1.0) * nz))
    lo_org, hi_org = source.organ_z[0], source.organ_z[1] + 1
    need = 0.85 * (hi_org - lo_org)
    starts = [s for s in range(nz - keep + 1) if min(s + keep, hi_org) - max(s, lo_org) >= need]
    start = int(rng.choice(starts)) if starts else (nz - keep) // 2
    # in-plane field of view: pad with air (70 %) or crop inside the air around the body
    boxes = []
    body = source.body_box
    pad = rng.uniform() < 0.7
    for n, (b_lo, b_hi) in zip((nx, ny), body, strict=True):
        if pad:
            extra = int(round(rng.uniform(0.0, 0.6) * n))
            left = int(round(rng.uniform() * extra))
            boxes.append((-left, n + extra - left))
        else:
            boxes.append((int(rng.integers(0, b_lo + 1)), n - int(rng.integers(0, n - b_hi + 1))))
    spacing_xy = float(rng.uniform(2.2, 3.4))
    spacing = (round(spacing_xy, 3), round(spacing_xy, 3), round(float(rng.uniform(2.5, 4.0)), 3))
    angle, scale = (
        float(rng.uniform(-8 * anatomy, 8 * anatomy)),
        float(rng.uniform(1 - 0.1 * anatomy, 1 + 0.1 * anatomy)),
    )
    control = rng.normal(size=(3, *CONTROL_GRID))
    control *= rng.uniform(3.0 * anatomy, 12.0 * anatomy) / np.sqrt((control**2).sum(axis=0)).max()
    phase = PHASES[int(rng.integers(len(PHASES)))]
    factor = float(rng.uniform(0.8, 1.2))
    ranges = PHASE_OFFSETS[phase]
    offsets = {k: round(factor * float(rng.uniform(*ranges[k])), 1) for k in sorted(ranges)}
    return CaseParams(
        z_keep=(start, start + keep), x_box=boxes[0], y_box=boxes[1], spacing=spacing,
        angle_deg=round(angle, 2), scale=round(scale, 4), control=control, phase=phase,
        enhancement=round(factor, 3), offsets=offsets, noise_sd=round(float(rng.uniform(5, 25)), 2),
        blur_sigma=round(float(rng.uniform(0, 0.8)), 3),
    )  # fmt: skip


def _grid(params: CaseParams, source: Source) -> tuple[tuple[int, int, int], np.ndarray, list[np.ndarray]]:
    """Output shape, affine and per-axis output voxel centres in source voxel coordinates."""
    bounds = (params.x_box, params.y_box, params.z_keep)
    shape, centres = [], []
    for (lo, hi), s_out, s_src in zip(bounds, params.spacing, source.spacing, strict=True):
        step = s_out / s_src
        n = max(1, int(round((hi - lo) / step)))
        shape.append(n)
        centres.append(lo - 0.5 + (np.arange(n) + 0.5) * step)
    linear = source.affine[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = linear @ np.diag(np.array(params.spacing) / np.array(source.spacing))
    affine[:3, 3] = linear @ np.array([c[0] for c in centres]) + source.affine[:3, 3]
    return tuple(shape), affine, centres


def _smooth_basis(n: int, points: int) -> np.ndarray:
    """(n, points) normalised Gaussian weights of `points` control points spread evenly over n voxels."""
    pos = np.linspace(0.0, 1.0, points)
    t = (np.arange(n) + 0.5) / n
    width = 1.0 / max(points - 1, 1)
    w = np.exp(-0.5 * ((t[:, None] - pos[None, :]) / width) ** 2)
    return w / w.sum(axis=1, keepdims=True)


def _displacement(control: np.ndarray, shape: Sequence[int], box: Sequence[slice]) -> np.ndarray:
    """(3, *box shape) float32 displacement (mm) on the output voxels of `box`: a tensor product of smooth bases."""
    bases = [_smooth_basis(n, p)[b] for n, p, b in zip(shape, control.shape[1:], box, strict=True)]
    out = np.einsum("cabk,xa->cxbk", control, bases[0])
    out = np.einsum("cxbk,yb->cxyk", out, bases[1])
    return np.einsum("cxyk,zk->cxyz", out, bases[2]).astype(np.float32)


def _content_box(params: CaseParams, source: Source, centres: list[np.ndarray], shape: Sequence[int]) -> list[slice]:
    """Output in-plane voxels that can sample the scan (the rest is air); every slice."""
    margin = 14.0 / min(source.spacing)  # displacement peak and rounding, in source voxels
    nx, ny = source.image.shape[:2]
    centre = np.array([(params.x_box[0] + params.x_box[1] - 1) / 2, (params.y_box[0] + params.y_box[1] - 1) / 2])
    # forward map of the scan's corners into the output frame (the inverse of the sampling map)
    corners = np.array([[x, y] for x in (-0.5, nx - 0.5) for y in (-0.5, ny - 0.5)]) - centre
    a = math.radians(params.angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    s = np.array(source.spacing[:2])
    mapped = (rot @ (corners * s).T).T * params.scale / s + centre
    box = []
    for axis in range(2):
        lo, hi = mapped[:, axis].min() - margin, mapped[:, axis].max() + margin
        inside = np.flatnonzero((centres[axis] >= lo) & (centres[axis] <= hi))
        box.append(slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0))
    return [*box, slice(0, shape[2])]


def _sample_coords(
    params: CaseParams, source: Source, centres: list[np.ndarray], shape: Sequence[int], box: Sequence[slice]
) -> np.ndarray:
    """(3, *box shape) source voxel coordinates sampled by the output voxels of `box`."""
    cx, cy, cz = (c[b] for c, b in zip(centres, box, strict=True))
    s = np.array(source.spacing, dtype=np.float64)
    centre = np.array([(params.x_box[0] + params.x_box[1] - 1) / 2, (params.y_box[0] + params.y_box[1] - 1) / 2])
    qx, qy = (cx - centre[0]) * s[0], (cy - centre[1]) * s[1]  # mm from the rotation centre
    a = math.radians(params.angle_deg)
    ca, sa = math.cos(a) / params.scale, math.sin(a) / params.scale
    coords = np.empty((3, cx.size, cy.size, cz.size), dtype=np.float32)
    coords[0] = ((ca * qx[:, None] + sa * qy[None, :]) / s[0] + centre[0])[:, :, None]
    coords[1] = ((-sa * qx[:, None] + ca * qy[None, :]) / s[1] + centre[1])[:, :, None]
    coords[2] = cz[None, None, :]
    if params.control is not None:
        coords += _displacement(params.control, shape, box) / s[:, None, None, None].astype(np.float32)
    np.clip(coords[2], 0, source.image.shape[2] - 1, out=coords[2])  # edge slices repeat beyond the scan
    return coords


def _enhancement(label: np.ndarray, params: CaseParams, spacing: Sequence[float]) -> np.ndarray:
    """Float32 HU offset map of the phase: per-group offsets inside the labels, blurred by one voxel."""
    offsets = np.zeros(label.shape, dtype=np.float32)
    if not params.offsets:
        return offsets
    table = np.zeros(256, dtype=np.float32)
    for group, values in GROUPS.items():
        table[list(values)] = params.offsets.get(group, 0.0)
    offsets = table[label]
    for kidney in KIDNEYS:
        mask = label == kidney
        if not mask.any():
            continue
        box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(mask))
        depth = ndi.distance_transform_edt(np.pad(mask[box], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        cortex = params.offsets.get("kidney_cortex", 0.0)
        medulla = params.offsets.get("kidney_medulla", 0.0)
        offsets[box][mask[box]] = np.where(depth[mask[box]] <= CORTEX_MM, cortex, medulla)
    return ndi.gaussian_filter(offsets, 1.0)


def make_case(source: Source, params: CaseParams, rng: np.random.Generator | None = None) -> tuple:
    """Make one case. Returns (image int16 HU (x, y, z), label uint8, 4x4 affine); `rng` draws the noise."""
    shape, affine, centres = _grid(params, source)
    box = tuple(_content_box(params, source, centres, shape))
    image = np.full(shape, AIR_HU, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    if all(b.stop > b.start for b in box):
        coords = _sample_coords(params, source, centres, shape, box)
        image[box] = ndi.map_coordinates(source.image, coords, order=1, mode="constant", cval=AIR_HU)
        label[box] = ndi.map_coordinates(source.label, coords, order=0, mode="constant", cval=0)
    if params.offsets and label.any():
        where = zip(np.nonzero(label), shape, strict=True)
        organ_box = tuple(slice(max(int(i.min()) - 4, 0), min(int(i.max()) + 5, n)) for i, n in where)
        part = image[organ_box]
        soft = np.clip((part + 200.0) / 100.0, 0, 1) * np.clip((350.0 - part) / 100.0, 0, 1)
        part += soft * _enhancement(label[organ_box], params, params.spacing)
    if params.blur_sigma > 0:
        image = ndi.gaussian_filter(image, params.blur_sigma)
    if params.noise_sd > 0:
        rng = rng or np.random.default_rng(0)
        image += rng.normal(0.0, params.noise_sd, size=shape).astype(np.float32)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return image, label, affine


# ---- the cohort ----

_SOURCE: Source | None = None


def _worker_init(source_dir: str) -> None:
    global _SOURCE
    _SOURCE = load_source(source_dir)


def generate_case(
    source: Source, seed: int, split: str, index: int, anatomy: float = 1.0
) -> tuple[CaseParams, np.ndarray, ...]:
    """Case `index` of `split` in the cohort of `seed` (and `anatomy`, see `draw_params`): its parameters, image,
    label and affine (as `make_case`)."""
    rng = case_rng(seed, split, index)
    params = draw_params(rng, source, anatomy)
    return params, *make_case(source, params, rng)


def _make_and_write(job: tuple[str, int, int, str, float]) -> dict[str, Any]:
    """Worker: make case `index` of `split` and write it atomically; return its cohort.json entry."""
    split, index, seed, out, anatomy = job
    assert _SOURCE is not None  # set by _worker_init
    start = time.process_time()
    params, image, label, affine = generate_case(_SOURCE, seed, split, index, anatomy)
    name, image_path, label_path = case_files(Path(out), split, index)
    write_nifti(image_path, image, affine=affine)
    if label_path is not None:
        write_nifti(label_path, label, affine=affine)
    organs = {int(v): int(c) for v, c in zip(*np.unique(label, return_counts=True), strict=True) if v}
    return {"name": name, "split": split, "index": index, "shape": list(image.shape), **params.meta(),
            "organ_voxels": organs, "cpu_s": round(time.process_time() - start, 3)}  # fmt: skip


@dataclass
class CohortSummary:
    """What `write_cohort` made or found."""

    out_dir: Path
    cases: list[dict[str, Any]]
    seconds: float
    reused: bool = False

    def describe(self) -> str:
        """One line for the command line."""
        counts = {s: sum(c["split"] == s for c in self.cases) for s in SPLITS}
        xy = sorted(c["spacing"][0] for c in self.cases)
        zs = sorted(c["spacing"][2] for c in self.cases)
        shapes = np.array([c["shape"] for c in self.cases])
        phases = ", ".join(f"{p} {sum(c['phase'] == p for c in self.cases)}" for p in PHASES)
        cpu = np.mean([c["cpu_s"] for c in self.cases])
        return (
            f"realct: {'reused' if self.reused else 'wrote'} {len(self.cases)} cases ({counts['labeled']} labelled, "
            f"{counts['unlabeled']} unlabelled, {counts['test']} test) in {self.out_dir}: shapes "
            f"{shapes[:, 0].min()}-{shapes[:, 0].max()} x {shapes[:, 1].min()}-{shapes[:, 1].max()} x "
            f"{shapes[:, 2].min()}-{shapes[:, 2].max()}, voxels {xy[0]:.2f}-{xy[-1]:.2f} mm in-plane, "
            f"{zs[0]:.2f}-{zs[-1]:.2f} mm slices; {phases}; {cpu:.2f} s CPU per case, {self.seconds:.1f} s"
        )


def write_cohort(
    out_dir: str | Path,
    labeled: int,
    unlabeled: int,
    test: int,
    seed: int = 0,
    source_dir: str | Path = DEFAULT_SOURCE,
    workers: int = 2,
    anatomy: float = 1.0,
) -> CohortSummary:
    """Write the semi-synthetic cohort in the nnU-Net v2 raw layout (see the module docstring).

    Raises:
        SelflabelError: bad counts or anatomy factor. InputError: missing source, or `out_dir` holds data not made here.
    """
    from selflabel.atomic import atomic_write_json

    start = time.perf_counter()
    out = Path(out_dir)
    counts = {"labeled": labeled, "unlabeled": unlabeled, "test": test}
    if min(counts.values()) < 0 or sum(counts.values()) == 0:
        raise SelflabelError(f"--labeled/--unlabeled/--test must be >= 0 and not all 0, got {counts}")
    if not 0 < anatomy <= 3:  # at 3 the scale already spans 0.7-1.3 and the displacement 36 mm
        raise SelflabelError(f"--anatomy must be in (0, 3], got {anatomy}")
    source_dir = Path(source_dir)
    for path in (source_dir / IMAGE_FILE, source_dir / LABEL_FILE):
        if not path.is_file():
            raise InputError(path, "not found (the real CT example of ../shared/data)")
    # a factor of 1 is left out, so that a realct cohort written before the factor existed is still reused
    params = {"version": VERSION, "seed": seed, **counts, **({"anatomy": anatomy} if anatomy != 1.0 else {})}
    record = out / COHORT_FILE
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            old = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            raise InputError(out, f"is not empty and has no readable {COHORT_FILE} from realct_cohort") from None
        if old.get("generator") != "realct_cohort":
            raise InputError(record, "was not written by realct_cohort; choose a new or empty folder")
        if old.get("params") == params and old.get("complete"):
            files = [p for s in SPLITS for i in range(1, counts[s] + 1) for p in case_files(out, s, i)[1:] if p]
            if all(p.is_file() for p in files):
                return CohortSummary(out, old["cases"], time.perf_counter() - start, reused=True)
        for sub in ("imagesTr", "labelsTr", "unlabeledTr", "imagesTs", "labelsTs"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    header = {"generator": "realct_cohort", "params": params, "source": str(source_dir)}
    atomic_write_json(record, {**header, "complete": False, "cases": []})
    write_dataset_json(out, dict(FLARE22_LABELS), labeled, name="semi-synthetic cohort from one real CT")
    jobs = [(s, i, seed, str(out), anatomy) for s in SPLITS for i in range(1, counts[s] + 1)]
    workers = max(1, min(workers, len(jobs)))
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(str(source_dir),)) as pool:
            cases = list(pool.map(_make_and_write, jobs))
    else:
        _worker_init(str(source_dir))
        cases = [_make_and_write(job) for job in jobs]
    atomic_write_json(record, {**header, "complete": True, "cases": cases})
    return CohortSummary(out, cases, time.perf_counter() - start)


def save_preview(data_dir: str | Path, path: str | Path, cases: int = 4, slices: int = 4) -> None:
    """PNG of `slices` axial slices (organ region) with label overlay for the first `cases` labelled/test cases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = Path(data_dir)
    pairs = []
    for images, labels in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        found = sorted((data / labels).glob("*.nii.gz"))
        pairs += [(data / images / f"{p.name.removesuffix('.nii.gz')}_0000.nii.gz", p) for p in found]
    pairs = pairs[:cases]
    record = json.loads((data / COHORT_FILE).read_text())
    phase = {c["name"]: c["phase"] for c in record["cases"]}
    fig, axes = plt.subplots(len(pairs), slices, figsize=(3 * slices, 3 * len(pairs)), squeeze=False)
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, 14))
    for row, (image_path, label_path) in enumerate(pairs):
        image, label = read_image(image_path), read_label(label_path)
        z = np.flatnonzero(label.array.any(axis=(0, 1)))
        picks = np.linspace(z[0], z[-1], slices + 2)[1:-1].astype(int) if z.size else [label.array.shape[2] // 2]
        for col, k in enumerate(picks):
            ax = axes[row, col]
            # radiological view: anterior up, the patient's right (+x in RAS) on the left
            ax.imshow(image.array[::-1, ::-1, k].T, cmap="gray", vmin=-160, vmax=240)
            lab = label.array[::-1, ::-1, k].T
            overlay = colors[lab]
            overlay[..., 3] = np.where(lab > 0, 0.35, 0.0)
            ax.imshow(overlay)
            ax.contour(lab > 0, levels=[0.5], colors="yellow", linewidths=0.4)
            name = label_path.name.removesuffix(".nii.gz")
            ax.set_title(f"{name} {phase.get(name, '')} z={k}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the nnU-Net v2 raw dataset")
    parser.add_argument("--labeled", type=int, default=4)
    parser.add_argument("--unlabeled", type=int, default=24)
    parser.add_argument("--test", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="totalsegmentator_example folder")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--anatomy", type=float, default=1.0, help="widen rotation, scale and displacement F-fold")
    parser.add_argument("--preview", type=Path, help="also save a PNG of 4 labelled cases with label overlay")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        summary = write_cohort(
            args.out, args.labeled, args.unlabeled, args.test, args.seed, args.source, args.workers, args.anatomy
        )
        if args.preview:
            save_preview(args.out, args.preview)
    except SelflabelError as exc:
        print(f"realct_cohort: {exc}", file=sys.stderr)
        return 1
    print(summary.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
