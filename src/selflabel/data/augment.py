"""Augmentation: the paper's "random rotation and flip", and a strong set for the student (noisy student).

Small callables taking an explicit `numpy.random.Generator`. Spatial transforms map ``(image (C, H, W) float32,
label (H, W) uint8, rng)`` to a new pair, image and label moved together (a per-voxel weight map travels as an
extra image channel). Intensity transforms map ``(image, label, rng)`` to a new image and leave the label alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from selflabel.config import AugmentConfig

# ---- spatial ----


def _warp(image: torch.Tensor, label: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample by the 2x3 affine `theta` (output -> input, normalised coordinates): image bilinear, label nearest.

    Voxels that come from outside the slice take each channel's minimum and background.
    """
    grid = F.affine_grid(theta[None], [1, 1, *image.shape[-2:]], align_corners=False)
    low = image.amin(dim=(-2, -1), keepdim=True)
    warped = F.grid_sample((image - low)[None], grid, mode="bilinear", align_corners=False)[0] + low
    labels = F.grid_sample(label[None, None].float(), grid, mode="nearest", align_corners=False)[0, 0]
    return warped, labels.to(label.dtype)


@dataclass(frozen=True)
class RandomRot90Flip:
    """With probability `prob`, rotate by k*90 degrees (k uniform in 0..3) and flip along a random in-plane axis."""

    prob: float = 0.5

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator):
        if rng.random() >= self.prob:
            return image, label
        k = int(rng.integers(0, 4))
        axis = int(rng.integers(0, 2))
        image = torch.flip(torch.rot90(image, k, dims=(-2, -1)), dims=(-2 + axis,))
        label = torch.flip(torch.rot90(label, k, dims=(-2, -1)), dims=(-2 + axis,))
        return image, label


@dataclass(frozen=True)
class RandomRotate:
    """With probability `prob`, rotate in-plane by an angle uniform in [-degrees, degrees]."""

    prob: float = 0.5
    degrees: float = 20.0

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator):
        if rng.random() >= self.prob or self.degrees <= 0:
            return image, label
        angle = math.radians(float(rng.uniform(-self.degrees, self.degrees)))
        cos, sin = math.cos(angle), math.sin(angle)
        return _warp(image, label, torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=torch.float32))


@dataclass(frozen=True)
class RandomScale:
    """With probability `prob`, zoom about the centre by a factor uniform in [1 - amount, 1 + amount]."""

    prob: float = 0.3
    amount: float = 0.2

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator):
        if rng.random() >= self.prob or self.amount <= 0:
            return image, label
        inverse = 1.0 / float(rng.uniform(1 - self.amount, 1 + self.amount))
        return _warp(image, label, torch.tensor([[inverse, 0.0, 0.0], [0.0, inverse, 0.0]], dtype=torch.float32))


# ---- intensity ----


@dataclass(frozen=True)
class RandomBrightnessContrast:
    """With probability `prob`: ``(x - mean) * c + mean + b``, c uniform in 1 ± contrast, b uniform in ± brightness
    (in the normalised image's units)."""

    prob: float = 0.3
    brightness: float = 0.2
    contrast: float = 0.25

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if rng.random() >= self.prob:
            return image
        c = float(rng.uniform(1 - self.contrast, 1 + self.contrast))
        b = float(rng.uniform(-self.brightness, self.brightness))
        mean = image.mean()
        return (image - mean) * c + mean + b


@dataclass(frozen=True)
class RandomGamma:
    """With probability `prob`, a gamma curve on the image rescaled to [0, 1] (range kept); gamma = exp(U(±g))."""

    prob: float = 0.3
    gamma: float = 0.3

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if rng.random() >= self.prob:
            return image
        g = math.exp(float(rng.uniform(-self.gamma, self.gamma)))
        low, high = image.amin(), image.amax()
        span = (high - low).clamp_min(1e-6)
        return ((image - low) / span) ** g * span + low


@dataclass(frozen=True)
class RandomNoise:
    """With probability `prob`, add Gaussian noise with a standard deviation uniform in [0, std]."""

    prob: float = 0.3
    std: float = 0.1

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if rng.random() >= self.prob:
            return image
        sd = float(rng.uniform(0, self.std))
        noise = rng.standard_normal(image.shape, dtype=np.float32)
        return image + sd * torch.from_numpy(noise)


@dataclass(frozen=True)
class RandomBlur:
    """With probability `prob`, an in-plane Gaussian blur with sigma uniform in [0.5, sigma] pixels."""

    prob: float = 0.2
    sigma: float = 1.0

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if rng.random() >= self.prob or self.sigma <= 0.5:
            return image
        sigma = float(rng.uniform(0.5, self.sigma))
        radius = max(1, int(math.ceil(2.5 * sigma)))
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(offsets**2) / (2 * sigma * sigma))
        kernel = (kernel / kernel.sum())[None, None]
        x = image[:, None]  # (C, 1, H, W): each channel on its own
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel[:, :, None, :])
        x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel[:, :, :, None])
        return x[:, 0]


@dataclass(frozen=True)
class RandomOrganShift:
    """Each organ in the slice, with probability `prob`, brighter or darker by a shift uniform in ± amount
    (normalised units): other contrast phases (a kidney plain or enhanced) seen from the labels at hand.

    Ignored voxels (255) and background keep their values; the shift is applied to every context channel.
    """

    prob: float = 0.3
    amount: float = 0.5

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.amount <= 0:
            return image
        organs = [int(v) for v in torch.unique(label).tolist() if 0 < v < 255]
        shift = torch.zeros(256, dtype=image.dtype)
        for organ in organs:
            if rng.random() < self.prob:
                shift[organ] = float(rng.uniform(-self.amount, self.amount))
        if not shift.any():
            return image
        return image + shift[label.long()][None]


# ---- the sets ----


def build_augmentation(cfg: AugmentConfig) -> list:
    """The spatial transforms, applied in order: the paper's rotation and flip, plus the zoom when `strong`."""
    transforms: list = [RandomRot90Flip(cfg.rot90_flip_prob), RandomRotate(cfg.rotate_prob, cfg.rotate_degrees)]
    if cfg.strong:
        transforms.append(RandomScale(cfg.strong_prob, cfg.scale))
    return transforms


def build_intensity_augmentation(cfg: AugmentConfig) -> list:
    """The intensity transforms: per-organ shifts when `organ_shift` > 0, then the strong set (brightness/contrast,
    gamma, noise, blur) when `strong`."""
    transforms: list = [RandomOrganShift(cfg.organ_shift_prob, cfg.organ_shift)] if cfg.organ_shift > 0 else []
    if cfg.strong:
        p = cfg.strong_prob
        transforms += [
            RandomBrightnessContrast(p, cfg.brightness, cfg.contrast),
            RandomGamma(p, cfg.gamma),
            RandomNoise(p, cfg.noise_std),
            RandomBlur(p, cfg.blur_sigma),
        ]
    return transforms
