"""The body around the organs: skin, fat and muscle wall, CT table, diaphragm with lungs and heart, posterior
muscles and crura, spine and ribs.

Each structure is one function painting into the `Canvas`; `paint_body` calls them in the order that sets which
overwrites which, and that fixes the draws from the generator (so a seed keeps its arrays). Coordinates are mm in
the patient frame (x right, y anterior, z superior); in-plane arrays are (x, y), volumes (x, y, z).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selflabel.phantom.anatomy import Anatomy
from selflabel.phantom.draws import normal, uniform
from selflabel.phantom.shapes import Blob, Canvas, Grid, rotation, shape_coefficients, tube
from selflabel.phantom.tissue import Tissue

#: Height of one vertebra (body and disc), mm for a frame scale of 1.
_VERTEBRA_HEIGHT = 32.0


@dataclass
class BodyMasks:
    """Full-grid masks (x, y, z) the organs are painted within.

    inner: inside the muscle wall, bone excluded. cavity: the abdominal cavity (inside the wall, below the
    diaphragm, where the body left fat).
    """

    inner: np.ndarray
    cavity: np.ndarray


@dataclass
class _Outline:
    """The body in polar form around its centre line (x = 0, y = `Anatomy.body_centre_y`).

    rho, theta: (x, y) distance (mm) and angle (rad, 0 to the right, pi/2 anterior) from the centre. r_out: (x, y)
    skin radius in mm at z = 0 along theta; zscale: (z,) outline scale per slice. q: (x, y, z) rho / (r_out *
    zscale), < 1 inside the skin. q_fat, q_cav: (x, y) q at the inner border of the subcutaneous fat and of the
    muscle wall.
    """

    rho: np.ndarray
    theta: np.ndarray
    r_out: np.ndarray
    zscale: np.ndarray
    q: np.ndarray
    q_fat: np.ndarray
    q_cav: np.ndarray


def paint_body(rng: np.random.Generator, grid: Grid, anatomy: Anatomy, canvas: Canvas) -> BodyMasks:
    """Paint everything but the abdominal organs; returns the masks the organs are painted within."""
    outline = _outline(rng, grid, anatomy)
    body = outline.q < 1
    inside_fat = outline.q < outline.q_fat[:, :, None]
    inner = outline.q < outline.q_cav[:, :, None]
    _paint_wall(outline, body, canvas)
    _paint_table(rng, grid, anatomy, outline.zscale, body, canvas)
    below, thorax = _paint_diaphragm(rng, grid, anatomy, inner, canvas)
    _paint_heart(rng, grid, anatomy, thorax, canvas)
    _paint_back_muscles(grid, anatomy, inside_fat, canvas)
    _paint_psoas(rng, grid, anatomy, inner, canvas)
    _paint_crura(grid, anatomy, inner, canvas)
    z_disc = normal(rng, 6)  # z of the disc nearest the origin (mm)
    bone = _paint_spine(rng, grid, anatomy, z_disc, inside_fat, canvas)
    bone |= _paint_ribs(rng, grid, anatomy, outline, z_disc, canvas)
    cavity = inner & below & (canvas.tissue == Tissue.FAT)
    return BodyMasks(inner=inner & ~bone, cavity=cavity)


def _outline(rng: np.random.Generator, grid: Grid, an: Anatomy) -> _Outline:
    """Skin: a superellipse (flatter at the back) with low-order wobble, scaled per slice; fat and muscle layers.

    The fat is thickest in front (~`fat_thickness`) and the muscle wall thins to the linea alba on the midline.
    """
    x, y, z = grid.axes
    dx, dy = x[:, None], y[None, :] - np.float32(an.body_centre_y)
    rho = np.sqrt(dx * dx + dy * dy) + np.float32(1e-3)
    theta = np.arctan2(dy, dx)
    ct, st = np.abs(np.cos(theta)), np.abs(np.sin(theta))
    p = np.where(dy > 0, np.float32(2.3), np.float32(2.9))
    r_out = ((ct / an.body_half_width) ** p + (st / an.body_half_depth) ** p) ** (-1.0 / p)
    wobble = np.ones_like(theta)
    for k in (2, 3, 4):
        wobble += normal(rng, 0.025) * np.cos(k * theta) + normal(rng, 0.02) * np.sin(k * theta)
    r_out = (r_out * wobble).astype(np.float32)
    zn = z / np.float32(200.0)
    zscale = (1.0 + normal(rng, 0.05) * zn + normal(rng, 0.04) * zn * zn).astype(np.float32)
    q = (rho / r_out)[:, :, None] / zscale[None, None, :]

    ant = np.clip(np.sin(theta), 0, 1)
    fat = an.fat_thickness * (0.55 + 0.45 * ant + 0.15 * np.cos(2 * theta) * uniform(rng, -1, 1)) + normal(rng, 2)
    fat = np.maximum(fat, 3.0).astype(np.float32)
    alba = np.exp(-(((theta - np.pi / 2) / 0.07) ** 2))
    mus = an.muscle_thickness * (1.0 + 0.35 * ct) * (1.0 - 0.75 * alba)
    return _Outline(rho, theta, r_out, zscale, q, q_fat=1 - fat / r_out, q_cav=1 - (fat + mus) / r_out)


def _paint_wall(outline: _Outline, body: np.ndarray, canvas: Canvas) -> None:
    """Subcutaneous fat everywhere inside the skin, 2.5 mm of skin, the muscle wall inside the fat."""
    q = outline.q
    t = canvas.tissue
    t[body] = Tissue.FAT
    t[body & (q >= (1 - 2.5 / outline.r_out)[:, :, None])] = Tissue.SKIN
    wall = (q < outline.q_fat[:, :, None]) & (q >= outline.q_cav[:, :, None])
    t[wall] = Tissue.MUSCLE


def _paint_table(
    rng: np.random.Generator, grid: Grid, an: Anatomy, zscale: np.ndarray, body: np.ndarray, canvas: Canvas
) -> None:
    """The CT table under the back: a 22 mm curved foam core in a 3 mm shell, outside the body."""
    x, y, _ = grid.axes
    X, Y = x[:, None], y[None, :]
    y_tab = an.body_centre_y - an.body_half_depth * float(zscale.max()) - uniform(rng, 2, 15)
    tab_top = y_tab + (X**2) / 4000.0
    tab = (Y <= tab_top) & (Y > tab_top - 22) & (np.abs(X) < an.body_half_width + 60)
    shell = tab & ((Y > tab_top - 3) | (Y <= tab_top - 19))
    t = canvas.tissue
    t[np.broadcast_to((tab & ~shell)[:, :, None], t.shape) & ~body] = Tissue.FOAM
    t[np.broadcast_to(shell[:, :, None], t.shape) & ~body] = Tissue.TABLE


def _paint_diaphragm(
    rng: np.random.Generator, grid: Grid, an: Anatomy, inner: np.ndarray, canvas: Canvas
) -> tuple[np.ndarray, np.ndarray]:
    """Two domes (right higher) sloping down to the sides and the back; lungs above them.

    Returns the masks (x, y, z) below the diaphragm and of the thorax (inside the wall, above the diaphragm).
    """
    x, y, z = grid.axes
    X, Y = x[:, None], y[None, :]
    xr = X / np.float32(an.cavity_half_width)
    y_mid = 0.5 * (an.front_wall_y - 50.0)
    yr = (Y - np.float32(y_mid)) / np.float32(0.5 * (an.front_wall_y + 50.0))
    dome = an.z_dome_left + (an.z_dome_right - an.z_dome_left) / (1 + np.exp(-X / 30.0))
    zd = dome - 45 * np.abs(xr) ** 3 - 55 * np.clip(-yr, 0, None) ** 2 - 12 * np.clip(yr, 0, None) ** 2
    zd = (zd - 15 * np.exp(-((X / 40.0) ** 2))).astype(np.float32)
    thick = uniform(rng, 4, 7)
    below = z[None, None, :] < zd[:, :, None]
    thorax = inner & (z[None, None, :] >= zd[:, :, None] + thick)
    canvas.tissue[inner & ~below & ~thorax] = Tissue.MUSCLE
    canvas.tissue[thorax] = Tissue.LUNG
    return below, thorax


def _paint_heart(rng: np.random.Generator, grid: Grid, an: Anatomy, thorax: np.ndarray, canvas: Canvas) -> None:
    """The heart above the domes, left of the midline, within the thorax."""
    f = an.frame_scale
    heart = Blob(
        np.array([-20 * f, 0.6 * an.front_wall_y, 0.5 * (an.z_dome_right + an.z_dome_left) + 60 * f]),
        np.array([55 * f, 0.33 * an.front_wall_y + 5, 50 * f]),
        rotation(yaw=normal(rng, 0.2)),
        shape_coefficients(rng, 0.05),
    ).evaluate(grid)
    if heart is not None:
        canvas.paint(heart[0], heart[1] < 1, Tissue.HEART, within=thorax)


def _paint_back_muscles(grid: Grid, an: Anatomy, inside_fat: np.ndarray, canvas: Canvas) -> None:
    """Paraspinal muscles (all slices) and quadratus lumborum (below z = 40 mm): elliptic cross-sections."""
    f = an.frame_scale
    x, y, z = grid.axes
    X, Y = x[:, None], y[None, :]
    para = np.zeros(X.shape[:1] + Y.shape[1:], bool)
    for side in (-1, 1):
        para |= ((X - side * 30 * f) / (26 * f)) ** 2 + ((Y + 44 * f) / (22 * f)) ** 2 < 1
    quad = np.zeros_like(para)
    for side in (-1, 1):
        quad |= ((X - side * 58 * f) / (19 * f)) ** 2 + ((Y + 26 * f) / (10 * f)) ** 2 < 1
    canvas.tissue[inside_fat & para[:, :, None]] = Tissue.MUSCLE
    canvas.tissue[inside_fat & quad[:, :, None] & (z[None, None, :] < 40 * f)] = Tissue.MUSCLE


def _paint_psoas(rng: np.random.Generator, grid: Grid, an: Anatomy, inner: np.ndarray, canvas: Canvas) -> None:
    """Psoas muscles: cones beside the spine, widening downwards."""
    f = an.frame_scale
    for side in (-1, 1):
        ps = tube(
            grid,
            np.array([[side * 22, 6, 45], [side * 32, 10, -20], [side * 40, 18, -140]]) * f,
            np.array([4, 15, 25]) * f * uniform(rng, 0.8, 1.2),
        )
        if ps is not None:
            canvas.paint(ps[0], ps[1] < 0, Tissue.MUSCLE, within=inner)


def _paint_crura(grid: Grid, an: Anatomy, inner: np.ndarray, canvas: Canvas) -> None:
    """Diaphragmatic crura beside the aorta, meeting in front of it at the hiatus (the right one longer)."""
    f = an.frame_scale
    x_ao, y_ao, r_ao = an.aorta_x, an.aorta_y, an.aorta_radius
    for side, top in ((1, an.z_gastro_oesophageal - 5), (-1, an.z_gastro_oesophageal - 15)):
        off = side * (r_ao + 6)
        crus = tube(
            grid,
            np.array(
                [
                    [x_ao + off * 0.7, y_ao - 4, -45 * f - (10 if side > 0 else 0)],
                    [x_ao + off, y_ao + 2, 20 * f],
                    [x_ao + off * 0.6, y_ao + r_ao + 4, top],
                ]
            ),
            np.array([3.0, 5.5, 5.0]) * f,
            squash=(0.8, 1.4, 1.0),
        )
        if crus is not None:
            canvas.paint(crus[0], crus[1] < 0, Tissue.MUSCLE, within=inner)


def _paint_spine(
    rng: np.random.Generator, grid: Grid, an: Anatomy, z_disc: float, inside_fat: np.ndarray, canvas: Canvas
) -> np.ndarray:
    """Vertebral bodies (marrow, cortex, endplates), discs, canal, arches, spinous and transverse processes.

    Returns the bone mask (x, y, z): vertebral bodies and posterior elements.
    """
    f = an.frame_scale
    z = grid.axes[2]
    phase = ((z - z_disc) / (_VERTEBRA_HEIGHT * f)) % 1.0  # 0 at the bottom of a disc, per vertebra
    disc = phase < 0.24
    box = grid.box((-60 * f, -95 * f, -1e4), (60 * f, 25 * f, 1e4))
    bone = np.zeros(grid.shape, bool)
    if box is None:
        return bone
    bx, by, _ = grid.coords(box)
    vb, vb_cortex, canal, arch, spinous, transverse = _vertebra_sections(rng, bx[:, :, 0], by[:, :, 0], f)
    zb = z[box[2]]
    ph = phase[box[2]]
    body3 = vb[:, :, None] & ~disc[box[2]][None, None, :]
    tb = canvas.tissue[box]
    tb[vb[:, :, None] & disc[box[2]][None, None, :]] = Tissue.DISC
    tb[body3] = Tissue.BONE_MARROW
    endplate = (ph < 0.29) | (ph > 0.95)
    tb[body3 & (vb_cortex[:, :, None] | endplate[None, None, :])] = Tissue.BONE_CORTEX
    post = ((ph > 0.3) & (ph < 0.95))[None, None, :]
    sp = ((ph > 0.35) & (ph < 0.9))[None, None, :]
    tr = ((ph > 0.45) & (ph < 0.75) & (zb < 45 * f))[None, None, :]
    elements = (arch[:, :, None] & post) | (spinous[:, :, None] & sp) | (transverse[:, :, None] & tr)
    elements &= inside_fat[box]
    tb[elements] = Tissue.RIB  # thin posterior elements: cortex and marrow averaged
    tb[np.broadcast_to(canal[:, :, None], tb.shape)] = Tissue.CSF
    bone[box] = body3 | elements
    return bone


def _vertebra_sections(rng: np.random.Generator, bx: np.ndarray, by: np.ndarray, f: float) -> tuple[np.ndarray, ...]:
    """In-plane (x, y) masks of a vertebra at coordinates `bx` (n, 1), `by` (1, m) mm, frame scale `f`.

    Returns body, body cortex (2.5 mm), canal, arch, spinous process, transverse processes.
    """
    a_v, b_v = 22 * f * uniform(rng, 0.9, 1.1), 17 * f
    vb = (bx / a_v) ** 2 + (by / b_v) ** 2 < 1
    vb_cortex = vb & (((bx / (a_v - 2.5)) ** 2 + (by / (b_v - 2.5)) ** 2) >= 1)
    cy = -b_v - 11 * f
    rc = np.sqrt(bx**2 + (by - cy) ** 2)
    canal = rc < 9 * f
    arch = (rc >= 9 * f) & (rc < 14 * f) & (by < cy + 6 * f)
    spinous = (np.abs(bx) < 3.5 * f) & (by < cy - 12 * f) & (by > cy - 44 * f)
    transverse = (np.abs(by - cy - 5 * f) < 3 * f) & (np.abs(bx) > 12 * f) & (np.abs(bx) < 38 * f)
    return vb, vb_cortex, canal, arch, spinous, transverse


def _paint_ribs(
    rng: np.random.Generator, grid: Grid, an: Anatomy, outline: _Outline, z_disc: float, canvas: Canvas
) -> np.ndarray:
    """Ribs 5-12 in the chest wall, sloping down towards the front; costal cartilage in front (ribs 5-10).

    Returns the mask (x, y, z) of ribs and cartilage.
    """
    f = an.frame_scale
    _, y, z = grid.axes
    q, q_cav, r_out = outline.q, outline.q_cav, outline.r_out
    ring = (q > (q_cav + 0.5 / r_out)[:, :, None]) & (q < (q_cav + 7.5 / r_out)[:, :, None])
    ring &= z[None, None, :] > -10 * f
    ii, jj, kk = np.nonzero(ring)
    phi = np.arccos(np.clip(-(y[jj] - an.body_centre_y) / outline.rho[ii, jj], -1, 1))  # 0 at the back, pi in front
    zr = z[kk]
    rib = np.zeros(ii.shape, bool)
    cart = np.zeros(ii.shape, bool)
    drop = uniform(rng, 110, 150) * f
    h_v = _VERTEBRA_HEIGHT * f
    z_t12 = z_disc + 1.5 * h_v
    half_h = 4.0 * f
    for k in range(5, 13):
        z_head = z_t12 + (12 - k) * h_v + normal(rng, 3)
        phi_max = {11: 1.9, 12: 1.3}.get(k, 2.9 - 0.08 * (k - 5))
        frac = np.clip((phi - 0.45) / (np.pi - 0.45), 0, 1)
        zc = z_head - drop * frac**1.2
        hit = (np.abs(zr - zc) < half_h) & (phi > 0.45) & (phi < phi_max)
        rib |= hit & (phi < phi_max - 0.55)
        cart |= hit & (phi >= phi_max - 0.55) & (k <= 10)
    canvas.tissue[ii[cart], jj[cart], kk[cart]] = Tissue.CARTILAGE
    canvas.tissue[ii[rib], jj[rib], kk[rib]] = Tissue.RIB
    bone = np.zeros(grid.shape, bool)
    bone[ii[rib | cart], jj[rib | cart], kk[rib | cart]] = True
    return bone
