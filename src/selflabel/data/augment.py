"""The paper's augmentation ("random rotation and flip"): small callables taking an explicit generator.

Each transform maps ``(image (C, H, W) float32, label (H, W) uint8, rng)`` to a new pair, image and label moved
together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from selflabel.config import AugmentConfig


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
    """With probability `prob`, rotate in-plane by an angle uniform in [-degrees, degrees].

    Image bilinear, label nearest; the corners that rotate in are filled with the image's minimum and background.
    """

    prob: float = 0.5
    degrees: float = 20.0

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator):
        if rng.random() >= self.prob or self.degrees <= 0:
            return image, label
        angle = math.radians(float(rng.uniform(-self.degrees, self.degrees)))
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=torch.float32)[None]
        grid = F.affine_grid(theta, [1, 1, *image.shape[-2:]], align_corners=False)
        low = image.amin()
        rotated = F.grid_sample((image - low)[None], grid, mode="bilinear", align_corners=False)[0] + low
        warped = F.grid_sample(label[None, None].float(), grid, mode="nearest", align_corners=False)[0, 0]
        return rotated, warped.to(label.dtype)


def build_augmentation(cfg: AugmentConfig) -> list:
    """The paper's augmentation, as a list of callables applied in order."""
    return [RandomRot90Flip(cfg.rot90_flip_prob), RandomRotate(cfg.rotate_prob, cfg.rotate_degrees)]
