"""The benchmark runner.

One budget for every method, choices on validation only, resumable, report written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from monai_wsol.benchmark.bundle_runs import BundleRunner
from monai_wsol.benchmark.protocol import protocol_optimizer
from monai_wsol.benchmark.runner import Benchmark
from monai_wsol.engines.evaluation import load_curves
from monai_wsol.methods import build_method
from tests._bundle_helpers import TINY_CNN, make_tiny_data

REPO = Path(__file__).resolve().parents[1]
#: the bundle keys an evaluation must share with the training run
_EVAL_KEYS = (
    "dataset_dir",
    "datalist",
    "spatial_dims",
    "method",
    "method_options",
    "backbone",
    "network_kwargs",
    "cam_class",
)
TINY_NET = {"init_features": 8, "growth_rate": 4, "block_config": [1, 1, 1], "low_stride": True}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("bench_data")) / "datalist.json"


def test_protocol_optimizer_groups_and_schedule():
    net = build_method("sfs1", 2, 1, 2, net_kwargs=TINY_NET).net
    opt, sched = protocol_optimizer(
        net, {"optimizer": "sgd", "lr": 0.1, "new_layer_lr_ratio": 10, "schedule": "step", "epochs": 3}
    )
    assert [g["lr"] for g in opt.param_groups] == [0.1, pytest.approx(1.0)]
    new = {id(p) for p in opt.param_groups[1]["params"]}
    names = {n for n, p in net.named_parameters() if id(p) in new}
    assert names and all(n.startswith("classifier") or "plugin" in n for n in names)
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR)
    with pytest.raises(ValueError, match="optimizer"):
        protocol_optimizer(net, {"optimizer": "lion", "lr": 0.1})


def test_benchmark_config_end_to_end(tiny, tmp_path, monkeypatch):
    """configs/benchmark.json with overrides: search on validation, post-hoc reuse, skip finished, report."""
    bench = tmp_path / "bench"
    parser = ConfigParser()
    parser.read_config(REPO / "configs" / "benchmark.json")
    parser.update(
        {
            "bench_dir": str(bench),
            "settings": {"default": {"datalist": str(tiny)}, "again": {"datalist": str(tiny)}},
            "methods": ["cam", "gradcam", "sfs1"],
            "seeds": [0, 1],
            "image_size": 32,
            "net_kwargs": TINY_CNN,  # the config's backbone: the plain CNN
            "train#epochs": 1,
            "train#batch_size": 4,
            "train#threads": 1,
            "search": {"sfs1": [{"t": 0.4}, {"t": 0.6}]},
            "num_examples": 2,
        }
    )
    seen_splits = []  # bundle evaluations made (by split)
    original = BundleRunner.evaluate

    def spy(self, model_path, split, *a, **k):
        seen_splits.append(split)
        return original(self, model_path, split, *a, **k)

    monkeypatch.setattr(BundleRunner, "evaluate", spy)
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")

    runs = bench / "runs"
    for setting in ("default", "again"):
        for method in ("cam", "gradcam", "sfs1"):
            for seed in (0, 1):
                result = json.loads((runs / setting / method / f"seed{seed}" / "result.json").read_text())
                assert result["method"] == method and result["seed"] == seed
                assert 0 <= result["test"]["MaxBoxAccV2"] <= 100 and 0 <= result["val"]["MaxBoxAccV2"] <= 100
                # each run is a bundle run folder
                if method != "gradcam":
                    run = runs / setting / method / f"seed{seed}"
                    assert (run / "config.json").is_file() and (run / "checkpoints" / "model.pt").is_file()
                    assert json.loads((run / "config.json").read_text())["method"] == method
    choices = {s: json.loads((bench / f"choices_{s}.json").read_text()) for s in ("default", "again")}
    # the search ran in the "default" setting only (search_in), on its validation split; "again" reuses it
    cands = [
        json.loads((bench / "search" / "default" / "sfs1" / f"cand{i}" / "seed0" / "result.json").read_text())
        for i in (0, 1)
    ]
    best = int(np.argmax([c["val"]["MaxBoxAccV2"] for c in cands]))
    assert choices["default"]["sfs1"]["options"]["t"] == [0.4, 0.6][best]
    assert choices["again"]["sfs1"] == {
        **choices["default"]["sfs1"],
        "candidate": None,
        "chosen_on_validation_of": "default",
    }
    assert not (bench / "search" / "again").exists()
    # the chosen candidate's first-seed run is the method's seed-0 result
    seed0 = json.loads((runs / "default" / "sfs1" / "seed0" / "result.json").read_text())
    assert seed0["test"] == cands[best]["test"]
    # post-hoc Grad-CAM uses cam's network: identical classification
    for seed in (0, 1):
        cam = json.loads((runs / "default" / "cam" / f"seed{seed}" / "result.json").read_text())
        grad = json.loads((runs / "default" / "gradcam" / f"seed{seed}" / "result.json").read_text())
        assert grad["test"]["accuracy"] == cam["test"]["accuracy"] and grad["train_seconds"] == 0
        assert grad["train_epoch_seconds"] is None
    for name in ("results.csv", "results.md", "curves_default.png", "examples_default.png", "benchmark.log"):
        assert (bench / name).stat().st_size > 0, name
    assert "| sfs1 |" in (bench / "results.md").read_text()

    # the figures are those of the bundle's own evaluate on the same model: one pipeline
    run = runs / "default" / "cam" / "seed1"
    result = json.loads((run / "result.json").read_text())
    direct = BundleRunner().evaluate(
        run / "checkpoints" / "model.pt",
        "test",
        tmp_path / "direct",
        {k: v for k, v in json.loads((run / "config.json").read_text()).items() if k in _EVAL_KEYS},
    )
    assert direct.scalars["MaxBoxAccV2"] == result["test"]["MaxBoxAccV2"]
    assert direct.scalars["accuracy"] == result["test"]["accuracy"]
    assert load_curves(run / "eval" / "test.npz").scalars == direct.scalars

    # a second run skips every finished run (no training, no evaluation)
    stamp = (runs / "default" / "cam" / "seed0" / "result.json").stat().st_mtime_ns
    seen_splits.clear()
    parser2 = ConfigParser()
    parser2.read_config(REPO / "configs" / "benchmark.json")
    parser2.update(dict(parser.config))
    parser2.get_parsed_content("run")
    assert seen_splits == []
    assert (runs / "default" / "cam" / "seed0" / "result.json").stat().st_mtime_ns == stamp


def test_reevaluate_evaluates_the_finished_model_again_without_training(tiny, tmp_path, monkeypatch):
    bench = Benchmark(
        tmp_path, {"d": {"datalist": str(tiny)}}, ["cam"], seeds=[0], image_size=32, backbone="cnn",
        net_kwargs=TINY_CNN,
        train={"epochs": 1, "batch_size": 4}, num_examples=0, report=False,
    )  # fmt: skip
    first = bench.run_one("d", "cam", 0, {})
    # the training passes' time from the run's per-epoch record (what a resumed run sums over every call)
    assert 0 < first["train_epoch_seconds"] <= first["train_seconds"]
    path = tmp_path / "runs" / "d" / "cam" / "seed0" / "result.json"
    stale = {**first, "test": {"MaxBoxAccV2": -1.0}}  # as a result.json written before figures were added
    path.write_text(json.dumps(stale))
    assert bench.run_one("d", "cam", 0, {}) == stale  # read back as it is

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(BundleRunner, "train", no_training)
    again = bench.run_one("d", "cam", 0, {}, reevaluate=True)
    assert again["test"] == first["test"] and again["val"] == first["val"]
    assert again["train_seconds"] == first["train_seconds"] > 0
    assert json.loads(path.read_text()) == again
    (path.parent / "checkpoints" / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="model.pt is gone"):
        bench.run_one("d", "cam", 0, {}, reevaluate=True)


def test_missing_shared_choice_is_a_clear_error(tiny, tmp_path):
    bench = Benchmark(
        tmp_path, {"d": {"datalist": str(tiny)}}, ["sfs1"], search={"sfs1": [{"t": 0.5}]}, search_in="x",
        image_size=32, net_kwargs=TINY_NET,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"choices_x\.json: no choice for 'sfs1'"):
        bench.run()


def test_the_prior_trains_one_epoch_the_others_the_budget(tiny, tmp_path):
    bench = Benchmark(
        tmp_path, {"d": {"datalist": str(tiny)}}, ["prior", "cam"], image_size=32, train={"epochs": 7}
    )
    assert bench.bundle_overrides("d", "prior", 0, {})["epochs"] == 1
    assert bench.bundle_overrides("d", "cam", 0, {})["epochs"] == 7


def test_3d_runs_train_on_the_volumes_declared_grid(tmp_path):
    # 3D crops are image_size x image_size x a depth the splits allow; training must see the grid that
    # evaluation (on each image's own grid) sees, not a cube
    datalist = tmp_path / "datalist.json"
    datalist.write_text(
        json.dumps({"image_size": [32, 32, 20], "training": [], "validation": [], "test": []})
    )
    bench = Benchmark(tmp_path, {"d": {"datalist": str(datalist)}}, ["cam"], image_size=32, spatial_dims=3)
    overrides = bench.bundle_overrides("d", "cam", 0, {})
    assert overrides["spatial_dims"] == 3 and overrides["spatial_size"] == [32, 32, 20]
    plain = Benchmark(tmp_path, {"d": {"datalist": str(datalist)}}, ["cam"], image_size=32)
    assert plain.bundle_overrides("d", "cam", 0, {})["spatial_size"] == [32, 32]
    with pytest.raises(ValueError, match="spatial_dims"):
        Benchmark(tmp_path, {"d": {}}, ["cam"], spatial_dims=4)


def test_benchmark_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        Benchmark(tmp_path, {"d": {}}, ["nope"])
    with pytest.raises(ValueError, match="list it too"):
        Benchmark(tmp_path, {"d": {}}, ["gradcam"])
    with pytest.raises(ValueError, match="variants"):
        Benchmark(tmp_path, {"d": {}}, ["v"], variants={"v": {"method": "nope"}})


def test_to_jsonable_makes_results_strict_json(tmp_path):
    import math

    from monai_wsol.io_utils import atomic_write_json, to_jsonable

    out = to_jsonable({1: (0.5, math.nan), "t": torch.tensor(2.5), "p": Path("x"), "inf": math.inf})
    assert out == {"1": [0.5, None], "t": 2.5, "p": "x", "inf": None}
    atomic_write_json(tmp_path / "r.json", out)  # allow_nan=False: would raise on a NaN


def test_every_ablation_variant_builds_the_network_it_names():
    """configs/ablation.json over configs/benchmark.json: each listed variant builds with the benchmark's
    backbone and carries its option into the block (a stale position or option name fails here)."""
    parser = ConfigParser()
    parser.read_config([REPO / "configs" / "benchmark.json", REPO / "configs" / "ablation.json"])
    bench = parser.get_parsed_content("benchmark", instantiate=True)
    x = torch.rand(1, 1, 32, 32)
    for name in bench.methods:
        backbone, net_kwargs = bench.network(name)
        options, _ = bench.choose("default", name)
        net = build_method(
            bench.base_method(name), 2, 1, 2, backbone=backbone, net_kwargs=net_kwargs, **options
        ).net
        assert net(x).shape == (1, 2), name
        blocks = [m for m in net.modules() if type(m).__name__ == "DualSuppressionBlock"]
        variant = bench.variants.get(name, {})
        for key in ("branches", "g", "t", "init"):
            if key in variant:
                assert blocks and all(getattr(b, key) == variant[key] for b in blocks), (name, key)
        if "pooling" in variant.get("net_kwargs", {}):  # the network's own option reaches the network
            assert net.pooling == variant["net_kwargs"]["pooling"], name
        if name == "sfs1_conv5":  # the block where the variant puts it, and only there
            blocks = [n for n, m in net.named_modules() if type(m).__name__ == "DualSuppressionBlock"]
            assert blocks == ["backbone.plugin_conv5"]


def test_a_runs_training_keys_are_its_variants_and_recorded_as_trained(tmp_path):
    """``run_train``: the benchmark's ``train`` under a variant's own ``train`` entry (and the prior's one
    epoch) is what the bundle gets and what ``result.json`` records."""
    variants = {"cam_affine": {"method": "cam", "train": {"augmentation": "affine", "epochs": 3}}}
    bench = Benchmark(
        tmp_path, {"d": {}}, ["prior", "cam", "cam_affine"], seeds=[0], train={"epochs": 5, "flip": False},
        variants=variants, report=False,
    )  # fmt: skip
    assert bench.run_train("cam")["epochs"] == 5 and "augmentation" not in bench.run_train("cam")
    assert bench.run_train("cam_affine")["augmentation"] == "affine"
    assert bench.run_train("cam_affine")["epochs"] == 3 and bench.run_train("cam_affine")["flip_prob"] == 0.0
    assert bench.run_train("prior")["epochs"] == 1


def test_map_shape_table_measures_every_test_lesion_of_the_runs(tiny, tmp_path, monkeypatch):
    from monai_wsol.benchmark.shapes import lesion_examples, map_shape_table, validation_dice_tau
    from monai_wsol.metrics import map_shape

    bench = Benchmark(
        tmp_path, {"d": {"datalist": str(tiny)}}, ["cam", "gradcam"], seeds=[0], image_size=32,
        backbone="cnn", net_kwargs=TINY_CNN, train={"epochs": 1, "batch_size": 4}, num_examples=0,
        report=False,
    )  # fmt: skip
    for method in ("cam", "gradcam"):
        bench.run_one("d", method, 0, {})
    table = map_shape_table(bench, "d", ["cam", "gradcam"], [0])
    lesions = sum(1 for item in json.loads(tiny.read_text())["test"] if item["label"])
    examples = lesion_examples(bench, "d", "cam", 0, lesions)
    assert len(examples["cams"]) == lesions and examples["cams"].shape == examples["gt_masks"].shape
    tau = validation_dice_tau(bench, "d", "cam", 0)
    mass = np.mean(
        [
            map_shape(c, m, tau)["mass_in_lesion"]
            for c, m in zip(examples["cams"], examples["gt_masks"], strict=True)
        ]
    )
    cam_row = next(line for line in table.splitlines() if line.startswith("| cam |"))
    assert cam_row.split("|")[2].strip().startswith(f"{mass:.3f}")
    assert "| gradcam |" in table and "Differences from `cam`" in table
    # the maps are kept: asking again evaluates nothing
    monkeypatch.setattr(BundleRunner, "evaluate", lambda *a, **k: pytest.fail("evaluated again"))
    assert map_shape_table(bench, "d", ["cam", "gradcam"], [0]) == table
