"""One synthetic case: anatomy, grid, body, organs and CT numbers, drawn again until every organ is visible."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selflabel.errors import SelflabelError
from selflabel.labels import FLARE22_LABELS, FLARE22_ORGANS
from selflabel.phantom.anatomy import sample_anatomy, sample_grid
from selflabel.phantom.body import paint_body
from selflabel.phantom.draws import normal, uniform
from selflabel.phantom.intensity import PHASES, render
from selflabel.phantom.organs import paint_organs
from selflabel.phantom.shapes import Canvas

#: A labelled case must hold at least this many voxels of every organ (else it is drawn again).
MIN_ORGAN_VOXELS = 8
#: Smallest grid that still holds every organ (adrenals, esophagus) with a few voxels.
MIN_SIZE, MIN_SLICES = 80, 24


@dataclass
class PhantomCase:
    """One synthetic case.

    image: int16 HU, shape (x, y, z). label: uint8 FLARE22 indices, same shape. tissue: uint8 `Tissue` per voxel.
    affine: 4x4 voxel -> world mm (RAS+, diagonal: x right, y anterior, z superior).
    meta: JSON-ready facts (phase, noise, spacing, body size, organ voxel counts, attempts).
    """

    image: np.ndarray
    label: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along x, y, z."""
        return tuple(float(s) for s in np.diag(self.affine)[:3])


def make_case(
    rng: np.random.Generator | int | np.random.SeedSequence,
    size: int = 192,
    slices: int = 64,
    slice_jitter: float = 0.15,
    phase: str | None = None,
    max_attempts: int = 5,
) -> PhantomCase:
    """Make one synthetic abdominal CT with its 13-organ FLARE22 label map.

    Args:
        rng: a numpy Generator (consumed), or a seed / SeedSequence for a fresh one.
        size: in-plane grid (size x size voxels); the field of view follows the body, so spacing varies (mm).
        slices: nominal number of axial slices; each case draws within +-`slice_jitter` of it.
        slice_jitter: relative spread of the slice count (0 gives exactly `slices`).
        phase: force a contrast phase (one of PHASES); None draws it (25% plain, 25% arterial, 50% portal-venous).
            The anatomy of a seed is the same whatever the phase.
        max_attempts: a case whose organs are not all visible (>= MIN_ORGAN_VOXELS each) is drawn again.

    Returns:
        PhantomCase with image int16 HU (x, y, z), label uint8 (x, y, z), tissue map, RAS affine and meta.

    Raises:
        SelflabelError: for a grid too small for the small organs (size < 80 or slices < 24), or an unknown phase.
    """
    if phase is not None and phase not in PHASES:
        raise SelflabelError(f"unknown contrast phase {phase!r}; expected one of {PHASES}")
    if size < MIN_SIZE or size > 1024:
        raise SelflabelError(f"phantom size {size} is outside {MIN_SIZE}..1024 voxels (small organs need the room)")
    if slices < MIN_SLICES or slices > 1024:
        raise SelflabelError(f"phantom slices {slices} is outside {MIN_SLICES}..1024 (small organs need the room)")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    attempts = 0
    while True:
        attempts += 1
        case = _draw_case(rng, size, slices, slice_jitter, phase)
        if min(case.meta["organ_voxels"].values()) >= MIN_ORGAN_VOXELS or attempts >= max_attempts:
            break
    case.meta["attempts"] = attempts
    return case


def _draw_case(
    rng: np.random.Generator, size: int, slices: int, slice_jitter: float, phase_name: str | None
) -> PhantomCase:
    """One draw of a case (the organs may be clipped by the grid)."""
    an = sample_anatomy(rng)
    grid = sample_grid(rng, an, size, slices, slice_jitter)
    canvas = Canvas(grid.shape)
    masks = paint_body(rng, grid, an, canvas)
    paint_organs(rng, grid, an, canvas, masks)
    image, scan = render(rng, grid, canvas.tissue, phase_name, an.body_half_width)

    offset = np.array([normal(rng, 20), normal(rng, 20), uniform(rng, -400, 100)])  # scanner origin, mm
    affine = np.eye(4)
    affine[:3, :3] = np.diag(grid.spacing)
    affine[:3, 3] = grid.origin + offset
    counts = np.bincount(canvas.label.ravel(), minlength=len(FLARE22_LABELS))
    meta = {
        "phase": PHASES[scan.phase],
        "enhancement": round(scan.enhancement, 3),
        "noise_hu": round(scan.noise_hu, 2),
        "blur_voxels": [round(s, 3) for s in scan.blur_voxels],
        "shape": list(grid.shape),
        "spacing_mm": [round(float(s), 4) for s in grid.spacing],
        "body_width_mm": round(2 * an.body_half_width, 1),
        "subcutaneous_fat_mm": round(an.fat_thickness, 1),
        "organ_voxels": {organ.name: int(counts[organ.index]) for organ in FLARE22_ORGANS},
    }
    return PhantomCase(image, canvas.label, canvas.tissue, affine, meta)
