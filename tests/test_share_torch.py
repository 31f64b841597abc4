"""scripts/share_torch.py: the MONAI Label environment's torch stack hard-linked from the core one."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests._paths import REPO

_spec = importlib.util.spec_from_file_location("share_torch", REPO / "scripts" / "share_torch.py")
share_torch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(share_torch)


def _fake_dist(site: Path, name: str, version: str, files: dict[str, bytes]) -> None:
    """A wheel-installed distribution: its files plus a dist-info whose RECORD lists them."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    record = [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    for rel, data in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        record.append(f"{rel},,")
    record.append("../../../bin/torchrun,,")  # a console script outside site-packages
    (info / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture
def core_site(tmp_path: Path) -> Path:
    site = tmp_path / "core"
    _fake_dist(
        site, "torch", "2.14.1", {"torch/__init__.py": b"v = 1\n", "torch/lib/libtorch.so": b"\0" * 64}
    )
    _fake_dist(site, "nvidia-cublas", "13.0", {"nvidia/cublas/lib/libcublas.so": b"\1" * 64})
    _fake_dist(site, "numpy", "2.1.0", {"numpy/__init__.py": b"n = 2\n"})
    return site


def test_links_torch_and_cuda_stack_not_other_packages(core_site: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    assert share_torch.main([str(core_site), str(target)]) == 0
    for rel in ("torch/__init__.py", "torch/lib/libtorch.so", "nvidia/cublas/lib/libcublas.so"):
        assert os.path.samefile(core_site / rel, target / rel), rel
    assert (target / "torch-2.14.1.dist-info" / "RECORD").is_file()  # pip in the target sees torch installed
    assert not (target / "numpy").exists()  # the environments' own versions of everything else stay apart
    assert not (tmp_path / "bin").exists()  # console scripts outside site-packages are not linked
    from importlib.metadata import distributions

    names = sorted(d.metadata["Name"] for d in distributions(path=[str(target)]))
    assert names == ["nvidia-cublas", "torch"]


def test_existing_files_kept_and_rerun_links_nothing(core_site: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    (target / "torch").mkdir(parents=True)
    (target / "torch" / "__init__.py").write_bytes(b"own = True\n")
    first = share_torch.link_all(core_site, target)
    assert (target / "torch" / "__init__.py").read_bytes() == b"own = True\n"
    assert share_torch.link_all(core_site, target) == 0
    assert first == len(share_torch.files_to_link(core_site)) - 1


def test_failure_removes_every_link_made(
    core_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    real_link, calls = os.link, []

    def link_then_fail(src, dst):  # the third file is on "another device"
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(18, "Invalid cross-device link")
        real_link(src, dst)

    monkeypatch.setattr(share_torch.os, "link", link_then_fail)
    assert share_torch.main([str(core_site), str(target)]) == 1
    assert len(calls) == 3
    assert not [p for p in target.rglob("*") if p.is_file()]


def test_source_without_torch_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "core"
    _fake_dist(site, "numpy", "2.1.0", {"numpy/__init__.py": b""})
    with pytest.raises(FileNotFoundError, match="no torch distribution"):
        share_torch.files_to_link(site)
    assert share_torch.main([str(site), str(tmp_path / "t")]) == 1
