"""Data in: readers and loading transforms, validated datalists, and the embedded default generator.

``monai_wsol.data.synthetic`` (the generator) is not imported here: it loads nilearn lazily, but keeping it
out of the package import keeps ``import monai_wsol.data`` light.
"""

from monai_wsol.data.datalist import (
    DatalistError,
    DatalistProblem,
    load_datalist,
    probe_image,
    validate_datalist,
)
from monai_wsol.data.preprocessing import STAGES, intensity_transform, make_preprocessing
from monai_wsol.data.readers import (
    DicomSeriesReader,
    ImageReadError,
    LoadImageChecked,
    LoadImageCheckedd,
    SimpleITKReader,
    dicom_series_files,
    make_load_transforms,
    select_reader,
)

__all__ = [
    "STAGES",
    "intensity_transform",
    "make_preprocessing",
    "DatalistError",
    "DatalistProblem",
    "DicomSeriesReader",
    "ImageReadError",
    "LoadImageChecked",
    "LoadImageCheckedd",
    "SimpleITKReader",
    "dicom_series_files",
    "load_datalist",
    "make_load_transforms",
    "probe_image",
    "select_reader",
    "validate_datalist",
]
