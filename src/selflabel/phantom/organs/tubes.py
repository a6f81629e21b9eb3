"""Tubular FLARE22 organs, each a spline tube: stomach, duodenum, inferior vena cava, aorta and esophagus."""

from __future__ import annotations

import numpy as np

from selflabel.phantom.draws import normal, smooth_noise, uniform
from selflabel.phantom.organs.scene import AORTA, DUODENUM, ESOPHAGUS, IVC, STOMACH, Scene
from selflabel.phantom.shapes import tube
from selflabel.phantom.tissue import Tissue


def paint_stomach(scene: Scene, content: Tissue) -> tuple[float, float, np.ndarray]:
    """J-shaped tube: fundus under the left dome, body, antrum in front, pylorus right of the midline.

    Holds `content` (or food, 30%), often with gas. Returns the pylorus x, y (mm; its z is `Anatomy.z_pylorus`)
    and the gastro-oesophageal junction (3,) mm.
    """
    rng, an = scene.rng, scene.anatomy
    f, W, yf, z_py, z_ge = an.frame_scale, an.cavity_half_width, an.front_wall_y, an.z_pylorus, an.z_gastro_oesophageal
    g_st = float(np.exp(normal(rng, 0.2)))
    x_py = (22 + normal(rng, 5)) * f
    y_py = 0.62 * yf + normal(rng, 5)
    ge = np.array([(-32 + normal(rng, 4)) * f, (45 + normal(rng, 4)) * f, z_ge])
    st_pts = np.array(
        [
            ge + [-22 * f, -12 * f, 12 * f],
            [-0.45 * W, ge[1] + 18 * f, z_ge - 35 * f],
            [-0.42 * W, 0.55 * yf, z_py - 10 * f],
            [-0.1 * W, 0.72 * yf, z_py - 22 * f],
            [x_py, y_py, z_py],
        ]
    ) + rng.normal(0, 5, (5, 3))
    st_r = np.array([26, 29, 26, 19, 10]) * f * np.array([g_st, g_st, g_st, g_st**0.5, 1.0])
    stomach = tube(scene.grid, st_pts, st_r)
    if stomach is not None:
        filling = content if rng.random() < 0.7 else Tissue.FOOD
        scene.hollow(stomach, STOMACH, 4.0, filling, 0.65, (0.1, 0.5))
    return x_py, y_py, ge


def paint_duodenum(scene: Scene, x_py: float, y_py: float, x_head: float, content: Tissue) -> None:
    """Bulb from the pylorus (x_py, y_py mm), descending part right of the pancreatic head (x = `x_head` mm),
    horizontal part in front of IVC and aorta, ascending part to the duodenojejunal flexure."""
    rng, an = scene.rng, scene.anatomy
    f, z_py = an.frame_scale, an.z_pylorus
    g_d = uniform(rng, 0.8, 1.2)
    d_pts = np.array(
        [
            [x_py, y_py, z_py],
            [x_py + 18 * f, y_py - 14 * f, z_py + 4 * f],
            [x_head + 22 * f, 45 * f, z_py - 8 * f],
            [x_head + 24 * f, 46 * f, z_py - 40 * f],
            [x_head + 14 * f, 52 * f, z_py - 66 * f],
            [0.0, 60 * f, z_py - 72 * f],
            [-26 * f, 56 * f, z_py - 62 * f],
            [-34 * f, 60 * f, z_py - 38 * f],
        ]
    ) + rng.normal(0, 3.5, (8, 3))
    duo = tube(scene.grid, d_pts, np.array([11, 13, 11, 11, 10, 10, 10, 10]) * f * g_d)
    if duo is not None:
        scene.hollow(duo, DUODENUM, 3.0, content, 0.35)


def paint_ivc(scene: Scene, x_ivc: float, z_renal_veins: float) -> None:
    """Right of the aorta (x = `x_ivc` mm at the renal veins), flattened; intrahepatic and more anterior above."""
    rng, grid, an = scene.rng, scene.grid, scene.anatomy
    f = an.frame_scale
    ivc_top = grid.axes[2][-1] + 15
    ivc_pts = np.array(
        [
            [x_ivc - 4 * f, 30 * f, grid.axes[2][0] - 15],
            [x_ivc, 32 * f, z_renal_veins],
            [x_ivc + 2 * f, 42 * f, an.z_gastro_oesophageal - 25 * f],
            [x_ivc + 3 * f, 50 * f, ivc_top],
        ]
    ) + rng.normal(0, 2.5, (4, 3))
    r_ivc = (12 + normal(rng, 1.5)) * f
    radii = np.array([r_ivc, r_ivc, r_ivc * 1.05, r_ivc])
    ivc = tube(grid, ivc_pts, radii, squash=(1.0, uniform(rng, 0.55, 0.85), 1.0))
    if ivc is not None:
        scene.canvas.paint(ivc[0], ivc[1] < 0, Tissue.IVC, IVC, within=scene.inner)


def paint_aorta(scene: Scene) -> None:
    """Left-anterior of the spine, more posterior in the chest; calcified plaques in a third of the patients."""
    rng, grid, canvas, an = scene.rng, scene.grid, scene.canvas, scene.anatomy
    f, x_ao, y_ao = an.frame_scale, an.aorta_x, an.aorta_y
    ao_pts = np.array(
        [
            [x_ao + 4, y_ao + 2, grid.axes[2][0] - 15],
            [x_ao, y_ao, 0.0],
            [x_ao - 3 * f, y_ao - 6 * f, an.z_gastro_oesophageal],
            [x_ao - 6 * f, y_ao - 12 * f, grid.axes[2][-1] + 15],
        ]
    ) + rng.normal(0, 1.5, (4, 3))
    aorta = tube(grid, ao_pts, np.array([0.9, 1.0, 1.05, 1.08]) * an.aorta_radius)
    if aorta is None:
        return
    box, sdf = aorta
    m = canvas.paint(box, sdf < 0, Tissue.ARTERY, AORTA, within=scene.inner)
    if rng.random() < 0.35:
        plaque = m & (sdf > -2.0) & (smooth_noise(rng, m.shape, 2.0 / float(grid.spacing[0])) > 1.6)
        canvas.tissue[box][plaque] = Tissue.CALCIFICATION


def paint_esophagus(scene: Scene, ge: np.ndarray) -> None:
    """In front of the aorta at the top, curving left-anterior to the gastro-oesophageal junction `ge` (3,) mm.

    At least ~0.7 voxel in radius; air in its lumen in half of the patients.
    """
    rng, grid, an = scene.rng, scene.grid, scene.anatomy
    f = an.frame_scale
    s_min = float(min(grid.spacing[:2]))
    top = np.array(
        [
            an.aorta_x - 6 * f + uniform(rng, 8, 16) * f,
            an.aorta_y - 12 * f + an.aorta_radius + uniform(rng, 9, 15) * f,
            grid.axes[2][-1] + 15,
        ]
    )
    mid = np.array([0.6 * top[0] + 0.4 * ge[0], top[1] + 3, an.z_gastro_oesophageal + 18 * f])
    r_eso = max(uniform(rng, 7, 10) * f, 0.7 * s_min)
    radii = np.array([r_eso, r_eso, r_eso * 1.2])
    eso = tube(grid, np.stack([top, mid, ge + [4, 0, 0]]), radii, squash=(1.0, 0.7, 1.0))
    if eso is None:
        return
    box, sdf = eso
    m = scene.canvas.paint(box, sdf < 0, Tissue.ESOPHAGUS, ESOPHAGUS, within=scene.inner)
    if rng.random() < 0.5:
        scene.canvas.tissue[box][m & (sdf < -0.6 * r_eso)] = Tissue.GAS
