"""Lesion masks as DICOM Segmentation objects referencing the source series (highdicom).

Axis conventions (the usual trap): MONAI's ``PydicomReader`` returns (x=column, y=row, z) with the slices in
InstanceNumber order; highdicom wants ``(frames, rows, columns)`` with one frame per source instance, in the
order of the ``source_images`` list. :func:`~monai_wsol.writers.dicom_source.frames_on_source` makes that
mapping (shared with the Parametric Map of the CAM). Empty frames are kept so that the SEG has one frame per
source slice, and every per-frame functional group carries a ``SegmentIdentificationSequence`` so MONAI's
``PydicomReader`` reads the SEG back (it refuses SEGs without it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_wsol import __version__
from monai_wsol.writers.dicom_source import (
    DicomSource,
    frames_on_source,
    import_highdicom,
    new_instance_fields,
    require_frame_of_reference,
    save_dicom,
    source_instances,
)

__all__ = ["write_dicom_seg"]


def write_dicom_seg(
    mask: np.ndarray | torch.Tensor,
    source_dicom: DicomSource,
    out_path: str | os.PathLike,
    segment_label: str = "lesion",
    algorithm_name: str = "monai_wsol",
    series_description: str = "monai_wsol lesion mask",
    series_number: int = 9901,
    manufacturer: str = "monai_wsol",
) -> Path:
    """Write a binary lesion mask as a DICOM SEG that references its source series.

    Args:
        mask: (X, Y[, Z]) or (1, X, Y[, Z]) array, non-zero = lesion, on the grid MONAI's ``PydicomReader``
            loads the source with (x = column, y = row, z = instances in InstanceNumber order).
        source_dicom: the source series folder, one DICOM file (2D), the series' files or its instances
            already read (:data:`~monai_wsol.writers.dicom_source.DicomSource`).
        out_path: the SEG file to write (atomically).
        segment_label: the segment's label (also its description).
        algorithm_name: recorded as the automatic segmentation algorithm.
        series_description, series_number, manufacturer: header fields of the new series.

    Returns:
        ``Path(out_path)``.

    Raises:
        ImportError: highdicom missing. ValueError: the mask does not match the source geometry.
    """
    hd = import_highdicom("write_dicom_seg")
    from pydicom.sr.codedict import codes

    datasets, frames = frames_on_source(mask, source_instances(source_dicom), source_dicom)
    frames = frames != 0
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm_name, version=__version__, family=codes.cid7162.ArtificialIntelligence
        ),
    )
    require_frame_of_reference(datasets, source_dicom, "a SEG")
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        **new_instance_fields(hd, series_number, manufacturer),
        series_description=series_description,
        omit_empty_frames=False,
    )
    _ensure_segment_identification(seg)
    return save_dicom(seg, out_path)


def _ensure_segment_identification(seg: Any) -> None:
    """Put the ``SegmentIdentificationSequence`` in every per-frame group, and only there.

    MONAI's ``PydicomReader`` reads it per frame, while highdicom puts it in the shared groups when there is
    one segment; a functional group may be in the shared or in the per-frame groups, not both (``dciodvfy``:
    "Functional Group Sequence already used in SharedFunctionalGroupsSequence"), so it is moved.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else None
    number = 1
    if shared is not None and "SegmentIdentificationSequence" in shared:
        number = int(shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        del shared.SegmentIdentificationSequence
    for group in seg.PerFrameFunctionalGroupsSequence:
        if "SegmentIdentificationSequence" not in group:
            item = Dataset()
            item.ReferencedSegmentNumber = number
            group.SegmentIdentificationSequence = DicomSequence([item])
