"""The MONAI Label app folder (``main.py`` + ``lib``): ``monailabel start_server --app <this folder> ...``.

A package only so that it ships with the wheel; MONAI Label loads ``main.py`` by path (docs/monailabel.md).
"""
