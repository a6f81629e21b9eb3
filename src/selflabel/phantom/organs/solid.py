"""Solid FLARE22 organs: liver (with its veins and cysts), spleen, kidneys (with renal veins), pancreas,
gallbladder and adrenals."""

from __future__ import annotations

import numpy as np

from selflabel.phantom.draws import jitter, normal, smooth_noise, uniform
from selflabel.phantom.organs.scene import (
    GALLBLADDER,
    LEFT_ADRENAL,
    LEFT_KIDNEY,
    LIVER,
    PANCREAS,
    RIGHT_ADRENAL,
    RIGHT_KIDNEY,
    SPLEEN,
    Scene,
)
from selflabel.phantom.shapes import orthonormal_frame, rotation, tube
from selflabel.phantom.tissue import Tissue


def paint_liver(scene: Scene) -> float:
    """Right lobe under the right dome, left lobe across the midline, caudate by the IVC; clipped by the cavity.

    Returns the z (mm) of the right lobe's lowest point before perturbation.
    """
    rng, an = scene.rng, scene.anatomy
    f, W, yf = an.frame_scale, an.cavity_half_width, an.front_wall_y
    g_liv = uniform(rng, 0.85, 1.15)
    h_liv = uniform(rng, 140, 185) * f * g_liv
    y_post = -30 * f
    right = scene.blob(
        [0.47 * W, 0.5 * (y_post + yf), an.z_dome_right + 20 - h_liv / 2],
        [0.46 * W * g_liv, 0.47 * (yf - y_post), h_liv / 2 + 10],
        rotation(yaw=normal(rng, 0.1), roll=normal(rng, 0.1)),
        0.09,
        (normal(rng, 0.1), normal(rng, 0.15)),
    )
    left = scene.blob(
        [-0.06 * W + normal(rng, 8), yf - 0.3 * (yf - 20), an.z_dome_left - uniform(rng, 30, 50) * f],
        [0.42 * W * uniform(rng, 0.7, 1.15), 0.16 * yf + 6, uniform(rng, 35, 55) * f],
        rotation(yaw=normal(rng, 0.15), pitch=normal(rng, 0.2)),
        0.12,
    )
    caudate = scene.blob([16 * f, 45 * f, an.z_gastro_oesophageal - 15 * f], [20 * f, 17 * f, 35 * f], rotation(), 0.1)
    for part in [b.evaluate(scene.grid) for b in (right, left, caudate)]:
        if part is not None:
            scene.canvas.paint(part[0], part[1] < 1, Tissue.LIVER, LIVER, within=scene.cavity)
    return an.z_dome_right + 10 - h_liv


def paint_liver_veins(scene: Scene, x_ivc: float, hilum: np.ndarray) -> None:
    """Hepatic veins from the top of the IVC (at x = `x_ivc` mm) and portal branches from the hilum (3,) mm.

    Painted inside the liver only (they keep its label).
    """
    rng, grid, canvas, an = scene.rng, scene.grid, scene.canvas, scene.anatomy
    f, W, yf = an.frame_scale, an.cavity_half_width, an.front_wall_y
    top_ivc = np.array([x_ivc + 3, 50 * f, an.z_dome_right - 25 * f])
    for end in (
        [0.8 * W, 40 * f, an.z_dome_right - 60 * f],
        [25 * f, yf - 30, an.z_dome_right - 55 * f],
        [-0.4 * W, yf - 40, an.z_dome_left - 40 * f],
    ):
        hv = tube(grid, np.stack([top_ivc, jitter(rng, [end], 8)[0]]), np.array([6.0, 2.5]) * f)
        if hv is not None:
            canvas.paint(hv[0], hv[1] < 0, Tissue.HEPATIC_VEIN, only_label=LIVER)
    for end in (
        [0.75 * W, 35 * f, an.z_pylorus + 55 * f],
        [-0.25 * W, yf - 35, an.z_pylorus + 60 * f],
        [0.55 * W, yf - 40, an.z_pylorus + 5],
    ):
        pv = tube(grid, np.stack([hilum, jitter(rng, [end], 8)[0]]), np.array([6.5, 2.5]) * f)
        if pv is not None:
            canvas.paint(pv[0], pv[1] < 0, Tissue.PORTAL_VEIN, only_label=LIVER)


def paint_liver_cysts(scene: Scene) -> None:
    """One or two round cysts (4-14 mm radius) in the right liver, in a fifth of the patients."""
    rng, an = scene.rng, scene.anatomy
    if rng.random() >= 0.2:
        return
    for _ in range(int(rng.integers(1, 3))):
        c = [
            uniform(rng, 0.2, 0.8) * an.cavity_half_width,
            uniform(rng, 0, 0.8) * an.front_wall_y,
            an.z_pylorus + uniform(rng, 10, 70),
        ]
        cyst = scene.blob(c, [uniform(rng, 4, 14)] * 3, rotation(), 0.05).evaluate(scene.grid)
        if cyst is not None:
            scene.canvas.paint(cyst[0], cyst[1] < 1, Tissue.CYST, only_label=LIVER)


def paint_spleen(scene: Scene) -> None:
    """Crescent on the left posterolateral wall, under the left dome, concave towards the hilum."""
    rng, an = scene.rng, scene.anatomy
    f = an.frame_scale
    g_sp = uniform(rng, 0.75, 1.4)
    ang = np.deg2rad(uniform(rng, 195, 225))  # direction of the spleen from the body centre (left, posterior)
    radial = np.array([np.cos(ang), np.sin(ang), 0.0])
    c_sp = (
        np.array([0.0, an.body_centre_y, 0.0])
        + radial * (an.cavity_half_width * 0.92 - 20 * f)
        + [0, 0, an.z_dome_left - 50 * f * g_sp]
    )
    c_sp[1] = min(c_sp[1], 15 * f)
    w_ax = np.array([0, uniform(rng, 0.25, 0.6), 1.0])
    axes = np.array([22, 50, 56]) * f * g_sp**0.5
    spleen = scene.blob(c_sp, axes, orthonormal_frame(w_ax, radial), 0.09, (-uniform(rng, 0.2, 0.45), 0))
    sp = spleen.evaluate(scene.grid)
    if sp is not None:
        scene.canvas.paint(sp[0], sp[1] < 1, Tissue.SPLEEN, SPLEEN, within=scene.cavity)


def paint_kidneys(scene: Scene, x_ivc: float, z_renal_veins: float) -> dict[int, float]:
    """Left then right kidney (the right one lower), each with its renal vein to the IVC (x = `x_ivc` mm).

    Returns the z (mm) of the upper pole per painted kidney label.
    """
    f = scene.anatomy.frame_scale
    z_left = normal(scene.rng, 8) * f
    tops = {}
    for label, side, zc in ((LEFT_KIDNEY, -1, z_left), (RIGHT_KIDNEY, 1, z_left - uniform(scene.rng, 5, 25) * f)):
        top = _paint_kidney(scene, label, side, zc, x_ivc, z_renal_veins)
        if top is not None:
            tops[label] = top
    return tops


def _paint_kidney(scene: Scene, label: int, side: int, zc: float, x_ivc: float, z_renal_veins: float) -> float | None:
    """A tilted kidney centred at height `zc` mm on `side` (+1 right, -1 left): cortex, medulla, sinus fat.

    Returns the z (mm) of its upper pole, or None when it lies outside the grid.
    """
    rng, canvas, an = scene.rng, scene.canvas, scene.anatomy
    f = an.frame_scale
    g_k = uniform(rng, 0.9, 1.15)
    c = np.array([side * (68 + normal(rng, 5)) * f, (-2 + normal(rng, 4)) * f, zc])
    axes = np.array([29, 23, 57]) * f * g_k * rng.uniform(0.93, 1.07, 3)
    tilt, back = np.deg2rad(uniform(rng, 8, 22)), np.deg2rad(uniform(rng, 5, 18))
    w_ax = np.array([-side * np.sin(tilt), -np.sin(back), np.cos(tilt)])
    ang = np.deg2rad(uniform(rng, 20, 45))
    local = orthonormal_frame(w_ax, [-side * np.cos(ang), np.sin(ang), 0.0])  # u points to the hilum
    ev = scene.blob(c, axes, local, 0.06).evaluate(scene.grid)
    if ev is None:
        return None
    box, rr, (u, v, w) = ev
    sinus = ((u - 0.8) / 0.62) ** 2 + (v / 0.36) ** 2 + (w / 0.55) ** 2 < 1
    kid = canvas.paint(box, (rr < 1) & ~sinus, Tissue.KIDNEY_CORTEX, label, within=scene.cavity)
    ang2 = np.arctan2(v, u)
    medulla = kid & (rr < 0.74) & (rr > 0.3) & (np.sin(9 * w + 4 * ang2) > -0.35)
    medulla &= ((u - 0.8) / 0.85) ** 2 + (v / 0.55) ** 2 + (w / 0.75) ** 2 > 1
    canvas.tissue[box][medulla] = Tissue.KIDNEY_MEDULLA
    sin_m = sinus & (rr < 1) & scene.cavity[box]
    canvas.tissue[box][sin_m] = Tissue.FAT
    canvas.label[box][sin_m] = 0
    hilum = c + local[:, 0] * axes[0] * 0.9
    ivc_pt = [x_ivc, (30 + 4) * f, z_renal_veins]
    if side < 0:  # the left renal vein crosses in front of the aorta
        crossing = [an.aorta_x, an.aorta_y + an.aorta_radius + 5, z_renal_veins + 2]
        scene.vessel([hilum, crossing, ivc_pt], [5, 4, 6], Tissue.PORTAL_VEIN, (1, 0.8, 1))
    else:
        scene.vessel([hilum, ivc_pt], [5, 6], Tissue.PORTAL_VEIN)
    return float(c[2] + axes[2])


def paint_pancreas(scene: Scene, x_head: float, body_pt: np.ndarray, tail_end: np.ndarray) -> None:
    """Uncinate, head in the duodenal C (x = `x_head` mm), neck, body across the aorta, tail to the splenic hilum.

    body_pt, tail_end: (3,) mm, shared with the splenic vein. Fatty lobulation keeps the pancreas label.
    """
    rng, grid, canvas, an = scene.rng, scene.grid, scene.canvas, scene.anatomy
    f, z_py = an.frame_scale, an.z_pylorus
    g_p = uniform(rng, 0.75, 1.25)
    p_pts = np.array(
        [
            [x_head - 8 * f, 44 * f, z_py - 50 * f],
            [x_head, 57 * f, z_py - 30 * f],
            [8 * f, 70 * f, z_py - 12 * f],
            body_pt + [0, 2, 0],
            [-0.42 * an.cavity_half_width, 42 * f, z_py + 12 * f],
            tail_end,
        ]
    ) + rng.normal(0, 3, (6, 3))
    pan = tube(grid, p_pts, np.array([11, 17, 12, 12, 10.5, 8]) * f * g_p)
    if pan is None:
        return
    box, sdf = pan
    m = canvas.paint(box, sdf < 0, Tissue.PANCREAS, PANCREAS, within=scene.cavity)
    lob = smooth_noise(rng, m.shape, 2.0 / float(grid.spacing[0]))
    canvas.tissue[box][m & (lob > uniform(rng, 1.2, 2.5))] = Tissue.FAT


def paint_gallbladder(scene: Scene, hilum: np.ndarray, liver_low: float) -> None:
    """Pear from the neck (near the liver hilum (3,) mm) to the fundus (anterior, inferior, above `liver_low` mm).

    Wall and bile; a gallstone in a tenth of the patients.
    """
    rng, grid, canvas, an = scene.rng, scene.grid, scene.canvas, scene.anatomy
    f = an.frame_scale
    g_gb = float(np.clip(np.exp(normal(rng, 0.2)), 0.65, 1.4))
    neck = np.array([(38 + normal(rng, 6)) * f, hilum[1] + 4, hilum[2] - 5 * f])
    fundus_z = max(neck[2] - uniform(rng, 25, 45) * f * g_gb, liver_low + 5)
    fundus = np.array([(50 + normal(rng, 8)) * f, an.front_wall_y - uniform(rng, 15, 30), fundus_z])
    gb = tube(grid, np.stack([neck, 0.45 * neck + 0.55 * fundus, fundus]), np.array([5.0, 11, 13]) * f * g_gb)
    if gb is None:
        return
    box, sdf = gb
    m = canvas.paint(box, sdf < 0, Tissue.GB_WALL, GALLBLADDER, within=scene.cavity)
    canvas.tissue[box][m & (sdf < -2)] = Tissue.BILE
    if rng.random() < 0.1:
        stone = scene.blob(fundus + [0, -6, 4], [uniform(rng, 3, 7)] * 3, rotation(), 0.05).evaluate(grid)
        if stone is not None:
            canvas.paint(stone[0], stone[1] < 1, Tissue.CALCIFICATION, only_label=GALLBLADDER)


def paint_adrenals(scene: Scene, x_ivc: float, kidney_tops: dict[int, float]) -> None:
    """Thin inverted-Y limbs above-medial of the upper poles (`kidney_tops`, z mm per label), beside the crura.

    The right one behind the IVC (x = `x_ivc` mm), the left one beside the aorta. Limbs at least ~half a voxel
    thick.
    """
    rng, grid, an = scene.rng, scene.grid, scene.anatomy
    f = an.frame_scale
    s_min = float(min(grid.spacing[:2]))
    r_adr = max(uniform(rng, 3.4, 4.8) * f, 0.55 * s_min)
    for label, side, kidney in ((RIGHT_ADRENAL, 1, RIGHT_KIDNEY), (LEFT_ADRENAL, -1, LEFT_KIDNEY)):
        z_pole = kidney_tops.get(kidney, 50 * f)
        if side > 0:
            apex = np.array([x_ivc + 8 * f, 24 * f, z_pole + uniform(rng, 8, 22) * f])
        else:
            x_apex = an.aorta_x - an.aorta_radius - uniform(rng, 14, 20) * f
            apex = np.array([x_apex, 28 * f, z_pole + uniform(rng, -5, 10) * f])
        length = uniform(rng, 25, 40) * f
        limbs = [
            apex + [side * -4 * f, -length * 0.7, -length * 0.75],  # medial limb
            apex + [side * 12 * f, -length * 0.6, -length * 0.6],  # lateral limb
            apex + [side * 2 * f, length * 0.3, length * 0.25],  # body, forwards and up
        ]
        for end in limbs:
            lt = tube(grid, np.stack([apex, end + rng.normal(0, 2, 3)]), np.array([r_adr, r_adr * 0.75]))
            if lt is not None:
                scene.canvas.paint(lt[0], lt[1] < 0, Tissue.ADRENAL, label, within=scene.inner)
