"""Reading and writing scans: NIfTI volumes with their geometry, and nnU-Net v2 raw datasets."""

from selflabel.io.dataset import (
    CHANNEL_SUFFIX,
    Case,
    Dataset,
    case_files,
    case_name,
    list_cases,
    load_dataset,
    read_case,
    single_files,
    write_dataset_json,
)
from selflabel.io.nifti import (
    CANONICAL_AXCODES,
    Volume,
    axial_axis,
    canonical_axes,
    check_same_grid,
    from_canonical,
    read_image,
    read_label,
    to_canonical,
    write_nifti,
)

__all__ = [
    "CANONICAL_AXCODES",
    "CHANNEL_SUFFIX",
    "Case",
    "Dataset",
    "Volume",
    "axial_axis",
    "canonical_axes",
    "case_files",
    "case_name",
    "check_same_grid",
    "from_canonical",
    "list_cases",
    "load_dataset",
    "read_case",
    "read_image",
    "read_label",
    "single_files",
    "to_canonical",
    "write_dataset_json",
    "write_nifti",
]
