from monai_wsol.networks import blocks, nets  # noqa: F401
