r"""MONAI Label app serving ``monai_wsol`` bundles: lesion class, CAM, mask and boxes for 3D Slicer / OHIF.

Run it (in the MONAI Label environment, ``bash scripts/setup_monailabel.sh``)::

    APP="$(.venv-monailabel/bin/python -c \
        'import monai_wsol.monailabel.app as a, os; print(os.path.dirname(a.__file__))')"
    .venv-monailabel/bin/monailabel start_server --app "$APP" \
        --studies /path/to/studies --host 127.0.0.1 --port 8000 \
        --conf bundle bundle --conf models monai_wsol

Options (``--conf KEY VALUE``): ``bundle`` (folder, or ``name=path,...``), ``models`` (name of a single
bundle, default ``monai_wsol``), ``cam_model`` (``true``: also serve ``<name>_cam`` returning the CAM),
``preload``.
MONAI Label finds the app class as the ``MONAILabelApp`` subclass in this module's namespace; it lives in
``monai_wsol.monailabel.server`` (re-exported by ``lib``) so that it is importable and tested.
"""

from lib import WSOLApp, WSOLInferTask

__all__ = ["WSOLApp", "WSOLInferTask"]
