"""What every organ painter shares: the generator, grid, anatomy, canvas and body masks, and the organ labels.

Positions are mm in the patient frame (x right, y anterior, z superior). In the painters' formulas `f` is the
frame scale, `W` the cavity half-width and `yf` the y of the inner anterior wall (`Anatomy` fields).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from selflabel.labels import FLARE22_LABELS
from selflabel.phantom.anatomy import Anatomy
from selflabel.phantom.draws import uniform
from selflabel.phantom.shapes import Blob, Box, Canvas, Grid, shape_coefficients, tube
from selflabel.phantom.tissue import Tissue

LIVER = FLARE22_LABELS["liver"]
RIGHT_KIDNEY = FLARE22_LABELS["right_kidney"]
SPLEEN = FLARE22_LABELS["spleen"]
PANCREAS = FLARE22_LABELS["pancreas"]
AORTA = FLARE22_LABELS["aorta"]
IVC = FLARE22_LABELS["inferior_vena_cava"]
RIGHT_ADRENAL = FLARE22_LABELS["right_adrenal_gland"]
LEFT_ADRENAL = FLARE22_LABELS["left_adrenal_gland"]
GALLBLADDER = FLARE22_LABELS["gallbladder"]
ESOPHAGUS = FLARE22_LABELS["esophagus"]
STOMACH = FLARE22_LABELS["stomach"]
DUODENUM = FLARE22_LABELS["duodenum"]
LEFT_KIDNEY = FLARE22_LABELS["left_kidney"]


@dataclass
class Scene:
    """The painting context. cavity, inner: full-grid masks (x, y, z) from `body.BodyMasks`."""

    rng: np.random.Generator
    grid: Grid
    anatomy: Anatomy
    canvas: Canvas
    cavity: np.ndarray
    inner: np.ndarray

    def blob(
        self,
        center: Sequence[float],
        axes: Sequence[float],
        rot: np.ndarray,
        amplitude: float,
        bend: tuple[float, float] = (0.0, 0.0),
    ) -> Blob:
        """A `Blob` (centre and semi-axes mm) whose harmonic coefficients of `amplitude` are drawn now."""
        coef = shape_coefficients(self.rng, amplitude)
        return Blob(np.asarray(center, float), np.asarray(axes, float), rot, coef, bend)

    def hollow(
        self,
        sdf_box: tuple[Box, np.ndarray],
        label: int,
        wall: float,
        content: Tissue,
        gas_p: float,
        gas_depth: tuple[float, float] = (0.25, 0.6),
    ) -> None:
        """A hollow organ in the cavity, all of it labelled: `wall` mm of bowel wall, content, and (with
        probability `gas_p`) gas on the anterior (non-dependent) side down to a `gas_depth` fraction of the lumen.
        """
        box, sdf = sdf_box
        canvas = self.canvas
        m = canvas.paint(box, sdf < 0, Tissue.BOWEL_WALL, label, within=self.cavity)
        lumen = m & (sdf < -wall)
        canvas.tissue[box][lumen] = content
        if self.rng.random() < gas_p and lumen.any():
            _, yy, _ = self.grid.coords(box)
            ys = np.broadcast_to(yy, lumen.shape)[lumen]
            y_level = ys.max() - uniform(self.rng, *gas_depth) * (ys.max() - ys.min())
            canvas.tissue[box][lumen & (yy > y_level)] = Tissue.GAS

    def vessel(
        self,
        points: Sequence[Sequence[float]],
        radii: Sequence[float],
        tissue: Tissue,
        squash: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        """An unlabelled vessel (label 0 except inside the liver) along `points` (K, 3) mm with `radii` (K,) mm."""
        tb = tube(self.grid, np.asarray(points, float), np.asarray(radii, float), squash)
        if tb is not None:
            m = self.canvas.paint(tb[0], tb[1] < 0, tissue, within=self.inner)
            self.canvas.label[tb[0]][m & (self.canvas.label[tb[0]] != LIVER)] = 0
