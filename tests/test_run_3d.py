"""The 3D benchmark's script: its defaults are the bundle's 3D recipe, and it runs as one job over workers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from monai_wsol.benchmark.bundle_runs import BundleRunner
from monai_wsol.data.synthetic import EMBEDDED_3D

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_3d():
    spec = importlib.util.spec_from_file_location("run_3d", REPO / "benchmarks" / "run_3d.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_3d"] = module
    spec.loader.exec_module(module)
    return module


def test_defaults_are_the_3d_embedded_default_and_the_bundles_3d_recipe(run_3d):
    args = run_3d.parse_args([])
    data = (args.source, args.size, args.n_train, args.n_val, args.n_test)
    assert data == tuple(EMBEDDED_3D[k] for k in ("source", "image_size", "n_train", "n_val", "n_test"))
    assert tuple(args.lesion_radius) == tuple(EMBEDDED_3D["lesion_radius"])
    assert tuple(args.slab_weights) == tuple(EMBEDDED_3D["slab_weights"])
    assert args.interleave is EMBEDDED_3D["interleave_3d"]
    bundle = json.loads((REPO / "bundle" / "configs" / "train.json").read_text())
    three_d = json.loads((REPO / "configs" / "train_3d.json").read_text())
    for key, value in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr)):
        assert value == three_d.get(key, bundle[key]), key
    assert args.network_kwargs == three_d.get("network_kwargs", bundle["network_kwargs"])
    assert args.augmentation == three_d.get("augmentation", bundle["augmentation"]) == "none"
    # the crops' grid is the network's input: train_3d.json trains on what the benchmark measures
    depth = 19
    assert three_d["spatial_size"] == [EMBEDDED_3D["image_size"]] * 2 + [depth]


def test_a_worker_gets_the_same_data_and_training(run_3d, tmp_path):
    argv = ["--out", str(tmp_path), "--n-train", "7", "--size", "32", "--source", "ct", "--no-interleave"]
    argv += ["--lesion-radius", "0.1", "0.3", "--slab-weights", "2", "1", "1", "--distractor"]
    argv += ["--lr", "0.003"]
    argv += ["--epochs", "3", "--batch-size", "2", "--slice-epochs", "2", "--slice-batch-size", "16"]
    parent = run_3d.parse_args([*argv, "--workers", "2", "--seeds", "0", "1"])
    command = run_3d.worker_argv(parent, "sfs2", 1)
    assert command[:2] == [sys.executable, str(REPO / "benchmarks" / "run_3d.py")]
    worker = run_3d.parse_args(command[2:])
    same = ("out", "n_train", "n_val", "n_test", "size", "source", "lesion_radius", "slab_weights")
    same += ("interleave", "distractor", "epochs", "batch_size", "lr", "slice_epochs", "slice_batch_size")
    for key in same:
        assert list(map(str, [getattr(worker, key)])) == list(map(str, [getattr(parent, key)])), key
    assert (worker.methods, worker.seeds, worker.workers, worker.summary) == (["sfs2"], [1], 1, False)


def test_the_references_run_on_their_own_seeds(run_3d):
    args = run_3d.parse_args(
        ["--methods", "prior", "sfs1", "supervised", "cam2d_slices", "--seeds", "0", "1"]
    )
    assert run_3d.run_list(args) == [
        ("prior", 0),
        ("sfs1", 0),
        ("sfs1", 1),
        ("supervised", 0),
        ("cam2d_slices", 0),
    ]
    args = run_3d.parse_args(["--methods", "supervised", "--seeds", "0", "1", "--reference-seeds", "1", "2"])
    assert run_3d.run_list(args) == [("supervised", 1), ("supervised", 2)]
    with pytest.raises(SystemExit):
        run_3d.parse_args(["--workers", "0"])
    with pytest.raises(SystemExit):
        run_3d.parse_args(["--threads", "0"])
    assert run_3d.parse_args([]).threads is None  # this process keeps torch's threads


def test_the_job_list_orders_what_reads_another_runs_output(run_3d, tmp_path):
    args = run_3d.parse_args(
        ["--out", str(tmp_path), "--methods", "layercam", "cam2d_slices", "cam", "prior"]
    )
    args = run_3d.parse_args(
        ["--out", str(tmp_path), "--methods", "layercam", "cam2d_slices", "cam", "prior", "--seeds", "0", "1"]
        + ["--reference-seeds", "0", "1"]
    )
    bench = run_3d.build_benchmark(args)
    done = bench.run_dir("3d", "cam", 1) / "result.json"  # a run finished earlier is not redone
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    jobs = {j.name: j for j in run_3d.job_list(bench, args)}
    assert set(jobs) == {f"3d/{m}/seed{s}" for m in ("layercam", "cam2d_slices", "prior") for s in (0, 1)} | {
        "3d/cam/seed0"
    }
    assert jobs["3d/layercam/seed0"].after == ("3d/cam/seed0",)
    assert jobs["3d/layercam/seed1"].after == ()  # its network is there
    assert jobs["3d/cam2d_slices/seed0"].after == () and jobs["3d/cam2d_slices/seed1"].after == (
        "3d/cam2d_slices/seed0",
    )
    costs = {name: job.cost for name, job in jobs.items()}
    assert costs["3d/cam2d_slices/seed0"] > costs["3d/cam/seed0"] > costs["3d/prior/seed0"]


@pytest.mark.usefixtures("colin27_nii")
def test_the_benchmark_runs_as_one_job_over_two_workers(run_3d, tmp_path, capsys, monkeypatch):
    """Tiny data and one epoch: the data written once by the job, each run in its own worker with its log,
    LayerCAM after the CAM network it reads, the tables over every run; run again, nothing is redone and the
    map shapes and the figure read the maps the runs kept."""
    out = tmp_path / "b3d"
    argv = ["--out", str(out), "--n-train", "8", "--n-val", "4", "--n-test", "4", "--size", "24"]
    argv += ["--epochs", "1"]
    argv += ["--methods", "prior", "cam", "layercam", "--seeds", "0", "--workers", "2"]
    run_3d.main(argv)
    runs = out / "runs" / "3d"
    methods = ("prior", "cam", "layercam")
    results = {m: json.loads((runs / m / "seed0" / "result.json").read_text()) for m in methods}
    assert results["layercam"]["hyperparameters"]["model"] == results["cam"]["hyperparameters"]["model"]
    for method in results:
        assert "Traceback" not in (out / "logs" / "3d" / method / "seed0.log").read_text()
    table = (out / "results_3d.md").read_text()
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["prior", "cam", "layercam"]
    assert (out / "results.md").is_file()
    stamps = {m: (runs / m / "seed0" / "result.json").stat().st_mtime_ns for m in results}
    lesions = sum(
        1 for item in json.loads((out / "data" / "3d" / "datalist.json").read_text())["test"] if item["label"]
    )
    for method in methods:  # every test lesion volume's map, kept by the run's own evaluation
        with np.load(runs / method / "seed0" / "eval" / "test_examples.npz") as kept:
            assert kept["cams"].shape == kept["gt_masks"].shape and kept["cams"].shape[0] == lesions > 0
            assert kept["cams"].ndim == 4  # (lesions, *volume)
    capsys.readouterr()
    monkeypatch.setattr(BundleRunner, "evaluate", lambda *a, **k: pytest.fail("a model evaluated again"))
    run_3d.main(
        [*argv, "--shapes", "cam", "layercam", "--figure", "cam", "layercam", "--figure-lesions", "1"]
    )
    assert {m: (runs / m / "seed0" / "result.json").stat().st_mtime_ns for m in results} == stamps
    assert "0 runs to do" in (out / "benchmark.log").read_text()
    assert "| layercam |" in (out / "map_shapes.md").read_text() and (out / "orthogonal.png").is_file()
