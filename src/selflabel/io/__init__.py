"""Reading and writing scans: NIfTI volumes and DICOM CT series with their geometry, and nnU-Net raw datasets."""

from selflabel.io.dataset import (
    CHANNEL_SUFFIX,
    Case,
    Dataset,
    case_files,
    case_name,
    image_files,
    list_cases,
    list_scans,
    load_dataset,
    read_case,
    single_files,
    write_dataset_json,
)
from selflabel.io.nifti import read_header, read_image, read_label, source_stamp, write_nifti
from selflabel.io.volume import (
    CANONICAL_AXCODES,
    Volume,
    axial_axis,
    canonical_axes,
    check_same_grid,
    from_canonical,
    to_canonical,
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
    "image_files",
    "list_cases",
    "list_scans",
    "load_dataset",
    "read_case",
    "read_header",
    "read_image",
    "read_label",
    "single_files",
    "source_stamp",
    "to_canonical",
    "write_dataset_json",
    "write_nifti",
]
