"""monai_wsol: weakly supervised lesion localization for MONAI.

Subpackages (one concept per module):

- ``networks.blocks``: the dual-suppression (SFS) block and the baseline plug-ins.
- ``networks.nets``: classifiers that localize (CAM in the graph), 2D and 3D.
- ``transforms``: CAM -> normalised map -> mask -> boxes, as MONAI transforms.
- ``metrics``: the WSOL protocol's metrics (MaxBoxAcc, MaxBoxAccV2, PxAP, ...), 2D and 3D.
- ``data``: the embedded default data generator, readers, datalist checks.
- ``writers``: DICOM-SEG, NIfTI and box JSON outputs.
- ``engines``: training / inference / evaluation workflows used by the bundle.
"""

__version__ = "0.1.0"
