"""The benchmark runner: one budget for every method, choices on validation only, resumable, report written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from monai_wsol.benchmark.runner import (
    Benchmark,
    TrainConfig,
    load_split,
    protocol_boxes,
    tensor_batches,
    train_run,
)
from monai_wsol.methods import build_method
from tests._bundle_helpers import make_tiny_data

REPO = Path(__file__).resolve().parents[1]
TINY_NET = {"init_features": 8, "growth_rate": 4, "block_config": [1, 1, 1], "low_stride": True}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("bench_data")) / "datalist.json"


def test_protocol_boxes_are_column_first_ending_at_start_plus_extent():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 7:11] = True  # rows 2..4, columns 7..10
    mask[8, 0] = True
    assert protocol_boxes(mask).tolist() == [[7, 2, 11, 5], [0, 8, 1, 9]]
    assert protocol_boxes(np.zeros((4, 4), bool)).shape == (0, 4)


def test_load_split_keeps_masks_and_boxes_together(tiny):
    data = load_split(tiny, "training", 32)
    assert data.images.shape == (8, 1, 32, 32) and data.masks.shape == (8, 1, 32, 32)
    assert 0 <= float(data.images.min()) and float(data.images.max()) <= 1
    for label, mask, boxes in zip(data.labels.tolist(), data.masks, data.boxes, strict=True):
        assert (label == 1) == bool(mask.any()) == (len(boxes) > 0)
        for x0, y0, x1, y1 in boxes:  # every GT box (end = start + extent) has mask pixels on its 4 edges
            region = mask[0, y0:y1, x0:x1]
            assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("method", ["has", "cutmix"])
def test_resume_continues_exactly(tiny, tmp_path, method):
    """A run stopped after epoch 1 and resumed ends with the weights of an uninterrupted run (every random
    source -- order, flips, hidden patches, CutMix boxes -- is seeded per epoch)."""
    data = load_split(tiny, "training", 32)
    options = {"grid_size": 8} if method == "has" else {"seed": 0}

    def run(run_dir, interrupt_at=None):
        torch.manual_seed(3)
        spec = build_method(method, 2, 1, 2, net_kwargs=TINY_NET, **options)
        batches = tensor_batches(spec, data, 4)

        def interrupted(epoch, rng):
            if epoch == interrupt_at:
                raise KeyboardInterrupt
            yield from batches(epoch, rng)

        cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2)
        train_run(spec, interrupted, cfg, seed=3, run_dir=run_dir)
        return spec.net

    straight = _state(run(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", interrupt_at=1)  # killed during epoch 2: epoch 1's checkpoint is on disk
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["epoch"] == 0
    resumed = _state(run(tmp_path / "b"))
    assert straight.keys() == resumed.keys()
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=0, msg=k)
    fresh = _state(run(tmp_path / "c"))
    assert all(torch.equal(fresh[k], straight[k]) for k in straight)  # and it is deterministic at all


def test_train_config_optimizer_groups():
    net = build_method("sfs1", 2, 1, 2, net_kwargs=TINY_NET).net
    opt, sched = TrainConfig(optimizer="sgd", lr=0.1, new_layer_lr_ratio=10, schedule="step").make_optimizer(
        net
    )
    old, new = opt.param_groups
    assert old["lr"] == pytest.approx(0.1) and new["lr"] == pytest.approx(1.0)
    names = {id(p): n for n, p in net.named_parameters()}
    assert all(n.startswith("classifier") or "plugin" in n for n in (names[id(p)] for p in new["params"]))
    assert any("plugin" in names[id(p)] for p in new["params"])
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lion").make_optimizer(net)


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
            "net_kwargs": TINY_NET,
            "train#epochs": 1,
            "train#batch_size": 4,
            "train#threads": 1,
            "search": {"sfs1": [{"t": 0.4}, {"t": 0.6}]},
            "num_examples": 2,
        }
    )
    seen_splits = []  # evaluations made (by split size)
    import monai_wsol.benchmark.runner as runner

    original = runner.split_curves

    def spy(spec, data, *a, **k):
        seen_splits.append(len(data.ids))
        return original(spec, data, *a, **k)

    monkeypatch.setattr(runner, "split_curves", spy)
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")

    runs = bench / "runs"
    for setting in ("default", "again"):
        for method in ("cam", "gradcam", "sfs1"):
            for seed in (0, 1):
                result = json.loads((runs / setting / method / f"seed{seed}" / "result.json").read_text())
                assert result["method"] == method and result["seed"] == seed
                assert 0 <= result["test"]["MaxBoxAccV2"] <= 100 and 0 <= result["val"]["MaxBoxAccV2"] <= 100
                assert not (runs / setting / method / f"seed{seed}" / "checkpoint.pt").exists()
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
    for name in ("results.csv", "results.md", "curves_default.png", "examples_default.png", "benchmark.log"):
        assert (bench / name).stat().st_size > 0, name
    assert "| sfs1 |" in (bench / "results.md").read_text()

    # a second run skips every finished run (no training, no evaluation)
    stamp = (runs / "default" / "cam" / "seed0" / "result.json").stat().st_mtime_ns
    seen_splits.clear()
    parser2 = ConfigParser()
    parser2.read_config(REPO / "configs" / "benchmark.json")
    parser2.update(dict(parser.config))
    parser2.get_parsed_content("run")
    assert seen_splits == []
    assert (runs / "default" / "cam" / "seed0" / "result.json").stat().st_mtime_ns == stamp


def test_missing_shared_choice_is_a_clear_error(tiny, tmp_path):
    bench = Benchmark(
        tmp_path, {"d": {"datalist": str(tiny)}}, ["sfs1"], search={"sfs1": [{"t": 0.5}]}, search_in="x",
        image_size=32, net_kwargs=TINY_NET,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"choices_x\.json: no choice for 'sfs1'"):
        bench.run()


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
