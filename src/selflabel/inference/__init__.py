"""Prediction with a trained run folder: NIfTI in, NIfTI out with the input's geometry.

Per case: read -> the run's preprocessing (canonical orientation, normalisation, resize) -> all axial slices in
batches (mixed precision where available, optional flip TTA) -> softmax resized to the original in-plane grid ->
arg-max -> optional per-organ largest connected component and main axial slab -> back to the input's orientation
-> written atomically as ``<case>.nii.gz`` (FLARE's naming: the ``_0000`` suffix dropped) with the input's affine
and header.
"""

from selflabel.inference.folder import output_name, predict_folder
from selflabel.inference.postprocess import clear_outside, largest_components, main_axial_slab
from selflabel.inference.predictor import Predictor, run_list

__all__ = [
    "Predictor",
    "clear_outside",
    "largest_components",
    "main_axial_slab",
    "output_name",
    "predict_folder",
    "run_list",
]
