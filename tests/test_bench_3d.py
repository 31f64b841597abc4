"""The 3D inference benchmark's measurement: the maps it times, in float32 and under AMP."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_3d():
    spec = importlib.util.spec_from_file_location("bench_3d", REPO / "benchmarks" / "bench_3d.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode, size", [("cam whole", 24), ("cam windows", 56)])
def test_the_timed_calls_give_the_cam_and_amp_stays_close(bench_3d, mode, size):
    fp32 = bench_3d.measure("cam", size, mode, repeats=1, threads=1)
    amp = bench_3d.measure("cam", size, mode, repeats=1, threads=1, amp=True)
    for result in (fp32, amp):
        assert result["seconds"] > 0 and result["peak_mb"] >= 0
        assert result["output"].shape == (1, 1, size, size, size) and result["output"].dtype == torch.float32
        assert float(result["output"].min()) == 0.0 and float(result["output"].max()) == pytest.approx(1.0)
    difference = (amp["output"] - fp32["output"]).abs()
    # bfloat16 on the CPU: the same map to a few hundredths, yet not the float32 computation
    assert 0 < float(difference.max()) < 0.05
    forward = bench_3d.measure("sfs2", size, "forward", repeats=1, threads=1)
    assert forward["output"].shape == (1, 2)
