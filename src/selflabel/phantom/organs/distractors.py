"""Unlabelled structures (label 0) that look like the organs: colon, small bowel, portal, mesenteric and splenic
veins, celiac trunk and superior mesenteric artery."""

from __future__ import annotations

import numpy as np

from selflabel.phantom.draws import jitter, smooth_noise, uniform
from selflabel.phantom.organs.scene import Scene
from selflabel.phantom.shapes import tube
from selflabel.phantom.tissue import Tissue


def paint_colon(scene: Scene) -> None:
    """Colon with stool and gas: ascending (right), transverse (front, sagging), descending (left)."""
    rng, grid, canvas, an = scene.rng, scene.grid, scene.canvas, scene.anatomy
    f, W, yf = an.frame_scale, an.cavity_half_width, an.front_wall_y
    zb = grid.axes[2][0] - 20
    colon_pts = jitter(
        rng,
        [
            [0.72 * W, 0.25 * yf, zb],
            [0.74 * W, 0.3 * yf, -40 * f],
            [0.6 * W, 0.45 * yf, -15 * f],
            [0.25 * W, 0.8 * yf, -45 * f],
            [-0.15 * W, 0.82 * yf, -60 * f],
            [-0.55 * W, 0.6 * yf, -10 * f],
            [-0.72 * W, 0.2 * yf, 25 * f],
            [-0.78 * W, 0.1 * yf, -30 * f],
            [-0.75 * W, 0.15 * yf, zb],
        ],
        6,
    )
    colon = tube(grid, colon_pts, np.full(len(colon_pts), 22 * f) * rng.uniform(0.75, 1.2, len(colon_pts)))
    if colon is None:
        return
    box, sdf = colon
    m = canvas.paint(box, sdf < 0, Tissue.BOWEL_WALL, within=scene.cavity)
    lumen = m & (sdf < -2.5)
    canvas.tissue[box][lumen] = Tissue.STOOL
    tex = smooth_noise(rng, lumen.shape, 3.0 / float(grid.spacing[0]))
    canvas.tissue[box][lumen & (tex > uniform(rng, 0.6, 1.4))] = Tissue.GAS


def paint_small_bowel(scene: Scene, content: Tissue) -> None:
    """Meandering loops (level set of a smooth random field) in the fat of the lower, anterior abdomen."""
    rng, grid, canvas, an = scene.rng, scene.grid, scene.canvas, scene.anatomy
    f, W, yf = an.frame_scale, an.cavity_half_width, an.front_wall_y
    sb_box = grid.box((-0.75 * W, 0.2 * yf, -1e4), (0.75 * W, yf, uniform(rng, -15, 10) * f))
    if sb_box is None:
        return
    shape = [s.stop - s.start for s in sb_box]
    field = smooth_noise(rng, shape, 24.0 / float(grid.spacing[0]))
    level = uniform(rng, 0.0, 0.6)
    loops = (field > level) & scene.cavity[sb_box] & (canvas.tissue[sb_box] == Tissue.FAT)
    canvas.tissue[sb_box][loops] = Tissue.BOWEL_WALL
    lumen = loops & (field > level + uniform(rng, 0.25, 0.4))
    canvas.tissue[sb_box][lumen] = content
    canvas.tissue[sb_box][lumen & (field > level + uniform(rng, 1.3, 2.2))] = Tissue.GAS


def paint_portal_vein(scene: Scene, confluence: np.ndarray, hilum: np.ndarray) -> None:
    """Portal vein from the confluence (3,) mm to the liver hilum (3,) mm; superior mesenteric vein below."""
    f = scene.anatomy.frame_scale
    scene.vessel([confluence, (confluence + hilum) / 2 + [0, 4, 0], hilum], [7, 7, 6.5], Tissue.PORTAL_VEIN)
    scene.vessel(
        [confluence + [0, 5, -60 * f], confluence + [2, 3, -30 * f], confluence], [5.5, 6, 7], Tissue.PORTAL_VEIN
    )


def paint_celiac_trunk(scene: Scene, x_head: float) -> None:
    """Celiac trunk from the front of the aorta to above the pancreatic head (at x = `x_head` mm)."""
    an = scene.anatomy
    f, z_py = an.frame_scale, an.z_pylorus
    origin = [an.aorta_x, an.aorta_y, z_py + 8 * f]
    celiac = [an.aorta_x, an.aorta_y + an.aorta_radius + 6, z_py + 8 * f]
    scene.vessel([origin, celiac, [x_head + 5, 55 * f, z_py + 12 * f]], [3.5, 3.5, 3], Tissue.ARTERY)


def paint_sma(scene: Scene) -> None:
    """Superior mesenteric artery from the aorta, forwards and down."""
    an = scene.anatomy
    f, z_py, x_ao, y_ao = an.frame_scale, an.z_pylorus, an.aorta_x, an.aorta_y
    scene.vessel(
        [
            [x_ao + 1, y_ao, z_py - 12 * f],
            [x_ao + 3, y_ao + an.aorta_radius + 10, z_py - 22 * f],
            [x_ao + 5, 58 * f, z_py - 90 * f],
        ],
        [4, 4, 3.5],
        Tissue.ARTERY,
    )


def paint_splenic_vein(scene: Scene, tail_end: np.ndarray, body_pt: np.ndarray, confluence: np.ndarray) -> None:
    """Splenic vein along the back of the pancreas (tail end and body point (3,) mm) to the confluence."""
    scene.vessel([tail_end + [0, -6, 0], body_pt + [0, -12, 2], confluence], [4.5, 5, 6], Tissue.PORTAL_VEIN)
