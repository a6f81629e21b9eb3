"""CT numbers of a painted phantom: contrast phase, per-patient tissue HU, texture, noise and blur."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from selflabel.phantom.draws import normal, smooth_noise, uniform
from selflabel.phantom.shapes import Grid
from selflabel.phantom.tissue import HU, NO_ENHANCEMENT, Tissue

PHASES: tuple[str, str, str] = ("non-contrast", "arterial", "portal-venous")
#: Gaussian blur kernels are cut at this many standard deviations.
_TRUNCATE = 2.5


@dataclass(frozen=True)
class Acquisition:
    """How a case was scanned: phase (index into PHASES), enhancement factor, noise (HU) and blur (voxels, x y z)."""

    phase: int
    enhancement: float
    noise_hu: float
    blur_voxels: tuple[float, float, float]


def render(
    rng: np.random.Generator, grid: Grid, tissue: np.ndarray, phase_name: str | None, body_half_width: float
) -> tuple[np.ndarray, Acquisition]:
    """CT image of a tissue map (x, y, z): int16 HU in [-1024, 3071], and how it was acquired.

    The phase is drawn (25% plain, 25% arterial, 50% portal-venous) even when `phase_name` forces it, so that the
    rest of a seed's draws stay the same. Noise grows with the body width (mm).
    """
    phase = int(rng.choice(3, p=[0.25, 0.25, 0.5]))
    if phase_name is not None:
        phase = PHASES.index(phase_name)
    enhancement = uniform(rng, 0.75, 1.25)
    hu = _tissue_hu(rng, grid, tissue, phase, enhancement)
    noise_hu = uniform(rng, 6, 22) * (body_half_width / 160.0)
    s_xy = uniform(rng, 0.5, 0.9)
    sigma = (s_xy, s_xy, uniform(rng, 0.3, 0.6))
    image = _noise_and_blur(rng, hu, noise_hu, sigma)
    return image, Acquisition(phase, enhancement, noise_hu, sigma)


def _tissue_hu(rng: np.random.Generator, grid: Grid, tissue: np.ndarray, phase: int, enhancement: float) -> np.ndarray:
    """Noise-free float32 HU (x, y, z): each tissue's mean plus its low-frequency texture (~6 mm features)."""
    mean, amp = _hu_table(rng, phase, enhancement)
    tex = smooth_noise(rng, grid.shape, 6.0 / float(grid.spacing[0]))
    hu = np.take(amp, tissue)
    hu *= tex
    hu += np.take(mean, tissue)
    if phase == 1:  # arterial: unopacified blood from the legs in the infrarenal IVC
        ivc_low = (tissue == Tissue.IVC) & (grid.axes[2][None, None, :] < 0)
        hu[ivc_low] -= 25
    return hu


def _hu_table(rng: np.random.Generator, phase: int, enhancement: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-tissue mean HU and texture amplitude (HU) for this patient, indexed by `Tissue` value."""
    n = max(t.value for t in Tissue) + 1
    mean = np.zeros(n, np.float32)
    amp = np.zeros(n, np.float32)
    for tissue, (plain, arterial, portal, texture) in HU.items():
        value = (plain, arterial, portal)[phase]
        if tissue not in NO_ENHANCEMENT:
            value = plain + enhancement * (value - plain)
        if tissue not in (Tissue.AIR, Tissue.GAS):
            value += normal(rng, 4.0)
        mean[tissue] = value
        amp[tissue] = texture
    if phase == 1:
        amp[Tissue.SPLEEN] = 30.0  # arterial-phase moire
    mean[Tissue.BONE_MARROW] += normal(rng, 30)  # age
    mean[Tissue.ORAL_CONTRAST] += normal(rng, 60)
    return mean, amp


def _noise_and_blur(
    rng: np.random.Generator, hu: np.ndarray, noise_hu: float, sigma: tuple[float, float, float]
) -> np.ndarray:
    """Partial volume and correlated noise: blur (image + white noise) once, noise scaled to `noise_hu` after blur.

    hu: float32 (x, y, z), overwritten. sigma: Gaussian blur per axis, voxels. Returns int16 HU.
    """
    gain = float(np.prod([np.sqrt((_gaussian_weights(s, _TRUNCATE) ** 2).sum()) for s in sigma]))
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    noise *= np.float32(noise_hu / gain)
    hu += noise
    ndi.gaussian_filter(hu, sigma, truncate=_TRUNCATE, mode="nearest", output=noise)
    np.rint(noise, out=noise)
    return np.clip(noise, -1024, 3071).astype(np.int16)


def _gaussian_weights(sigma: float, truncate: float) -> np.ndarray:
    """The normalised 1-D kernel scipy's gaussian_filter uses for `sigma` (voxels) cut at `truncate` sigmas."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2) if sigma > 0 else (x == 0).astype(float)
    return w / w.sum()
