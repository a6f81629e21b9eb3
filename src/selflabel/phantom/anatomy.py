"""The sampled body measures of one patient, and the voxel grid (field of view, slices) around that body."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selflabel.phantom.draws import normal, uniform
from selflabel.phantom.shapes import Grid


@dataclass
class Anatomy:
    """Body measures in mm in the patient frame (x right, y anterior, z superior; origin mid-vertebral body, L1/L2).

    Most organ positions are given for an average skeleton and multiplied by `frame_scale`.
    """

    frame_scale: float  # skeletal frame scale (dimensionless, ~1)
    body_half_width: float  # body half-width at z = 0 (skin)
    body_half_depth: float  # body half-depth at z = 0 (skin)
    body_centre_y: float  # y of the body outline's centre
    fat_thickness: float  # anterior subcutaneous fat
    muscle_thickness: float  # abdominal wall muscle
    cavity_half_width: float  # half-width of the abdominal cavity
    front_wall_y: float  # y of the inner anterior wall on the midline
    z_gastro_oesophageal: float  # z of the gastro-oesophageal junction
    z_dome_right: float  # z of the right diaphragm dome
    z_dome_left: float  # z of the left diaphragm dome
    z_pylorus: float  # z of the pylorus
    aorta_x: float  # aorta centre x at z = 0
    aorta_y: float  # aorta centre y at z = 0
    aorta_radius: float  # aorta radius


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's body measures."""
    f = uniform(rng, 0.9, 1.1)
    half_width = uniform(rng, 135, 185)
    half_depth = half_width * uniform(rng, 0.66, 0.84)
    fat = uniform(rng, 5, 40)
    d_back = 55 * f + 0.6 * fat + uniform(rng, 0, 12)  # skin of the back to the origin
    centre_y = -d_back + half_depth
    muscle = uniform(rng, 7, 13)
    cavity_half_width = half_width - (0.55 + 0.15) * fat - muscle * 1.3
    front_wall_y = centre_y + half_depth - fat - muscle
    if front_wall_y < 105:  # a packed, thin patient: keep room for the anterior organs
        half_depth += 105 - front_wall_y
        centre_y = -d_back + half_depth
        front_wall_y = 105.0
    z_ge = (95 + normal(rng, 7)) * f
    z_dome_right = z_ge + uniform(rng, 22, 42) * f
    return Anatomy(
        frame_scale=f,
        body_half_width=half_width,
        body_half_depth=half_depth,
        body_centre_y=centre_y,
        fat_thickness=fat,
        muscle_thickness=muscle,
        cavity_half_width=cavity_half_width,
        front_wall_y=front_wall_y,
        z_gastro_oesophageal=z_ge,
        z_dome_right=z_dome_right,
        z_dome_left=z_dome_right - uniform(rng, 0, 18) * f,
        z_pylorus=z_ge - uniform(rng, 75, 95) * f,
        aorta_x=(-14 + normal(rng, 3)) * f,
        aorta_y=(30 + normal(rng, 3)) * f,
        aorta_radius=(11 + normal(rng, 1.2)) * f,
    )


def sample_grid(rng: np.random.Generator, anatomy: Anatomy, size: int, slices: int, slice_jitter: float) -> Grid:
    """Field of view around the body (square in-plane), z range from above the GE junction to below the kidneys.

    Args:
        size: in-plane voxels per side. slices: nominal slice count, drawn within +-`slice_jitter` (relative).

    Returns:
        Grid of shape (size, size, n_z) with spacing (s_xy, s_xy, s_z) mm.
    """
    an, f = anatomy, anatomy.frame_scale
    fov = 2 * an.body_half_width * 1.06 * uniform(rng, 1.04, 1.25)
    s_xy = fov / size
    cx, cy = normal(rng, 0.03 * fov), an.body_centre_y + normal(rng, 0.03 * fov)
    z_hi = an.z_gastro_oesophageal + uniform(rng, 20, 55) * f
    z_lo = min(an.z_pylorus - 80 * f, -70 * f) - uniform(rng, 10, 45) * f
    n_z = max(16, int(round(slices * (1 + rng.uniform(-slice_jitter, slice_jitter)))))
    s_z = (z_hi - z_lo) / n_z
    origin = (cx - s_xy * (size - 1) / 2, cy - s_xy * (size - 1) / 2, z_lo + s_z / 2)
    return Grid((size, size, n_z), (s_xy, s_xy, s_z), origin)
