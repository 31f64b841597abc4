"""End to end ``python -m monai_wsol.evaluate``.

On tiny fake datasets made in tmp_path, good and bad inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from monai_wsol.evaluate import main, resize_box
from monai_wsol.metrics import PxAPMetric, box_iou_inclusive
from monai_wsol.metrics.contours import reference_boxes_from_scoremap

IDS = ["test/a/0.jpg", "test/a/1.jpg", "test/b/2.jpg", "test/b/3.jpg"]
SIZES = {IDS[0]: (100, 80), IDS[1]: (64, 64), IDS[2]: (50, 120), IDS[3]: (90, 90)}
MAP_SHAPES = {IDS[0]: (28, 28), IDS[1]: (32, 24), IDS[2]: (28, 28), IDS[3]: (20, 36)}
BOXES = {
    IDS[0]: [(10, 10, 60, 50)],
    IDS[1]: [(0, 0, 30, 30), (20, 30, 63, 64)],
    IDS[2]: [(5, 40, 45, 119)],
    IDS[3]: [(30, 20, 89, 70)],
}


def _score_map(seed: int, shape) -> np.ndarray:
    m = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    return (m - m.min()) / (m.max() - m.min())


def _write(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


@pytest.fixture
def box_dataset(tmp_path):
    meta = tmp_path / "metadata" / "CUB" / "test"
    _write(meta / "image_ids.txt", IDS)
    _write(meta / "class_labels.txt", [f"{i},{k % 2}" for k, i in enumerate(IDS)])
    _write(meta / "image_sizes.txt", [f"{i},{w},{h}" for i, (w, h) in SIZES.items()])
    _write(meta / "localization.txt", [f"{i},{','.join(map(str, b))}" for i in IDS for b in BOXES[i]])
    for k, image_id in enumerate(IDS):
        path = tmp_path / "maps" / f"{image_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, _score_map(k, MAP_SHAPES[image_id]).astype(np.float32))
    return tmp_path


def _argv(root: Path, *extra: str) -> list[str]:
    return [
        "--scoremap_root", str(root / "maps"), "--metadata_root", str(root / "metadata"),
        "--mask_root", str(root / "masks"), "--dataset_name", "CUB", "--split", "test", *extra,
    ]  # fmt: skip


def _expected_max(root: Path, multi: bool, deltas, taus) -> list[float]:
    """The reference's BoxEvaluator, spelled out: plain per-tau contour loop, GT resized to each map."""
    correct = np.zeros((len(deltas), len(taus)))
    for image_id in IDS:
        smap = np.load(root / "maps" / f"{image_id}.npy").astype(np.float64)
        gt = np.array([resize_box(b, SIZES[image_id], smap.shape[::-1]) for b in BOXES[image_id]])
        best = np.array(
            [box_iou_inclusive(b, gt).max() for b in reference_boxes_from_scoremap(smap, taus, multi)]
        )
        correct += np.stack([best >= d / 100 for d in deltas])
    return list((correct * 100.0 / len(IDS)).max(axis=1))


def test_boxes_end_to_end(box_dataset, capsys):
    out = box_dataset / "result.json"
    assert main(_argv(box_dataset, "--cam_curve_interval", "0.01", "--output", str(out))) == 0
    printed = capsys.readouterr().out
    assert "MaxBoxAccV2" in printed and "BoxAcc@70" in printed
    result = json.loads(out.read_text())
    taus = np.arange(0, 1, 0.01)
    v1 = _expected_max(box_dataset, False, (30, 50, 70), taus)
    v2 = _expected_max(box_dataset, True, (30, 50, 70), taus)
    assert result["MaxBoxAcc"] == v1[1]
    assert result["MaxBoxAccV2"] == pytest.approx(np.mean(v2), abs=0)
    assert [result[f"BoxAcc@{d}"] for d in (30, 50, 70)] == v1  # default: largest contour
    assert result["performance"] == v1[1]
    assert not list(box_dataset.glob(".tmp_*"))


def test_multi_flags_and_workers(box_dataset, tmp_path):
    out = tmp_path / "r.json"
    argv = _argv(box_dataset, "--multi_contour_eval", "--multi_iou_eval", "true", "--output", str(out))
    assert main([*argv, "--num_workers", "2"]) == 0
    result = json.loads(out.read_text())
    v2 = _expected_max(box_dataset, True, (30, 50, 70), np.arange(0, 1, 0.01))
    assert [result[f"BoxAcc@{d}"] for d in (30, 50, 70)] == v2
    assert result["performance"] == result["MaxBoxAccV2"] == float(np.average(v2))


@pytest.mark.slow
def test_module_entry_point(box_dataset, tmp_path):
    out = tmp_path / "cli.json"
    proc = subprocess.run(
        [sys.executable, "-m", "monai_wsol.evaluate", *_argv(box_dataset, "--output", str(out))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(out.read_text())) >= {
        "MaxBoxAcc",
        "MaxBoxAccV2",
        "BoxAcc@30",
        "BoxAcc@50",
        "BoxAcc@70",
    }


def _corrupt_map(root: Path, value) -> None:
    path = root / "maps" / f"{IDS[2]}.npy"
    m = np.load(path)
    m[3, 4] = value
    np.save(path, m)


def _edit(root: Path, name: str, line_no: int, text: str) -> None:
    path = root / "metadata" / "CUB" / "test" / name
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda r: (r / "maps" / f"{IDS[1]}.npy").unlink(), r"1\.jpg\.npy: score map not found"),
        (
            lambda r: np.save(r / "maps" / "test" / "a" / "9.jpg.npy", np.zeros((4, 4))),
            r"9\.jpg\.npy: score map of no",
        ),
        (lambda r: _corrupt_map(r, np.nan), r"2\.jpg\.npy: score map contains NaN"),
        (lambda r: _corrupt_map(r, 1.5), r"2\.jpg\.npy: score map must be min-max normalised"),
        (
            lambda r: _edit(r, "localization.txt", 2, f"{IDS[1]},0,0,70,30"),
            r"localization\.txt:2: box .* outside",
        ),
        (
            lambda r: _edit(r, "localization.txt", 3, f"{IDS[1]},40,30,20,64"),
            r"localization\.txt:3: inverted box",
        ),
        (lambda r: _edit(r, "localization.txt", 4, f"{IDS[2]},5,40,45"), r"localization\.txt:4: expected"),
        (
            lambda r: _edit(r, "localization.txt", 1, f"{IDS[0]},a,10,60,50"),
            r"localization\.txt:1: box coordinates",
        ),
        (lambda r: _edit(r, "image_sizes.txt", 2, f"{IDS[1]},64"), r"image_sizes\.txt:2: expected"),
        (lambda r: _edit(r, "image_ids.txt", 2, IDS[0]), r"image_ids\.txt:2: duplicate"),
    ],
)
def test_bad_inputs_name_file_and_line(box_dataset, tmp_path, capsys, corrupt, match):
    corrupt(box_dataset)
    out = tmp_path / "never.json"
    assert main(_argv(box_dataset, "--output", str(out))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert pytest.importorskip("re").search(match, err), err
    assert not out.exists()


def test_masks_pxap_end_to_end(tmp_path):
    ids = ["val/x/0.jpg", "val/y/1.jpg"]
    meta = tmp_path / "metadata" / "OpenImages" / "val"
    _write(meta / "image_ids.txt", ids)
    _write(meta / "class_labels.txt", [f"{i},0" for i in ids])
    _write(
        meta / "localization.txt",
        [f"{ids[0]},m/0a.png,m/0_ignore.png", f"{ids[0]},m/0b.png,", f"{ids[1]},m/1a.png,m/1_ignore.png"],
    )
    rng = np.random.default_rng(3)
    masks = {name: (rng.random((40, 40)) > 0.7).astype(np.uint8) * 255 for name in ("0a", "0b", "1a")}
    ignores = {name: np.zeros((40, 40), np.uint8) for name in ("0", "1")}
    ignores["0"][:10] = 255
    # masks under the reference's layout mask_root/OpenImages/...
    mdir = tmp_path / "masks" / "OpenImages" / "m"
    mdir.mkdir(parents=True)
    for name, image in {**masks, **{f"{k}_ignore": v for k, v in ignores.items()}}.items():
        cv2.imwrite(str(mdir / f"{name}.png"), image)
    maps = {}
    for k, image_id in enumerate(ids):
        maps[image_id] = _score_map(10 + k, (20, 20))  # half the mask size: masks are resized to each map
        (tmp_path / "maps" / Path(image_id).parent).mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "maps" / f"{image_id}.npy", maps[image_id])
    out = tmp_path / "px.json"
    argv = [
        "--scoremap_root", str(tmp_path / "maps"), "--metadata_root", str(tmp_path / "metadata"),
        "--mask_root", str(tmp_path / "masks"), "--dataset_name", "OpenImages", "--split", "val",
        "--output", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    expected = PxAPMetric(threshold_step=0.01)

    def small(a):
        return cv2.resize(np.float32(a), (20, 20), interpolation=cv2.INTER_NEAREST) > 0.5

    expected(maps[ids[0]][None], (small(masks["0a"]) | small(masks["0b"]))[None], small(ignores["0"])[None])
    expected(maps[ids[1]][None], small(masks["1a"])[None], small(ignores["1"])[None])
    assert json.loads(out.read_text())["PxAP"] == expected.aggregate()["PxAP"]
    (mdir / "1a.png").unlink()
    assert main(argv) == 2
