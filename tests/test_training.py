"""Training workflow: exact resume, non-finite loss guard, atomic checkpoints, metrics table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _bundle_helpers import TINY, TRAIN, make_tiny_data, run_workflow
from ignite.engine import Engine, Events

from monai_wsol.engines import (
    AtomicCheckpointSaver,
    MetricsTableWriter,
    NonFiniteLossError,
    RunRefused,
    find_last_checkpoint,
    resume_checkpoint,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("data"))


def _train(data_dir: Path, out: Path, run_name: str, **overrides) -> Path:
    args = {**TINY, "dataset_dir": str(data_dir), "output_dir": str(out), "run_name": run_name}
    args.update(bundle_root=str(out / "bundle"), **overrides)
    run_workflow("training", TRAIN, **args)
    return out / run_name


def _assert_same_state(a: dict, b: dict, path: str = "") -> None:
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same_state(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{path}/{i}")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), f"tensors differ at {path}"
    else:
        assert a == b, path


def test_resume_gives_same_weights(data_dir, tmp_path):
    straight = _train(data_dir, tmp_path, "straight")
    # the interrupted run stops after epoch 1 of the same 2-epoch schedule (T_max of the LR schedule is
    # @epochs), then resumes from its last checkpoint
    interrupted = _train(data_dir, tmp_path, "interrupted", **{"train#trainer#max_epochs": 1})
    assert find_last_checkpoint(interrupted / "checkpoints").endswith("checkpoint_epoch=1.pt")
    after_epoch1 = torch.load(interrupted / "checkpoints" / "checkpoint_epoch=1.pt", weights_only=True)[
        "model"
    ]
    resumed = _train(data_dir, tmp_path, "interrupted", resume=True)

    a = torch.load(straight / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)
    # ignite's engine state: 2 epochs of 8 training items in batches of 4
    assert a["trainer"] == b["trainer"] and a["trainer"]["iteration"] == 4 and a["trainer"]["max_epochs"] == 2
    _assert_same_state(a["model"], b["model"])
    _assert_same_state(a["optimizer"], b["optimizer"])
    _assert_same_state(a["lr_scheduler"], b["lr_scheduler"])
    # epoch 2 changed the weights, so the equality above is not between two untouched copies
    assert any(
        not torch.equal(after_epoch1[k], b["model"][k])
        for k in after_epoch1
        if after_epoch1[k].is_floating_point()
    )

    # the metrics table continues across the resume: one row per epoch, no duplicate
    rows = json.loads((resumed / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"val_dice", "val_auc", "val_acc", "val_loss"} <= set(rows[-1])
    assert (resumed / "metrics.csv").read_text().splitlines()[0].startswith("epoch,")
    # and so does the training table, with each epoch's training time (both calls' epochs)
    train_rows = json.loads((resumed / "train_metrics.json").read_text())
    assert [r["epoch"] for r in train_rows] == [1, 2]
    assert all(isinstance(r["epoch_seconds"], float) and r["epoch_seconds"] > 0 for r in train_rows)
    config = json.loads((resumed / "config.json").read_text())
    assert config["resume"] is True and config["epochs"] == 2


def test_non_finite_loss_stops_and_keeps_checkpoint(data_dir, tmp_path):
    run = _train(data_dir, tmp_path, "nan", export_model=True, **{"train#trainer#max_epochs": 1})
    ckpt = run / "checkpoints" / "checkpoint_epoch=1.pt"
    exported = tmp_path / "bundle" / "models" / "model.pt"
    before, exported_before = ckpt.read_bytes(), exported.read_bytes()

    nan_loss = "$lambda p, y: torch.nn.functional.cross_entropy(p, y) * float('nan')"
    with pytest.raises(RuntimeError) as info:  # monai.bundle wraps it in "Failed to evaluate ..."
        _train(data_dir, tmp_path, "nan", resume=True, loss=nan_loss)
    chain, e = [], info.value
    while e is not None:
        chain.append(e)
        e = e.__cause__
    guard = [e for e in chain if isinstance(e, NonFiniteLossError)]
    assert (
        guard and "Non-finite training loss (nan) at epoch 2" in str(guard[0]) and str(run) in str(guard[0])
    )
    # nothing was written over the last good checkpoint or the exported model, and it still loads
    assert find_last_checkpoint(run / "checkpoints") == str(ckpt)
    assert ckpt.read_bytes() == before and exported.read_bytes() == exported_before
    state = torch.load(ckpt, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("kind", ["final", "interval"])
def test_atomic_checkpoint_saver_keeps_old_file_on_failed_save(tmp_path, monkeypatch, kind):
    net = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    if kind == "final":  # fixed file name, rewritten in place
        saver = AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_final=True, final_filename="m.pt")
    else:  # rolling checkpoint_epoch=<N>.pt, n_saved=1
        saver = AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_interval=1, n_saved=1)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    (good_file,) = tmp_path.iterdir()
    good = good_file.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")  # a crash in the middle of serialisation
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with torch.no_grad():
        net.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        if kind == "final":
            saver.completed(engine)
        else:
            engine.state.epoch = 2
            saver.interval_completed(engine)
    # the previous checkpoint is still there, whole, and no temporary file is left behind
    assert [p.name for p in tmp_path.iterdir()] == [good_file.name]
    assert good_file.read_bytes() == good
    monkeypatch.undo()
    if (
        kind == "interval"
    ):  # the next successful save replaces it (ignite names a lone object's file after it)
        engine.state.epoch = 3
        saver.interval_completed(engine)
        assert [p.name for p in tmp_path.iterdir()] == ["model_epoch=3.pt"]


def test_resume_checkpoint_resolution(tmp_path):
    assert resume_checkpoint(False, tmp_path) is None
    with pytest.raises(RunRefused, match="holds no 'checkpoint_epoch"):
        resume_checkpoint(True, tmp_path)
    for n in (2, 10, 9):
        (tmp_path / f"checkpoint_epoch={n}.pt").write_bytes(b"x")
    assert resume_checkpoint(True, tmp_path).endswith("checkpoint_epoch=10.pt")  # numeric, not lexical
    with pytest.raises(RunRefused, match="nope.pt"):
        resume_checkpoint(str(tmp_path / "nope.pt"), tmp_path)


def test_metrics_table_writer_replaces_rows_from_resumed_epochs(tmp_path):
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _metrics(e):
        e.state.metrics = {"acc": float(e.state.epoch) / 10, "auc": float("nan")}

    MetricsTableWriter(tmp_path, stem="m", event="EPOCH_COMPLETED").attach(engine)
    engine.run([0], max_epochs=3)
    # a second writer over the same files (a resumed run) replaces epoch 3 and keeps 1-2
    engine2 = Engine(lambda e, b: None)
    engine2.state.metrics = {"acc": 0.99}
    engine2.state.epoch = 3
    MetricsTableWriter(tmp_path, stem="m")(engine2)
    rows = json.loads((tmp_path / "m.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["acc"] == pytest.approx(0.1) and rows[0]["auc"] is None and rows[2]["acc"] == 0.99
    assert (tmp_path / "m.csv").read_text().splitlines()[0] == "epoch,acc,auc"
