"""Augmentation: the paper's "random rotation and flip", and a strong set for the student (noisy student).

Small callables taking an explicit `numpy.random.Generator`. Spatial transforms map ``(image (C, H, W) float32,
label (H, W) uint8, rng)`` to a new pair, image and label moved together (a per-voxel weight map travels as an
extra image channel). Intensity transforms map ``(image, label, rng)`` to a new image and leave the label alone.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from selflabel.config import AugmentConfig
from selflabel.labels import FLARE22_ORGANS, Organ

# ---- spatial ----


def _warp(image: torch.Tensor, label: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample by the 2x3 affine `theta` (output -> input, normalised coordinates); see `_resample`."""
    return _resample(image, label, F.affine_grid(theta[None], [1, 1, *image.shape[-2:]], align_corners=False))


def _resample(image: torch.Tensor, label: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample at `grid` (1, H, W, 2) (output -> input, normalised coordinates): image bilinear, label nearest.

    Voxels that come from outside the slice take each channel's minimum and background.
    """
    low = image.amin(dim=(-2, -1), keepdim=True)
    warped = F.grid_sample((image - low)[None], grid, mode="bilinear", align_corners=False)[0] + low
    labels = F.grid_sample(label[None, None].float(), grid, mode="nearest", align_corners=False)[0, 0]
    return warped, labels.to(label.dtype)


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, int], points: int = 6, channels: int = 1, sd: float = 1.0
) -> torch.Tensor:
    """(channels, *shape) random fields of sd about `sd` varying over 1/`points` of the slice (bicubic from a
    coarse normal grid)."""
    coarse = torch.from_numpy(rng.normal(0.0, sd, (1, channels, points, points)).astype(np.float32))
    return F.interpolate(coarse, size=tuple(shape), mode="bicubic", align_corners=True)[0]


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
    """With probability `prob`, zoom about the centre by a factor uniform in [1 - amount, 1 + amount], then move
    the slice by up to ± `shift` of its side along each in-plane axis (0 = about the centre only).

    The shift stands in for the random patch position of patch-based training (nnU-Net): whole slices of a body
    box put every organ at nearly the same place, which a model can learn instead of the organ (measured in
    benchmarks/RESULTS.md: no gain on the cohorts there).
    """

    prob: float = 0.3
    amount: float = 0.2
    shift: float = 0.0

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator):
        if rng.random() >= self.prob or (self.amount <= 0 and self.shift <= 0):
            return image, label
        inverse = 1.0 / float(rng.uniform(1 - self.amount, 1 + self.amount))
        # normalised coordinates span 2 per side; drawn only when asked, so that shift 0 keeps the random stream
        ty, tx = rng.uniform(-2 * self.shift, 2 * self.shift, 2) if self.shift > 0 else (0.0, 0.0)
        theta = torch.tensor([[inverse, 0.0, float(tx)], [0.0, inverse, float(ty)]], dtype=torch.float32)
        return _warp(image, label, theta)


@dataclass(frozen=True)
class RandomElastic:
    """With probability `prob`, a smooth random deformation (another patient's anatomy, roughly).

    Displacements drawn N(0, `magnitude`) in normalised coordinates (a fraction of the slice's half-side) at a
    coarse `points` x `points` control grid, interpolated bicubically to every pixel: organ-sized bends and local
    zooms rather than pixel noise. Written here because the one torch call it needs (`grid_sample`) is already how
    the other spatial transforms resample, with the same fill; MONAI's Rand2DElastic would add a dependency.
    """

    prob: float = 0.3
    magnitude: float = 0.04
    points: int = 5

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator):
        if rng.random() >= self.prob or self.magnitude <= 0:
            return image, label
        height, width = image.shape[-2:]
        field = _smooth_field(rng, (height, width), self.points, channels=2, sd=self.magnitude)[None]
        identity = F.affine_grid(torch.eye(2, 3)[None], [1, 1, height, width], align_corners=False)
        return _resample(image, label, identity + field.permute(0, 2, 3, 1))


@dataclass(frozen=True)
class RandomDistension:
    """With probability `prob`, one hollow organ of the slice (stomach, duodenum or gallbladder) distended: a
    local magnification about its centroid by a factor uniform in [1, `max_factor`], its neighbours pushed aside.

    How full these organs are changes from scan to scan (a fed stomach holds 3-4 times the cross-section of an empty
    one), and a few labelled scans show one state; the whole-slice zoom cannot show a large stomach beside a
    liver of the usual size. The map is radial, ``source = centre + r (1 - a exp(-(r/sigma)^2))`` with
    ``a = 1 - 1/factor``: ``1/factor`` at the centre, the identity far away, and monotone for any factor (no fold),
    with `sigma` twice the distended organ's radius, so that the organ grows about 0.85-0.9 `factor` across.
    """

    prob: float = 0.3
    max_factor: float = 2.0
    organs: tuple[Organ, ...] = field(default=FLARE22_ORGANS, repr=False)  # the label map's (`organs_for`)

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator):
        if rng.random() >= self.prob or self.max_factor <= 1:
            return image, label
        present = [index for index in _indices(self.organs, _DISTENDING) if int((label == index).sum()) >= 4]
        if not present:
            return image, label
        where = torch.nonzero(label == present[int(rng.integers(len(present)))]).float()
        factor = float(rng.uniform(1.0, self.max_factor))
        height, width = label.shape
        half = torch.tensor([height / 2.0, width / 2.0])
        centre = (where.mean(0) + 0.5) / half - 1.0  # normalised (row, column)
        radius = math.sqrt(len(where) / math.pi) / float(half.mean())
        grid = F.affine_grid(torch.eye(2, 3)[None], [1, 1, height, width], align_corners=False)[0]  # (x, y)
        offset = grid - centre.flip(0)
        squared = (offset**2).sum(-1, keepdim=True) / (2.0 * factor * radius) ** 2
        pulled = offset * (1.0 - (1.0 - 1.0 / factor) * torch.exp(-squared))
        return _resample(image, label, (centre.flip(0) + pulled)[None])


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
class IntensityScale:
    """How a cached case's normalised units relate to HU: ``units = (HU - hu_at_zero) * units_per_hu``, clipped to
    [low, high] units by its normalisation (±inf where a side is not clipped)."""

    units_per_hu: float
    hu_at_zero: float
    low: float = -math.inf
    high: float = math.inf

    @classmethod
    def of(cls, intensity: dict[str, float]) -> IntensityScale:
        """The scale of a case from its cache meta's normalisation statistics."""
        if "std" in intensity:  # percentile z-score (clip above only), ct_foreground (clip both sides)
            per_hu, zero = 1.0 / max(float(intensity["std"]), 1e-6), float(intensity["mean"])
            high = intensity.get("high", intensity.get("clip", math.inf))
        else:  # HU window scaled to [0, 1]
            per_hu, zero = 1.0 / (float(intensity["high"]) - float(intensity["low"])), float(intensity["low"])
            high = intensity["high"]
        low = intensity.get("low", -math.inf)
        return cls(per_hu, zero, (float(low) - zero) * per_hu, (float(high) - zero) * per_hu)


@dataclass(frozen=True)
class RandomPhase:
    """With probability `prob`, the slice as if scanned in another contrast phase; organs move together.

    ``shift`` mode: every organ moves by its own typical enhancement (`selflabel.labels.Organ.enhancement_hu`)
    times one factor uniform in ± amount, whatever the scan's phase (-1: a portal-venous scan seen plain).
    ``target`` mode: each solid organ and vessel (those with a `plain_hu`) is moved, texture kept, so that its median
    lands at ``plain_hu + t * enhancement_hu`` for one t uniform in [0, amount]: a plausible phase whatever the
    scan's was (a plain scan is never pushed below plain); hollow organs and bile keep their values.

    `jitter` (``target`` only): each organ's own t is drawn about the slice's, sd `jitter`, within [0, amount]: in a
    real scan the organs are not at one phase (the IVC mixes unenhanced blood, a fatty liver sits below the spleen).

    `scale` converts HU to the normalised image's units; ignored voxels (255) and background keep their values and
    every context channel moves alike; ``target`` keeps the result within the normalisation's clip range.
    """

    prob: float = 0.3
    amount: float = 1.0
    mode: Literal["shift", "target"] = "shift"
    jitter: float = 0.0
    organs: tuple[Organ, ...] = field(default=FLARE22_ORGANS, repr=False)  # the label map's (`organs_for`)

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator, scale: IntensityScale
    ) -> torch.Tensor:
        if rng.random() >= self.prob or self.amount <= 0:
            return image
        if self.mode == "target":
            solid = _solid(self.organs)
            return self._to_target(image, label, solid, self._phases(rng, len(solid)), scale)
        factor = float(rng.uniform(-self.amount, self.amount))
        return image + (factor * scale.units_per_hu) * _enhancement(self.organs)[label.long()][None].to(image.dtype)

    def _phases(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """One t per solid organ: the slice's t, each moved by the jitter within [0, amount]."""
        t = float(rng.uniform(0.0, self.amount))
        if self.jitter <= 0:
            return np.full(count, t)
        return np.clip(t + rng.normal(0.0, self.jitter, count), 0.0, self.amount)

    @staticmethod
    def _to_target(
        image: torch.Tensor, label: torch.Tensor, solid: tuple[Organ, ...], ts: np.ndarray, scale: IntensityScale
    ) -> torch.Tensor:
        centre = image[image.shape[0] // 2]
        shift = torch.zeros(label.shape, dtype=image.dtype)
        for organ, t in zip(solid, ts, strict=True):
            inside = label == organ.index
            if inside.any():
                target = (organ.plain_hu + float(t) * organ.enhancement_hu - scale.hu_at_zero) * scale.units_per_hu
                shift[inside] = target - float(centre[inside].median())
        return (image + shift[None]).clamp(scale.low, scale.high)


@dataclass(frozen=True)
class RandomContents:
    """With probability `prob`, new contents for the stomach and duodenum: what a hollow organ holds varies from
    patient to patient (fluid, food, gas, oral contrast), and a few labelled scans show one state of it.

    Inside each organ (less a one-pixel wall) the values become one level uniform in `level_hu`, plus a smooth
    random texture of sd up to `texture_hu`, and with probability one half a gas pocket (the clip's low end) filling
    up to `max_gas` of it, on the anterior side where gas rises in a supine patient (canonical rows run A -> P),
    with an uneven border. Labels are unchanged; every context channel gets the same values.
    """

    prob: float = 0.3
    level_hu: tuple[float, float] = (-100.0, 60.0)
    texture_hu: float = 40.0
    max_gas: float = 0.4
    organs: tuple[Organ, ...] = field(default=FLARE22_ORGANS, repr=False)  # the label map's (`organs_for`)

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator, scale: IntensityScale
    ) -> torch.Tensor:
        if rng.random() >= self.prob:
            return image
        out = image
        for index in _indices(self.organs, _HOLLOW):
            inside = -F.max_pool2d(-(label == index).float()[None], 3, stride=1, padding=1)[0] > 0  # the wall off
            if int(inside.sum()) < 4:
                continue
            texture = _smooth_field(rng, label.shape, points=16)[0]  # mottled, as food is, at a few pixels
            hu = float(rng.uniform(*self.level_hu)) + float(rng.uniform(0, self.texture_hu)) * texture
            if rng.random() < 0.5:
                rows = torch.linspace(0.0, 1.0, label.shape[0])[:, None].expand(label.shape)
                depth = rows + 0.1 * _smooth_field(rng, label.shape)[0]  # anterior first, an uneven level
                gas = inside & (depth <= torch.quantile(depth[inside], float(rng.uniform(0.05, self.max_gas))))
                hu = torch.where(gas, torch.tensor(-1000.0), hu)
            units = ((hu - scale.hu_at_zero) * scale.units_per_hu).clamp(scale.low, scale.high).to(image.dtype)
            out = torch.where(inside[None], units[None], out)
        return out


_HOLLOW = ("stomach", "duodenum")
_DISTENDING = ("stomach", "duodenum", "gallbladder")


# A transform's organ table is fixed: its lookups are made once per table, not once per slice.
@functools.cache
def _indices(organs: tuple[Organ, ...], names: tuple[str, ...]) -> tuple[int, ...]:
    """The label values of the named FLARE22 organs in a label map's organ table, in `names`' order."""
    by_name = {o.name: o.index for o in organs}
    return tuple(by_name[name] for name in names if name in by_name)


@functools.cache
def _enhancement(organs: tuple[Organ, ...]) -> torch.Tensor:
    """Label value -> the organ's typical enhancement in HU (0 for background and organs without one)."""
    table = torch.zeros(256)
    for organ in organs:
        table[organ.index] = organ.enhancement_hu
    return table


@functools.cache
def _solid(organs: tuple[Organ, ...]) -> tuple[Organ, ...]:
    """The solid organs and vessels of a table (those with a plain HU), in its order."""
    return tuple(o for o in organs if o.plain_hu is not None)


# ---- the sets ----


def build_augmentation(cfg: AugmentConfig, organs: tuple[Organ, ...] = FLARE22_ORGANS) -> list:
    """The spatial transforms, applied in order: the paper's rotation and flip, the elastic deformation when
    `elastic_prob` > 0, the hollow organs' distension when `distension_prob` > 0, the zoom when `strong` or
    `zoom_prob` > 0. `organs`: the label map's organ table (`selflabel.labels.organs_for`)."""
    transforms: list = [RandomRot90Flip(cfg.rot90_flip_prob), RandomRotate(cfg.rotate_prob, cfg.rotate_degrees)]
    if cfg.elastic_prob > 0:
        transforms.append(RandomElastic(cfg.elastic_prob, cfg.elastic_magnitude))
    if cfg.distension_prob > 0:
        transforms.append(RandomDistension(cfg.distension_prob, cfg.distension_max, organs))
    zoom_prob = max(cfg.zoom_prob, cfg.strong_prob if cfg.strong else 0.0)
    if zoom_prob > 0:
        transforms.append(RandomScale(zoom_prob, cfg.scale, cfg.shift))
    return transforms


def build_intensity_augmentation(cfg: AugmentConfig) -> list:
    """The intensity transforms of the strong set (brightness/contrast, gamma, noise, blur); none unless `strong`."""
    transforms: list = []
    if cfg.strong:
        p = cfg.strong_prob
        transforms += [
            RandomBrightnessContrast(p, cfg.brightness, cfg.contrast),
            RandomGamma(p, cfg.gamma),
            RandomNoise(p, cfg.noise_std),
            RandomBlur(p, cfg.blur_sigma),
        ]
    return transforms


def build_organ_intensity_augmentation(cfg: AugmentConfig, organs: tuple[Organ, ...] = FLARE22_ORGANS) -> list:
    """The transforms that need each slice's HU scale: the contrast phase when `phase_shift` > 0, then the hollow
    organs' contents when `contents_prob` > 0. `organs`: the label map's organ table (`labels.organs_for`)."""
    transforms: list = []
    if cfg.phase_shift > 0:
        transforms.append(RandomPhase(cfg.phase_shift_prob, cfg.phase_shift, cfg.phase_mode, cfg.phase_jitter, organs))
    if cfg.contents_prob > 0:
        transforms.append(RandomContents(cfg.contents_prob, organs=organs))
    return transforms
