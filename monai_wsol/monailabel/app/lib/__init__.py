"""The app's library, MONAI Label's layout: the app class and the infer task.

Both come from ``monai_wsol.monailabel``.
"""

from monai_wsol.monailabel.server import WSOLApp
from monai_wsol.monailabel.task import WSOLInferTask

__all__ = ["WSOLApp", "WSOLInferTask"]
