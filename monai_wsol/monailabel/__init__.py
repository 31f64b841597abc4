"""MONAI Label integration: serve the ``monai_wsol`` bundle to 3D Slicer / OHIF.

- :class:`WSOLInferTask`: MONAI Label's ``BundleInferTask`` for the bundle; returns the lesion mask (or the
  CAM) as the label and, in the JSON params, the predicted class, class probabilities, boxes in voxel and
  world coordinates and the threshold used; ``tau``, ``box_mode``, ``min_size`` and ``output`` are request
  parameters (and options in Slicer's panel). 2D bundles run slice by slice through 3D volumes.
- :class:`WSOLApp`: the ``MONAILabelApp`` of ``monai_wsol/monailabel/app/main.py``; answers bad requests with
  4xx (unknown model 404, unsupported format 415, unreadable image or bad parameter 400).
- :class:`LocalizationInferer`, :class:`LocalizationResultd`, :class:`UnpackDictd`: the pieces the task (and
  MONAI Label's stock ``monaibundle`` app, through the keys of ``bundle/configs/inference.json``) runs.

MONAI Label 0.8.5 needs pydicom < 3 while highdicom needs pydicom 3, so the task, the app and the server
(``task``, ``server``, ``app``) live in their own environment (``scripts/setup_monailabel.sh`` ->
``.venv-monailabel``; see ``docs/monailabel.md``). The inferer and the transforms need only MONAI: they import
everywhere, so ``bundle/configs/inference.json`` parses in the core environment too.
"""

from monai_wsol.monailabel.inferer import InputShapeError, LocalizationInferer
from monai_wsol.monailabel.transforms import LABEL_OUTPUTS, LocalizationResultd, UnpackDictd

__all__ = [
    "InputShapeError",
    "LABEL_OUTPUTS",
    "LocalizationInferer",
    "LocalizationResultd",
    "UnpackDictd",
]
