"""The abdominal contents: the 13 FLARE22 organs and the unlabelled structures around them.

`paint_organs` is the one place that fixes the painting order (a later structure wins the label where it is
allowed) and so the order of the draws from the generator: changing either changes what a seed produces.
"""

from __future__ import annotations

import numpy as np

from selflabel.phantom.anatomy import Anatomy
from selflabel.phantom.body import BodyMasks
from selflabel.phantom.draws import normal
from selflabel.phantom.organs.distractors import (
    paint_celiac_trunk,
    paint_colon,
    paint_portal_vein,
    paint_sma,
    paint_small_bowel,
    paint_splenic_vein,
)
from selflabel.phantom.organs.scene import Scene
from selflabel.phantom.organs.solid import (
    paint_adrenals,
    paint_gallbladder,
    paint_kidneys,
    paint_liver,
    paint_liver_cysts,
    paint_liver_veins,
    paint_pancreas,
    paint_spleen,
)
from selflabel.phantom.organs.tubes import paint_aorta, paint_duodenum, paint_esophagus, paint_ivc, paint_stomach
from selflabel.phantom.shapes import Canvas, Grid
from selflabel.phantom.tissue import Tissue

__all__ = ["paint_organs"]


def paint_organs(rng: np.random.Generator, grid: Grid, anatomy: Anatomy, canvas: Canvas, masks: BodyMasks) -> None:
    """Paint bowel, vessels and the 13 FLARE22 organs into `canvas`, inside the body's `masks`.

    Landmarks that several structures share (mm) are drawn here, where the generator has always drawn them.
    """
    scene = Scene(rng, grid, anatomy, canvas, masks.cavity, masks.inner)
    an, f = anatomy, anatomy.frame_scale
    bowel_content = Tissue.ORAL_CONTRAST if rng.random() < 0.15 else Tissue.FLUID
    paint_colon(scene)
    paint_small_bowel(scene, bowel_content)
    liver_low = paint_liver(scene)
    x_ivc = an.aorta_x + (34 + normal(rng, 3)) * f
    hilum = np.array([35 * f, 62 * f, an.z_pylorus + 30 * f]) + rng.normal(0, 4, 3)  # of the liver
    paint_liver_veins(scene, x_ivc, hilum)
    paint_liver_cysts(scene)
    x_head = 30 * f + normal(rng, 4)  # pancreatic head
    confluence = np.array([10 * f, 50 * f, an.z_pylorus - 12 * f]) + rng.normal(0, 3, 3)  # portal
    paint_portal_vein(scene, confluence, hilum)
    paint_celiac_trunk(scene, x_head)
    z_renal_veins = normal(rng, 6) * f + 5
    paint_sma(scene)
    paint_spleen(scene)
    tail_end = np.array([-0.62 * an.cavity_half_width, 28 * f, an.z_pylorus + 25 * f]) + rng.normal(0, 4, 3)
    body_pt = np.array([-25 * f, 62 * f, an.z_pylorus - 3 * f]) + rng.normal(0, 4, 3)  # pancreatic body
    paint_splenic_vein(scene, tail_end, body_pt, confluence)
    x_py, y_py, ge = paint_stomach(scene, bowel_content)
    kidney_tops = paint_kidneys(scene, x_ivc, z_renal_veins)
    paint_duodenum(scene, x_py, y_py, x_head, bowel_content)
    paint_pancreas(scene, x_head, body_pt, tail_end)
    paint_gallbladder(scene, hilum, liver_low)
    paint_ivc(scene, x_ivc, z_renal_veins)
    paint_aorta(scene)
    paint_esophagus(scene, ge)
    paint_adrenals(scene, x_ivc, kidney_tops)
