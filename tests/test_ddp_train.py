"""multi_gpu_train.json under torchrun: 2 CPU processes with gloo, DistributedSampler, rank-0 writes."""

from __future__ import annotations

import json

import pytest
import torch
from _bundle_helpers import CONFIGS, TRAIN, make_tiny_data, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_process_gloo_training(tmp_path):
    data = make_tiny_data(tmp_path / "data")
    out, bundle_root = tmp_path / "runs", tmp_path / "bundle"
    configs = f"['{TRAIN}', '{CONFIGS / 'multi_gpu_train.json'}']"
    res = run_cli(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            configs,
            "--meta_file",
            str(CONFIGS / "metadata.json"),
            "--logging_file",
            str(CONFIGS / "logging.conf"),
            "--dataset_dir",
            str(data),
            "--output_dir",
            str(out),
            "--bundle_root",
            str(bundle_root),
            "--epochs",
            "1",
            "--batch_size",
            "2",
            "--spatial_size",
            "[64,64]",
            "--amp",
            "False",
            "--export_model",
            "true",
        ],
        OMP_NUM_THREADS="1",
    )
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    # one run folder shared by both ranks (rank 0's timestamp is broadcast), written by rank 0 only
    (run,) = list(out.iterdir())
    assert (run / "checkpoints" / "checkpoint_epoch=1.pt").is_file()
    state = torch.load(run / "checkpoints" / "checkpoint_epoch=1.pt", weights_only=True)
    # DDP's "module." prefix is stripped: the checkpoint loads into a plain network
    assert not any(k.startswith("module.") for k in state["model"])
    # 8 training items over 2 ranks in batches of 2: 2 iterations per rank and epoch
    assert state["trainer"]["iteration"] == 2
    assert (bundle_root / "models" / "model.pt").is_file()
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1]
    # rank 1 logged no epoch summary (StatsHandler runs on rank 0 only)
    assert res.stdout.count("Epoch[1] Metrics -- train_acc") == 1
