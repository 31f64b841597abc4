"""The WSOL benchmark: methods x seeds x settings under one budget, choices made on validation only.

One :class:`Benchmark` runs every method of :mod:`monai_wsol.methods` through the MONAI bundle
(:class:`~monai_wsol.benchmark.bundle_runs.BundleRunner`: the bundle's ``training``, then its ``evaluate`` on
the validation and test splits) with the same data, network, optimiser, epochs and batch size, for each seed
and each data setting (e.g. the embedded default with and without a co-occurring distractor):

1. **Hyperparameters** (``search``): each candidate option set of a method is trained with the first seed and
   scored by its *validation* MaxBoxAccV2; the best candidate is the method's choice and its first-seed run is
   reused as that seed's result. The test split is evaluated for every run but never read for a choice.
2. **Checkpoint**: the bundle keeps the epoch with the best validation key metric (``key_metric``), as it does
   for a user; that checkpoint is evaluated.
3. **CAM threshold**: every "@val_tau" figure reads the test curve at the tau that maximises the same curve
   on validation (:func:`monai_wsol.engines.evaluation.figures_at_validation_tau`); the protocol's MaxBoxAcc /
   MaxBoxAccV2 and the best-tau Dice are oracle-on-test by definition and are labelled so in ``results.md``.
4. **Post-hoc maps** (``gradcam``, ``gradcampp``) evaluate the trained ``cam`` network of the same seed with
   their own extractor: no training of their own.

Layout of ``bench_dir`` (one bundle run folder per run; a run with ``result.json`` is finished and skipped on
restart, an interrupted run resumes from its last epoch checkpoint)::

    runs/<setting>/<method>/seed<k>/{result.json, curves.npz, examples.npz, config.json, metrics.csv,
                                     checkpoints/, eval/, log.txt}
    search/<setting>/<method>/cand<i>/seed<k>/...     # hyperparameter candidates (first seed)
    choices_<setting>.json                           # the options chosen per method for that setting
    results.csv, results.md, curves_<setting>.png, examples_<setting>.png
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_wsol.benchmark.bundle_runs import BundleRunner
from monai_wsol.boxes import Boxes
from monai_wsol.data.synthetic import generate
from monai_wsol.engines.evaluation import figures_at_validation_tau
from monai_wsol.io_utils import atomic_path, atomic_write_json, to_jsonable
from monai_wsol.methods import BOUNDS, METHODS
from monai_wsol.metrics import boxes_from_scoremap

__all__ = ["Benchmark", "POSTHOC", "setup_logging", "TRAIN_DEFAULTS"]

logger = logging.getLogger("monai_wsol.benchmark")

#: methods that reuse another method's trained network (their maps are computed post hoc)
POSTHOC: dict[str, str] = {"gradcam": "cam", "gradcampp": "cam", "layercam": "cam"}
_LESION = 1  # the class whose CAM localizes (binary lesion / no lesion)
#: variant entries that choose the network and its data rather than the method's options
_VARIANT_NETWORK_KEYS = (
    "method",
    "backbone",
    "net_kwargs",
    "slice_axis",
    "slice_labels",
    "train",
    "pseudo_masks_from",
)

#: the bundle training keys the benchmark sets for every method alike (``train`` overrides them)
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "flip_prob": 0.5,
}


def setup_logging(log_dir: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log the benchmark's progress to stdout and, with ``log_dir``, to ``<log_dir>/benchmark.log`` (once)."""
    logger.setLevel(level)
    formatter = logging.Formatter("%(asctime)s %(message)s")
    if not any(type(h) is logging.StreamHandler for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    if log_dir is not None:
        path = (Path(log_dir) / "benchmark.log").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not any(
            isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in logger.handlers
        ):
            handler = logging.FileHandler(path)
            handler.setFormatter(formatter)
            logger.addHandler(handler)
    logger.propagate = False
    return logger


def _atomic_npz(path: Path, arrays: Mapping[str, Any]) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def _epoch_seconds(run_dir: Path) -> float | None:
    """The training passes' seconds summed over every epoch of a run, resumed ones included (the bundle's
    ``train_metrics.json`` keeps a row per epoch with its ``epoch_seconds``); None without that record (a
    post-hoc method, or a run trained before the column existed)."""
    path = run_dir / "train_metrics.json"
    try:
        rows = json.loads(path.read_text()) if path.is_file() else []
    except ValueError:
        return None
    times = [row.get("epoch_seconds") for row in rows if isinstance(row, dict)]
    if not times or not all(isinstance(t, (int, float)) for t in times):
        return None
    return float(sum(times))


def _protocol_rows(rows: np.ndarray) -> np.ndarray:
    """``[image_index, *standard box]`` rows -> ``[image_index, x0, y0, x1, y1]`` (protocol) rows."""
    if not len(rows):
        return np.zeros((0, 5), dtype=np.int64)
    boxes = Boxes.standard(rows[:, 1:], spatial_dims=2).to_protocol().coords
    return np.c_[rows[:, :1], boxes].astype(np.int64)


class Benchmark:
    """Methods x seeds x settings with identical budgets; see the module docstring.

    Args:
        bench_dir: output folder (created; reused on restart).
        settings: name -> keyword arguments of :func:`monai_wsol.data.synthetic.generate` (e.g.
            ``{"default": {}, "distractor": {"distractor": True}}``), or name -> ``{"datalist": path}`` for
            existing data.
        methods: the method names to compare (:data:`monai_wsol.methods.METHODS`) or names of ``variants``, in
            report order; post-hoc methods (:data:`POSTHOC`) need their base method in the list.
        seeds: the seeds (>= 3 for the paired statistics to mean anything).
        data_root: where generated settings are written (``<data_root>/<setting>``; existing data is reused).
        image_size: the side the images (2D) or volumes (3D) are resized to.
        spatial_dims: 2 (slices) or 3 (volumes: the generator's ``mode="3d"``, the bundle's 3D network).
        backbone: ``"densenet121"`` or ``"vgg16"``; ``net_kwargs``: its extra arguments (e.g. a compact
            ``block_config``, ``low_stride``).
        method_options: method -> options applied to every run of it (e.g. ``{"sfs2": {"init": "random"}}``).
        search: method -> list of candidate option sets, chosen on validation MaxBoxAccV2 with the first seed.
        train: bundle training overrides every method gets (:data:`TRAIN_DEFAULTS` and e.g. ``optimizer``
            keys of ``train.json``); ``threads`` sets torch's intra-op threads.
        bundle_root: the bundle whose workflows run (default: the one beside this package).
        box_step: tau step of the box curves (0.001, the protocol's).
        num_examples: test images stored per first-seed run for the example grid (2D; a 3D run keeps every
            test lesion volume's map, for :mod:`~monai_wsol.benchmark.shapes` and the orthogonal figure).
        reference: the method(s) the paired tests compare against every other (default ``"sfs2"``).
        search_in: the setting whose validation split makes the ``search`` choices for every setting (saves
            the candidates' runs elsewhere); None: each setting chooses on its own validation split. It may be
            a setting another process runs on the same ``bench_dir``: its choices are then read from
            ``choices_<search_in>.json``, waiting up to ``wait_for_choices`` seconds for them to appear.
        wait_for_choices: see ``search_in`` (0: a missing choice is an error at once).
        variants: name -> ``{"method": <method name>, **options}``: a method under another name with fixed
            options (ablations, e.g. ``{"sfs2_t0.6": {"method": "sfs2", "t": 0.6}}``); ``"backbone"`` and
            ``"net_kwargs"`` entries replace the benchmark's for that variant. With ``spatial_dims=3``, a
            ``"slice_axis"`` entry makes the variant a **2D** network trained on the slices of the setting's
            training volumes along that array axis (:func:`monai_wsol.data.slices.slice_datalist`: slice-level
            labels from the masks) and evaluated on the volumes slice by slice, as the bundle runs a 2D model
            on a volume; ``"slice_labels": "volume"`` trains it on every slice with its volume's label (the
            supervision a 3D network has) instead. A ``"train"`` entry overrides ``train`` for that variant
            (e.g. a slice network's batch size). ``{"method": "supervised", "pseudo_masks_from": "cam"}`` is
            **pseudo-mask self-training**: the bundle's segmenter trained on the masks that the same seed's
            ``cam`` model gives the training images at its validation-chosen Dice threshold
            (:mod:`monai_wsol.engines.pseudo_masks`; the source method is listed before it).
        report: write ``results.csv`` / ``results.md`` and the figures at the end.
    """

    def __init__(
        self,
        bench_dir: str | Path,
        settings: Mapping[str, Mapping[str, Any]],
        methods: Sequence[str],
        seeds: Sequence[int] = (0, 1, 2),
        data_root: str | Path = "data/benchmark",
        image_size: int = 96,
        backbone: str = "densenet121",
        net_kwargs: Mapping[str, Any] | None = None,
        method_options: Mapping[str, Mapping[str, Any]] | None = None,
        search: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        train: Mapping[str, Any] | None = None,
        box_step: float = 0.001,
        num_examples: int = 6,
        reference: str | Sequence[str] = "sfs2",
        search_in: str | None = None,
        wait_for_choices: float = 0.0,
        variants: Mapping[str, Mapping[str, Any]] | None = None,
        report: bool = True,
        bundle_root: str | Path | None = None,
        spatial_dims: int = 2,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"Benchmark: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        self.spatial_dims = int(spatial_dims)
        self.bench_dir = Path(bench_dir)
        self.settings = {str(k): dict(v) for k, v in settings.items()}
        self.methods = [str(m) for m in methods]
        self.variants = {str(k): dict(v) for k, v in (variants or {}).items()}
        for name, variant in self.variants.items():
            if variant.get("method") not in METHODS:
                raise ValueError(
                    f"Benchmark: variants[{name!r}] needs 'method', one of {', '.join(METHODS)}; "
                    f"got {variant}."
                )
            axis = variant.get("slice_axis")
            if axis is not None and (spatial_dims != 3 or isinstance(axis, bool) or axis not in (0, 1, 2)):
                raise ValueError(
                    f"Benchmark: variants[{name!r}]['slice_axis'] must be 0, 1 or 2 and needs spatial_dims=3 "
                    f"(a 2D network on the volumes' slices); got {axis!r} with "
                    f"spatial_dims={spatial_dims}."
                )
        for m in self.methods:
            if m not in METHODS and m not in self.variants:
                raise ValueError(
                    f"Benchmark: unknown method {m!r}; valid: {', '.join(METHODS)} or a name of `variants`."
                )
            base = self.base_method(m)
            if base in POSTHOC and POSTHOC[base] not in self.methods:
                raise ValueError(
                    f"Benchmark: method {m!r} is computed on {POSTHOC[base]!r}'s network: list it too."
                )
            source = self.pseudo_mask_source(m)
            if source is not None and (base != "supervised" or source not in self.methods or source == m):
                raise ValueError(
                    f"Benchmark: variants[{m!r}]['pseudo_masks_from'] names the trained method whose maps "
                    f"give the pseudo-masks ({source!r}): another listed method, before {m!r}, and the "
                    f"variant's method is 'supervised' (got {base!r})."
                )
            if source is not None and self.methods.index(source) > self.methods.index(m):
                raise ValueError(f"Benchmark: list {source!r} before {m!r}, whose pseudo-masks it gives.")
        self.seeds = [int(s) for s in seeds]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"Benchmark: seeds must be distinct and non-empty, got {list(seeds)}.")
        self.data_root = Path(data_root)
        self.image_size = int(image_size)
        self.backbone = backbone
        self.net_kwargs = dict(net_kwargs or {})
        self.method_options = {k: dict(v) for k, v in (method_options or {}).items()}
        self.search = {k: [dict(c) for c in v] for k, v in (search or {}).items()}
        for m, cands in self.search.items():
            if m not in self.methods or self.base_method(m) in POSTHOC or not cands:
                raise ValueError(
                    f"Benchmark: search[{m!r}] must be a non-empty list for a trained, listed method."
                )
        self.search_in = search_in
        self.wait_for_choices = float(wait_for_choices)
        train = dict(train or {})
        self.threads = train.pop("threads", None)
        if "flip" in train:  # a boolean switch of the random flip
            train["flip_prob"] = 0.5 if train.pop("flip") else 0.0
        self.train = {**TRAIN_DEFAULTS, **train}
        self.bundle = BundleRunner(bundle_root)
        self.box_step = float(box_step)
        self.num_examples = int(num_examples)
        self.reference = reference
        self.report = report

    def base_method(self, name: str) -> str:
        """The :data:`~monai_wsol.methods.METHODS` name behind a method or variant name."""
        return str(self.variants[name]["method"]) if name in self.variants else name

    # -- paths -----------------------------------------------------------------------------------------------
    def run_dir(self, setting: str, method: str, seed: int, candidate: int | None = None) -> Path:
        if candidate is None:
            return self.bench_dir / "runs" / setting / method / f"seed{seed}"
        return self.bench_dir / "search" / setting / method / f"cand{candidate}" / f"seed{seed}"

    def datalist(self, setting: str) -> Path:
        opts = self.settings[setting]
        if "datalist" in opts:
            return Path(opts["datalist"])
        out = self.data_root / setting
        path = out / "datalist.json"
        if not path.exists():
            logger.info("generating the %r data set in %s", setting, out)
            generate(out, **{"image_size": self.image_size, "mode": f"{self.spatial_dims}d", **opts})
        return path

    def test_lesion_count(self, setting: str) -> int:
        """The number of lesion images (label != 0) in ``setting``'s test split."""
        datalist = json.loads(self.datalist(setting).read_text())
        return sum(1 for item in datalist["test"] if item["label"])

    def pseudo_mask_source(self, method: str) -> str | None:
        """The method whose maps give a pseudo-mask variant's training masks (None: not such a variant)."""
        source = self.variants.get(method, {}).get("pseudo_masks_from")
        return None if source is None else str(source)

    def slice_axis(self, method: str) -> int | None:
        """The array axis a slice variant's 2D network cuts the volumes along (None: a network of the data's
        dims)."""
        axis = self.variants.get(method, {}).get("slice_axis")
        return None if axis is None else int(axis)

    def slices_datalist(self, setting: str, slice_axis: int, labels: str = "slice") -> Path:
        """The 2D datalist of the slices of ``setting``'s volumes along ``slice_axis`` (written once), with
        slice-level or volume-level ``labels``."""
        from monai_wsol.data.slices import slice_datalist

        suffix = "" if labels == "slice" else f"_{labels}_labels"
        out = self.data_root / f"{setting}_slices_axis{slice_axis}{suffix}"
        if not (out / "datalist.json").exists():
            logger.info("cutting the %r volumes into slices along axis %d in %s", setting, slice_axis, out)
        # the network is evaluated on the volumes: its test split's slices would not be read
        return slice_datalist(
            self.datalist(setting),
            out,
            slice_axis=slice_axis,
            splits=("training", "validation"),
            labels=labels,
        )

    # -- one run
    # ---------------------------------------------------------------------------------------------------
    def network(self, name: str) -> tuple[str, dict[str, Any]]:
        """``(backbone, net_kwargs)`` of a method or variant (a variant may name its own)."""
        variant = self.variants.get(name, {})
        return str(variant.get("backbone", self.backbone)), dict(variant.get("net_kwargs", self.net_kwargs))

    def bundle_overrides(
        self, setting: str, method: str, seed: int, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The bundle keys of one run's training: data, method, network, budget, seed (a slice variant's:
        the slices' datalist and a 2D network; :meth:`evaluation_overrides` gives its evaluation's)."""
        backbone, net_kwargs = self.network(method)
        axis = self.slice_axis(method)
        if axis is None:
            datalist = self.datalist(setting)
        else:
            labels = str(self.variants[method].get("slice_labels", "slice"))
            datalist = self.slices_datalist(setting, axis, labels)
        data = json.loads(datalist.read_text())  # read once: the classes and the declared size come from it
        classes = self._classes(data)
        if self.base_method(method) in BOUNDS and "num_classes" in classes:
            datalist = self._lesion_or_not(setting, data)
            classes = {"cam_class": _LESION}
        spatial_dims = self.spatial_dims if axis is None else 2
        return {
            **self.run_train(method),
            "dataset_dir": str(self.datalist(setting).parent if axis is None else datalist.parent),
            "datalist": str(datalist),
            "spatial_dims": spatial_dims,
            "spatial_size": self._spatial_size(
                data, spatial_dims, declared=spatial_dims == 3 or axis is not None
            ),
            "method": self.base_method(method),
            "method_options": to_jsonable(dict(options)),
            "backbone": backbone,
            "network_kwargs": to_jsonable(net_kwargs),
            "seed": int(seed),
            **classes,
            "num_workers": 0,
        }

    def run_train(self, method: str) -> dict[str, Any]:
        """The training keys of ``method``'s runs: the benchmark's ``train``, its variant's ``train`` entry,
        and the prior's single epoch."""
        # the prior is fitted once on the training masks before the first epoch and has nothing to learn after
        # it: more epochs would only repeat validation passes of the same map
        budget = {"epochs": 1} if self.base_method(method) == "prior" else {}
        return {**self.train, **self.variants.get(method, {}).get("train", {}), **budget}

    def _lesion_or_not(self, setting: str, data: dict[str, Any]) -> Path:
        """The copy of a datalist with several lesion classes whose lesion classes are all relabelled 1
        (``<bench_dir>/datalists/<setting>_lesion_or_not.json``, paths still relative to the original's
        folder). The bounds segment "lesion" whatever its class: trained and evaluated on the copy, they
        localize the same lesion images, with the same masks and boxes, as the methods evaluated on the
        original with each image's own class."""
        data = copy.deepcopy(data)  # the caller's stays as read
        for split in ("training", "validation", "test"):
            for item in data.get(split, []):
                if isinstance(item, dict) and isinstance(item.get("label"), int) and item["label"] > 0:
                    item["label"] = _LESION
        data["labels"] = {"0": "no lesion", "1": "lesion"}
        return atomic_write_json(self.bench_dir / "datalists" / f"{setting}_lesion_or_not.json", data)

    @staticmethod
    def _classes(data: Mapping[str, Any]) -> dict[str, Any]:
        """The class keys of a datalist: a lesion / no-lesion datalist localizes class 1 in every image; one
        with lesion classes 1..K-1 (class 0: no lesion) localizes each lesion image with its own class's
        map (``cam_class="label"``, the WSOL protocol's GT-known map) and names the classes from its
        ``labels``."""
        found = {
            int(item["label"])
            for split in ("training", "validation", "test")
            for item in data.get(split, [])
            if isinstance(item, dict) and isinstance(item.get("label"), int)
        }
        names = data.get("labels") if isinstance(data.get("labels"), dict) else {}
        declared = [int(k) for k in names if str(k).isdigit()]
        num_classes = max([*found, *declared, 1]) + 1
        if num_classes <= 2:
            return {"cam_class": _LESION}
        return {
            "num_classes": num_classes,
            "cam_class": "label",
            "class_names": [str(names.get(str(k), f"class_{k}")) for k in range(num_classes)],
        }

    def _pseudo_masks(self, setting: str, method: str, seed: int, run_dir: Path) -> dict[str, Any]:
        """The pseudo-mask datalist of a self-training run (written once, under ``<run_dir>/pseudo_masks``):
        the bundle's ``pseudo_masks`` workflow with the source method's model of the same seed, at the tau
        that maximised that model's Dice on **validation**."""
        source = str(self.pseudo_mask_source(method))
        source_result = self.run_dir(setting, source, seed) / "result.json"
        if not source_result.exists():
            raise FileNotFoundError(
                f"{method}: its pseudo-masks come from the {source!r} run of seed {seed}, which is not "
                f"finished ({source_result} is missing)."
            )
        finished = json.loads(source_result.read_text())
        tau = finished.get("val_tau", {}).get("Dice")
        if tau is None:
            raise ValueError(f"{source_result}: no validation-chosen Dice threshold ('val_tau': 'Dice').")
        model = Path(finished["hyperparameters"]["model"])
        source_overrides = self.bundle_overrides(
            setting, source, seed, finished["hyperparameters"]["options"]
        )
        out = run_dir / "pseudo_masks"
        datalist = out / "datalist.json"
        if not datalist.exists():
            logger.info(
                "%s/%s seed %d: pseudo-masks of %s's model at tau %.3f", setting, method, seed, source, tau
            )
            self.bundle.pseudo_masks(model, out, {**source_overrides, "tau": float(tau)})
        return {
            "from": source,
            "tau": float(tau),
            "model": str(model),
            "dir": str(out),
            "datalist": str(datalist),
        }

    def evaluation_overrides(
        self, setting: str, method: str, train_overrides: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The bundle keys of one run's evaluation: its training's, except that a slice variant's 2D network
        is evaluated on the setting's volumes, slice by slice."""
        axis = self.slice_axis(method)
        if axis is None:
            return dict(train_overrides)
        datalist = self.datalist(setting)
        return {
            **train_overrides,
            "dataset_dir": str(datalist.parent),
            "datalist": str(datalist),
            "image_spatial_dims": 3,
            "slice_axis": axis,
        }

    def _spatial_size(self, data: Mapping[str, Any], spatial_dims: int, declared: bool) -> list[int]:
        """The network's input size: ``image_size`` along every axis, except where the datalist declares its
        images' size (the generator's 3D crops are ``image_size`` x ``image_size`` x a depth its splits
        allow; slices of volumes have the volumes' in-plane size): that size, so training sees the grid that
        evaluation (on each image's own grid) sees."""
        if declared:
            size = data.get("image_size")
            if isinstance(size, list) and len(size) == spatial_dims:
                return [int(v) for v in size]
        return [self.image_size] * spatial_dims

    def run_one(
        self,
        setting: str,
        method: str,
        seed: int,
        options: Mapping[str, Any],
        candidate: int | None = None,
        reevaluate: bool = False,
    ) -> dict[str, Any]:
        """Train (or resume) and evaluate one run through the bundle; read back when already finished.

        ``reevaluate``: a finished run's model is evaluated again (no training; its training time is kept)
        and its ``result.json`` rewritten, e.g. to add figures that evaluation gained since the run.
        """
        run_dir = self.run_dir(setting, method, seed, candidate)
        result_path = run_dir / "result.json"
        previous = json.loads(result_path.read_text()) if result_path.exists() else None
        if previous is not None and not reevaluate:
            return previous
        base_method = self.base_method(method)
        train_options = dict(options)
        if base_method == "cutmix":
            train_options.setdefault("seed", seed)
        overrides = self.bundle_overrides(setting, method, seed, train_options)
        pseudo: dict[str, Any] = {}
        seconds = 0.0
        if base_method in POSTHOC:
            model = self.run_dir(setting, POSTHOC[base_method], seed) / "checkpoints" / "model.pt"
            if not model.exists():
                raise FileNotFoundError(
                    f"{method}: the {POSTHOC[base_method]!r} run of seed {seed} has no {model}."
                )
            run_dir.mkdir(parents=True, exist_ok=True)
        elif previous is not None:
            model = run_dir / "checkpoints" / "model.pt"  # what the training returned
            if not model.is_file():
                raise FileNotFoundError(
                    f"{result_path}: its model {model} is gone; cannot evaluate it again."
                )
            seconds = float(previous.get("train_seconds") or 0.0)
        else:
            t0 = time.perf_counter()
            train_overrides = overrides
            if self.pseudo_mask_source(method) is not None:
                pseudo = self._pseudo_masks(setting, method, seed, run_dir)
                train_overrides = {**overrides, "datalist": pseudo["datalist"], "dataset_dir": pseudo["dir"]}
            model = self.bundle.train(run_dir, train_overrides)
            seconds = time.perf_counter() - t0
        if previous is not None and "pseudo_masks" in previous.get("hyperparameters", {}):
            pseudo = previous["hyperparameters"]["pseudo_masks"]
        # 2D: the example grid's first images of the first seed; 3D: every test lesion volume's map, which the
        # map shapes and the orthogonal figure read (17 MB a run at 48 x 48 x 19) instead of evaluating again
        if self.spatial_dims == 3:
            examples_count = self.test_lesion_count(setting)
        else:
            examples_count = self.num_examples if seed == self.seeds[0] else 0
        eval_overrides = self.evaluation_overrides(setting, method, overrides)
        evaluate = functools.partial(
            self.bundle.evaluate, model, out_dir=run_dir / "eval", box_step=self.box_step
        )
        val = evaluate("validation", overrides=eval_overrides)
        test = evaluate("test", overrides=eval_overrides, num_examples=examples_count)
        honest, taus = figures_at_validation_tau(val, test)
        result = {
            "setting": setting,
            "method": method,
            "seed": seed,
            "hyperparameters": {
                "options": to_jsonable(options),
                "backbone": overrides["backbone"],
                "net_kwargs": overrides["network_kwargs"],
                "spatial_dims": overrides["spatial_dims"],
                "slice_axis": self.slice_axis(method),
                "image_size": self.image_size,
                "train": to_jsonable(self.run_train(method)),
                "model": str(model),
                **({"pseudo_masks": pseudo} if pseudo else {}),
            },
            "val": {**val.scalars, "tau": taus["BoxAccV2@50"]},
            "test": {**test.scalars, **honest},
            "val_tau": taus,
            "train_seconds": seconds,
            "train_epoch_seconds": _epoch_seconds(run_dir),
        }
        _atomic_npz(
            run_dir / "curves.npz",
            {
                "thresholds": test.thresholds,
                "boxacc": test.boxacc_v2,
                "boxacc_v1": test.boxacc_v1,
                "val_boxacc": val.boxacc_v2,
                "mask_thresholds": test.mask_thresholds,
                "dice": test.dice,
            },
        )
        if examples_count and self.spatial_dims == 2:
            self._write_examples(run_dir, taus["BoxAccV2@50"])
        atomic_write_json(result_path, result)  # last: its presence marks the run finished
        t = result["test"]
        logger.info(
            "%s/%s seed %d: MaxBoxAccV2 %.1f, BoxAccV2@val_tau %.1f, Dice %.3f, acc %.1f, AUC %.3f (%.0f s)",
            setting,
            method,
            seed,
            t["MaxBoxAccV2"],
            t["BoxAccV2@val_tau"],
            t.get("Dice", float("nan")),
            t["accuracy"],
            t["AUC"],
            seconds,
        )
        return result

    @staticmethod
    def _write_examples(run_dir: Path, tau: float) -> None:
        """Write ``examples.npz`` for the figure.

        It holds the evaluated test examples plus their boxes at the validation tau.
        """
        with np.load(run_dir / "eval" / "test_examples.npz") as z:
            ex = {k: z[k] for k in z.files}
        pred = [np.asarray(boxes_from_scoremap(m, [tau], multi_contour=True)[0]) for m in ex["cams"]]
        rows = [np.c_[np.full(len(b), i), np.asarray(b).reshape(-1, 4)] for i, b in enumerate(pred)]
        _atomic_npz(
            run_dir / "examples.npz",
            {
                "images": ex["images"],
                "cams": ex["cams"],
                "gt_masks": ex["gt_masks"],
                "gt_boxes": _protocol_rows(ex["gt_boxes"]),
                "pred_boxes": np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 5), np.int64),
                "tau": float(tau),
                "image_ids": np.asarray([str(i) for i in range(len(ex["cams"]))]),
            },
        )

    # -- choices
    # ----------------------------------------------------------------------------------------------------
    def choose(self, setting: str, method: str) -> tuple[dict[str, Any], int | None]:
        """The method's options for ``setting``: the candidate with the best validation MaxBoxAccV2."""
        variant = {k: v for k, v in self.variants.get(method, {}).items() if k not in _VARIANT_NETWORK_KEYS}
        base = {**variant, **self.method_options.get(method, {})}
        if self.base_method(method) in POSTHOC:
            return self.choose(setting, POSTHOC[self.base_method(method)])[0], None
        candidates = self.search.get(method)
        if not candidates:
            return base, None
        scores = []
        for i, cand in enumerate(candidates):
            result = self.run_one(setting, method, self.seeds[0], {**base, **cand}, candidate=i)
            scores.append(result["val"]["MaxBoxAccV2"])
        best = int(np.argmax(scores))  # first best on ties
        logger.info(
            "%s/%s: validation MaxBoxAccV2 of candidates %s -> %s", setting, method, scores, candidates[best]
        )
        return {**base, **candidates[best]}, best

    # -- everything
    # -----------------------------------------------------------------------------------------------
    def _choices_path(self, setting: str) -> Path:
        return self.bench_dir / f"choices_{setting}.json"

    def _shared_choice(self, method: str) -> dict[str, Any]:
        """``method``'s options as chosen on ``search_in``'s validation split (maybe by another process)."""
        path = self._choices_path(str(self.search_in))
        deadline = time.monotonic() + self.wait_for_choices
        while True:
            chosen = json.loads(path.read_text()) if path.exists() else {}
            if method in chosen:
                return dict(chosen[method]["options"])
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"{path}: no choice for {method!r} yet; run the {self.search_in!r} setting first "
                    "(or give wait_for_choices when another process runs it)."
                )
            time.sleep(min(10.0, max(0.1, deadline - time.monotonic())))

    def run(self) -> list[dict[str, Any]]:
        """Run (or finish) every setting x method x seed; write the report. Returns the finished results."""
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self.bench_dir.mkdir(parents=True, exist_ok=True)
        results: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        total = len(self.settings) * len(self.methods) * len(self.seeds)
        done = 0
        # the setting that makes the search choices goes first
        for setting in sorted(self.settings, key=lambda name: name != self.search_in):
            self.datalist(setting)
            choices_path = self._choices_path(setting)
            for method in self.methods:
                chosen_on = setting
                if self.search_in not in (None, setting) and method in self.search:
                    options, candidate = self._shared_choice(method), None
                    chosen_on = str(self.search_in)
                else:
                    options, candidate = self.choose(setting, method)
                # re-read first: another process may be running other methods of this setting
                choices = json.loads(choices_path.read_text()) if choices_path.exists() else {}
                choices[method] = {
                    "options": to_jsonable(options),
                    "candidate": candidate,
                    "chosen_on_validation_of": chosen_on,
                }
                atomic_write_json(choices_path, choices)
                for seed in self.seeds:
                    target = self.run_dir(setting, method, seed)
                    if (
                        candidate is not None
                        and seed == self.seeds[0]
                        and not (target / "result.json").exists()
                    ):
                        _copy_run(self.run_dir(setting, method, seed, candidate), target)
                    results.append(self.run_one(setting, method, seed, options))
                    done += 1
                    logger.info("progress %d/%d runs, %.1f min", done, total, (time.perf_counter() - t0) / 60)
        if self.report:
            self.write_report()
        return results

    def write_report(self) -> None:
        """``results.csv``, ``results.md`` and the figures from the finished runs."""
        from monai_wsol.benchmark.figures import plot_example_grid, plot_threshold_curves
        from monai_wsol.benchmark.report import write_results

        write_results(self.bench_dir, reference=self.reference)
        for setting in self.settings:
            plot_threshold_curves(self.bench_dir, setting, self.bench_dir / f"curves_{setting}.png")
            plot_example_grid(
                self.bench_dir, setting, self.bench_dir / f"examples_{setting}.png", seed=self.seeds[0]
            )


def _copy_run(src: Path, dst: Path) -> None:
    """Copy a finished run folder atomically (copy to a sibling temporary folder, then rename)."""
    if not (src / "result.json").exists():
        raise FileNotFoundError(f"{src} is not a finished run (no result.json).")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
