"""``benchmarks/missed_lesions.py``: the test errors at the validation threshold and the missed lesions."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_wsol.engines.evaluation import SplitCurves, save_curves
from tests.test_pseudo_masks import _load_script

missed_lesions = _load_script("missed_lesions")


def _disc(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_lesion_visibility_is_area_and_contrast_over_ring_noise():
    rng = np.random.default_rng(0)
    image = 10.0 + rng.normal(0.0, 1.0, (64, 64))
    mask = _disc((64, 64), (32, 32), 6)
    image[mask] += 3.0
    area, cnr = missed_lesions.lesion_visibility(image, mask)
    assert area == int(mask.sum())
    assert cnr == pytest.approx(3.0, abs=0.4)
    dim, _ = missed_lesions.lesion_visibility(image - 6.0 * mask, mask)  # a darker lesion: |difference|
    assert dim == area
    assert missed_lesions.lesion_visibility(image - 6.0 * mask, mask)[1] == pytest.approx(cnr, abs=0.4)
    with pytest.raises(ValueError, match="0 pixels"):
        missed_lesions.lesion_visibility(image, np.zeros_like(mask))


def _fake_bench(
    tmp_path: Path, scores_by_seed: dict[int, list[float]], labels: list[int]
) -> tuple[Path, Path]:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    items = []
    for k, label in enumerate(labels):
        mask = _disc((32, 32), (16, 16), 3 + 2 * k) if label else np.zeros((32, 32), bool)
        image = np.full((32, 32), 5.0) + mask * (1.0 + k) + (np.indices((32, 32)).sum(0) % 2) * 0.5
        for sub, arr in (("images", image.astype(np.float32)), ("masks", mask.astype(np.uint8))):
            nib.save(nib.Nifti1Image(arr, np.eye(4)), data / sub / f"t{k}.nii.gz")
        items.append({"image": f"images/t{k}.nii.gz", "mask": f"masks/t{k}.nii.gz", "label": label})
    (data / "datalist.json").write_text(json.dumps({"test": items}))
    bench = tmp_path / "bench"
    for seed, scores in scores_by_seed.items():
        run = bench / "runs" / "s" / "cam" / f"seed{seed}"
        (run / "eval").mkdir(parents=True)
        record = {
            "setting": "s",
            "method": "cam",
            "seed": seed,
            "val": {"decision_threshold": 0.5},
            "test": {},
        }
        (run / "result.json").write_text(json.dumps(record))
        curves = SplitCurves(
            *(np.zeros(1),) * 8,
            lesion_scores=np.asarray(scores, float),
            is_lesion=np.asarray(labels, bool),
        )
        save_curves(curves, run / "eval" / "test.npz")
    return bench, data / "datalist.json"


def test_tables_count_errors_at_the_validation_threshold_and_group_missed_lesions(tmp_path):
    labels = [1, 1, 0, 0]
    # seed 0 misses the second lesion and calls the last negative a lesion; seed 1 makes no error
    bench, datalist = _fake_bench(tmp_path, {0: [0.9, 0.2, 0.1, 0.7], 1: [0.9, 0.6, 0.1, 0.1]}, labels)
    table = missed_lesions.missed_lesion_tables(bench, "s", "cam", datalist)
    assert "| 0 | 0.500 | 50.0 | 1 | 1 |" in table
    assert "| 1 | 0.500 | 100.0 | 0 | 0 |" in table
    first = int(_disc((32, 32), (16, 16), 3).sum())
    second = int(_disc((32, 32), (16, 16), 5).sum())
    rows = [
        line for line in table.splitlines() if line.startswith("| 0 | 1 |") or line.startswith("| 1 | 1 |")
    ]
    assert rows[0].startswith(f"| 0 | 1 | {first} | {first}-{first} |")  # the lesion no seed missed
    assert rows[1].startswith(f"| 1 | 1 | {second} | {second}-{second} |")  # missed by one seed of two
    assert "| 2 |" not in table.split("missed them")[1]  # no lesion missed by both
    only_one = missed_lesions.missed_lesion_tables(bench, "s", "cam", datalist, seeds=[1])
    assert "| 0 | 2 |" in only_one


def test_scores_in_another_order_than_the_datalist_are_refused(tmp_path):
    bench, datalist = _fake_bench(tmp_path, {0: [0.9, 0.2, 0.1, 0.7]}, [1, 1, 0, 0])
    dl = json.loads(datalist.read_text())
    dl["test"] = dl["test"][::-1]
    datalist.write_text(json.dumps(dl))
    with pytest.raises(ValueError, match="not in the order"):
        missed_lesions.missed_lesion_tables(bench, "s", "cam", datalist)
    with pytest.raises(ValueError, match="no finished 'sfs2' run"):
        missed_lesions.missed_lesion_tables(bench, "s", "sfs2", datalist)
