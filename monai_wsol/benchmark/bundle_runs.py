"""One benchmark run = one run of the MONAI bundle: ``training``, then ``evaluate`` on validation and test.

The benchmark does not train or evaluate by itself: it hands overrides to the bundle's own configs
(``bundle/configs/train.json``; ``inference.json`` + ``evaluate.json``) through MONAI's ``ConfigWorkflow``, in
this process, so its figures come from exactly what a user runs with ``python -m monai.bundle run``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow

from monai_wsol.engines.evaluation import SplitCurves, load_curves
from monai_wsol.engines.training import default_bundle_root

__all__ = ["BundleRunner"]


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Copy every log record of the run (MONAI's StatsHandler logs to the root logger) to ``path``."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level, logging.INFO) if old_level else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


class BundleRunner:
    """Run the bundle's workflows with overrides.

    The configs are copied when the runner is made and every workflow reads the copy: a benchmark that runs
    for hours keeps the configs it started with, whatever is edited in the bundle meanwhile (``bundle_root``,
    which the configs' paths are relative to, stays the bundle's).

    Args:
        bundle_root: the bundle folder (``configs/`` inside); default: the one beside this package.
    """

    def __init__(self, bundle_root: str | os.PathLike | None = None) -> None:
        self.bundle_root = Path(bundle_root or default_bundle_root([]))
        source = self.bundle_root / "configs"
        for name in ("train.json", "inference.json", "evaluate.json", "metadata.json"):
            if not (source / name).is_file():
                raise FileNotFoundError(f"BundleRunner: {source / name} does not exist.")
        self.configs = Path(tempfile.mkdtemp(prefix="monai_wsol_bundle_configs_"))
        weakref.finalize(self, shutil.rmtree, self.configs, True)
        for path in source.glob("*.json"):
            shutil.copyfile(path, self.configs / path.name)

    def _run(
        self, config_files: list[str], workflow_type: str | None, run_id: str, overrides: Mapping[str, Any]
    ) -> None:
        workflow = ConfigWorkflow(
            config_file=config_files,
            meta_file=str(self.configs / "metadata.json"),
            logging_file=False,
            workflow_type=workflow_type,
            run_id=run_id,
            bundle_root=str(self.bundle_root),
            **dict(overrides),
        )
        workflow.initialize()
        try:
            workflow.run()
        finally:
            workflow.finalize()

    def train(self, run_dir: str | os.PathLike, overrides: Mapping[str, Any]) -> Path:
        """Train into ``run_dir`` (resuming its last epoch checkpoint if there is one); returns the model
        file.

        The model is the run's best checkpoint by the bundle's validation key metric
        (``checkpoints/model.pt``), i.e. what the bundle would export.
        """
        run_dir = Path(run_dir)
        ckpt_dir = run_dir / "checkpoints"
        resume = ckpt_dir.is_dir() and any(ckpt_dir.glob("checkpoint_epoch=*.pt"))
        run_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            **dict(overrides),
            "output_dir": str(run_dir.parent),
            "run_name": run_dir.name,
            "export_model": False,
            "resume": resume,
        }
        with _log_to(run_dir / "log.txt"):
            self._run([str(self.configs / "train.json")], None, "training", settings)
        model = ckpt_dir / "model.pt"
        if not model.is_file():
            raise FileNotFoundError(f"{run_dir}: training ended without {model}.")
        return model

    def pseudo_masks(
        self, model_path: str | os.PathLike, pseudo_dir: str | os.PathLike, overrides: Mapping[str, Any]
    ) -> Path:
        """The bundle's ``pseudo_masks`` workflow (``inference.json`` + ``pseudo_masks.json``):
        ``model_path``'s masks at ``overrides["tau"]`` for the training split, and
        ``<pseudo_dir>/datalist.json`` that points the training items at them
        (:func:`monai_wsol.engines.pseudo_masks.pseudo_mask_datalist`); returns that datalist."""
        pseudo_dir = Path(pseudo_dir)
        pseudo_dir.mkdir(parents=True, exist_ok=True)
        settings = {**dict(overrides), "ckpt_path": str(model_path), "pseudo_dir": str(pseudo_dir)}
        with _log_to(pseudo_dir / "log.txt"):
            self._run(
                [str(self.configs / "inference.json"), str(self.configs / "pseudo_masks.json")],
                None,
                "pseudo_masks",
                settings,
            )
        return pseudo_dir / "datalist.json"

    def evaluate(
        self,
        model_path: str | os.PathLike,
        split: str,
        out_dir: str | os.PathLike,
        overrides: Mapping[str, Any],
        num_examples: int = 0,
        box_step: float = 0.001,
    ) -> SplitCurves:
        """Evaluate ``model_path`` on a datalist split with the bundle's ``evaluate``; returns its curves.

        Writes ``<out_dir>/<split>.npz`` / ``.json`` (and ``<split>_examples.npz``), no per-image outputs.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            **dict(overrides),
            "ckpt_path": str(model_path),
            "split": split,
            "output_dir": str(out_dir),
            "write_outputs": False,
            "report_stem": split,
            "num_examples": num_examples,
            "box_step": box_step,
            # one image per batch: GT box lists differ in length between images (the bundle's default)
            "batch_size": 1,
        }
        with _log_to(out_dir / f"{split}_log.txt"):
            self._run(
                [str(self.configs / "inference.json"), str(self.configs / "evaluate.json")],
                None,
                "evaluate",
                settings,
            )
        return load_curves(out_dir / f"{split}.npz")
