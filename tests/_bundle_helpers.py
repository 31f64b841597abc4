"""Shared by the bundle/training/DDP/notebook tests: a tiny embedded-default data set and bundle runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
TRAIN = str(CONFIGS / "train.json")
INFERENCE = str(CONFIGS / "inference.json")

#: overrides that make a training run take seconds on a 2-core CPU
TINY = {"epochs": 2, "batch_size": 4, "spatial_size": [64, 64], "num_workers": 0, "amp": False}
#: a plain CNN (the bundle's default backbone) of 3 narrow convolutions: same code path, milliseconds a batch
TINY_CNN = {"channels": [4, 8], "stages": [1, 2]}


def make_tiny_data(out_dir: Path, seed: int = 0) -> Path:
    """8 training, 4 validation, 2 test slices of 64 px; returns the folder.

    The slices are MNI152 with synthetic lesions.
    """
    from monai_wsol.data.synthetic import generate

    generate(out_dir, source="mni152", mode="2d", n_train=8, n_val=4, n_test=2, image_size=64, seed=seed)
    return Path(out_dir)


def run_workflow(run_id: str, config_file: str | list[str], **overrides) -> None:
    """``python -m monai.bundle run <run_id> --config_file ...`` in this process (``monai.bundle.run``)."""
    from monai.bundle import run

    run(
        run_id,
        config_file=config_file,
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        **overrides,
    )


def run_inference_captured(capfd, **overrides) -> tuple[int, str]:
    """``run inference`` in this process as the command line would end it: ``(exit status, console text)``
    (an ``InputsFailed``/``SystemExit`` message is printed as the interpreter prints it)."""
    capfd.readouterr()
    rc = 0
    try:
        run_workflow("inference", INFERENCE, **overrides)
    except SystemExit as e:
        rc = 1 if isinstance(e.code, str) else int(e.code or 0)
        print(e.code, file=sys.stderr)
    captured = capfd.readouterr()
    return rc, captured.out + captured.err


def run_cli(args: list[str], timeout: float = 600, **env) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repository root; the output is kept for assertion messages."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )
