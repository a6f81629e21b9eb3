"""Field-of-view invariance: the in-plane box around the body, cropping to it and pasting predictions back.

A scanner's field of view holds the body, and often arms, the table and air around it; squeezing all of it into the
model's grid makes the organs smaller the wider the field of view. With ``preprocess.crop: body`` every volume is cut
in-plane to a square around the patient's body (HU threshold, the largest 3D connected component, a margin) before
it is resized to the model's grid, and predictions are pasted back into the full grid. The square keeps the pixel
aspect ratio; where it reaches past the image it is padded with air.

Arrays here are canonical (z, y, x) volumes (`selflabel.io.to_canonical`); a box is in their voxel indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage as ndi

#: Value of padded voxels (HU): air.
AIR_HU = -1000.0


@dataclass(frozen=True)
class CropBox:
    """In-plane box ``[y0, y1) x [x0, x1)`` of a canonical volume whose in-plane size is ``(height, width)``.

    The box may reach past the volume (negative starts, ends past the size): those voxels are padding.
    """

    y0: int
    y1: int
    x0: int
    x1: int
    height: int
    width: int

    @classmethod
    def full(cls, height: int, width: int) -> CropBox:
        """The whole slice: no crop."""
        return cls(0, height, 0, width, height, width)

    @classmethod
    def from_list(cls, values: list[int]) -> CropBox:
        return cls(*(int(v) for v in values))

    def to_list(self) -> list[int]:
        return [self.y0, self.y1, self.x0, self.x1, self.height, self.width]

    @property
    def size(self) -> tuple[int, int]:
        """In-plane size of the crop, (rows, columns) in source voxels."""
        return self.y1 - self.y0, self.x1 - self.x0

    def about_centre(self, side_mm: float, spacing: tuple[float, float, float]) -> CropBox:
        """A square of `side_mm` with this box's centre; spacing: (z, y, x) voxel size in mm."""
        sy, sx = float(spacing[1]), float(spacing[2])
        rows, cols = max(1, int(round(side_mm / sy))), max(1, int(round(side_mm / sx)))
        y0 = int(round((self.y0 + self.y1 - rows) / 2))
        x0 = int(round((self.x0 + self.x1 - cols) / 2))
        return CropBox(y0, y0 + rows, x0, x0 + cols, self.height, self.width)

    def side_mm(self, spacing: tuple[float, float, float]) -> float:
        """The larger in-plane side of the box in mm."""
        return max(self.size[0] * float(spacing[1]), self.size[1] * float(spacing[2]))


def body_box(
    image: np.ndarray,
    spacing: tuple[float, float, float],
    threshold_hu: float,
    margin_mm: float,
    opening_mm: float = 0.0,
) -> CropBox:
    """Square in-plane box (in mm) around the largest 3D connected component of voxels above `threshold_hu`.

    Args:
        image: canonical (Z, H, W) CT in HU. spacing: (z, y, x) voxel size in mm.
        threshold_hu: body voxels are brighter (-500 HU separates tissue from air and foam).
        margin_mm: added on every side.
        opening_mm: when > 0, the mask is first eroded in-plane by a square of this half-side, so that arms (or a
            table) touching the trunk through a contact narrower than twice it come loose and only the trunk is the
            largest component; its extent then grows back by the same amount (a morphological opening's extent).
    Returns:
        The box; the whole slice when nothing is above the threshold.
    """
    height, width = image.shape[1:]
    sy, sx = float(spacing[1]), float(spacing[2])
    mask = image > threshold_hu
    grow_y = grow_x = 0
    if opening_mm > 0:
        grow_y, grow_x = int(round(opening_mm / sy)), int(round(opening_mm / sx))
        # a square's erosion is separable (two 1D minimum filters): fast on 512x512 slices, where a disc is not
        mask = ndi.minimum_filter(mask, size=(1, 2 * grow_y + 1, 2 * grow_x + 1), mode="nearest")
    body = cc3d.largest_k(mask, k=1, connectivity=6) > 0
    rows, cols = np.flatnonzero(body.any(axis=(0, 2))), np.flatnonzero(body.any(axis=(0, 1)))
    if rows.size == 0:
        return body_box(image, spacing, threshold_hu, margin_mm) if opening_mm > 0 else CropBox.full(height, width)
    r0, r1 = max(0, rows[0] - grow_y), min(height, rows[-1] + 1 + grow_y)
    c0, c1 = max(0, cols[0] - grow_x), min(width, cols[-1] + 1 + grow_x)
    side_mm = max((r1 - r0) * sy, (c1 - c0) * sx) + 2 * margin_mm
    cy, cx = (r0 + r1) / 2, (c0 + c1) / 2
    half_y, half_x = side_mm / sy / 2, side_mm / sx / 2
    y0, x0 = int(round(cy - half_y)), int(round(cx - half_x))
    return CropBox(y0, y0 + max(1, int(round(2 * half_y))), x0, x0 + max(1, int(round(2 * half_x))), height, width)


def crop(volume: np.ndarray, box: CropBox, fill: float) -> np.ndarray:
    """The box of a canonical (Z, H, W) volume, (Z, h, w); voxels outside the volume take `fill`."""
    if box == CropBox.full(box.height, box.width):
        return volume
    h, w = box.size
    out = np.full((volume.shape[0], h, w), fill, dtype=volume.dtype)
    ys, xs = slice(max(box.y0, 0), min(box.y1, box.height)), slice(max(box.x0, 0), min(box.x1, box.width))
    out[:, ys.start - box.y0 : ys.stop - box.y0, xs.start - box.x0 : xs.stop - box.x0] = volume[:, ys, xs]
    return out


def paste(cropped: np.ndarray, box: CropBox) -> np.ndarray:
    """Inverse of `crop`: a (Z, h, w) array back into a (Z, H, W) volume, 0 (background) outside the box."""
    if box == CropBox.full(box.height, box.width):
        return cropped
    out = np.zeros((cropped.shape[0], box.height, box.width), dtype=cropped.dtype)
    ys, xs = slice(max(box.y0, 0), min(box.y1, box.height)), slice(max(box.x0, 0), min(box.x1, box.width))
    out[:, ys, xs] = cropped[:, ys.start - box.y0 : ys.stop - box.y0, xs.start - box.x0 : xs.stop - box.x0]
    return out
