"""A perfect score map (the GT mask itself) scores exactly 100 through every evaluation path, and a map
shifted by one pixel scores exactly what the protocol's IoU gives: box conventions are read right everywhere.

Paths: the bundle's ``evaluate`` workflow (datalist boxes in MONAI StandardMode), ``python -m
monai_wsol.evaluate`` (protocol metadata), and the metric classes directly (2D and 3D).  The lesions are
elongated in different directions, so boxes read with the wrong axis order lose the lesion.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _bundle_helpers import CONFIGS, INFERENCE, REPO

from monai_wsol.boxes import Boxes
from monai_wsol.metrics import MaxBoxAccMetric, MaxBoxAccV2Metric
from monai_wsol.metrics.localization import LocalizationAccuracyMetric
from monai_wsol.transforms.functional import mask_to_boxes
from monai_wsol.writers.nifti import write_nifti

SHAPE_2D = (32, 40)
SHAPE_3D = (12, 16, 20)


def _lesion_masks_2d(shape: tuple[int, int] = SHAPE_2D) -> list[np.ndarray]:
    """Five masks of ``shape`` (at least (32, 40)): tall, wide, diagonal, L-shaped lesions, and two lesions in
    one image."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    tall = ((rr - 14) / 10) ** 2 + ((cc - 9) / 3) ** 2 <= 1
    wide = ((rr - 22) / 3) ** 2 + ((cc - 24) / 12) ** 2 <= 1
    diagonal = (np.abs((rr - 4) - (cc - 12)) <= 2) & (rr >= 4) & (rr < 22)
    ell = np.zeros(shape, dtype=bool)
    ell[5:25, 28:31] = True
    ell[22:25, 14:31] = True
    two = np.zeros(shape, dtype=bool)
    two[3:8, 4:20] = True
    two[14:28, 30:34] = True
    return [tall, wide, diagonal, ell, two]


def _lesion_masks_3d() -> list[np.ndarray]:
    """Three (12, 16, 20) masks with lesions long along each axis in turn (the last one holds two)."""
    masks = [np.zeros(SHAPE_3D, dtype=bool) for _ in range(3)]
    masks[0][1:11, 4:7, 5:8] = True
    masks[1][4:7, 2:14, 9:12] = True
    masks[2][3:5, 5:8, 2:18] = True
    masks[2][8:11, 11:15, 13:15] = True
    return masks


def _gt(mask: np.ndarray) -> Boxes:
    """The mask's GT boxes as the datalists hold them (StandardMode, one per region)."""
    return Boxes.standard(mask_to_boxes(mask, mode="all").astype(np.int64), mask.ndim)


# ------------------------------------------------------------------------------------------------------------
# (a) the bundle's evaluate workflow
# ------------------------------------------------------------------------------------------------------------
class MaskAsCAM(torch.nn.Module):
    """A classifier whose CAM is its input: with the GT mask as the image, the CAM is the perfect map."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))  # something for CheckpointLoader to load

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, *spatial) -> (B, 2) logits."""
        return self.forward_cam(x)[0]

    def forward_cam(
        self, x: torch.Tensor, class_idx: int | None = None, upsample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, *spatial) -> ((B, 2) logits, the input itself as the (B, 1, *spatial) CAM)."""
        peak = x.flatten(1).amax(1)  # lesion present <=> the mask has a foreground pixel
        return torch.stack([-peak, peak], dim=1) * self.scale, x


@pytest.fixture(scope="module")
def mask_dataset(tmp_path_factory) -> Path:
    """A datalist whose images ARE the binary masks (percentile scaling keeps them 0/1), boxes as datalists
    hold them (StandardMode), plus two negatives.  Square images: a box read with the wrong axis order stays
    inside the map, so the metric cannot refuse it and only the score tells."""
    root = tmp_path_factory.mktemp("perfect")
    items = []
    masks = _lesion_masks_2d((40, 40)) + [np.zeros((40, 40), dtype=bool)] * 2
    for i, mask in enumerate(masks):
        path = write_nifti(mask.astype(np.uint8), np.eye(4), root / "masks" / f"case_{i}.nii.gz", fsync=False)
        rel = str(path.relative_to(root))
        items.append(
            {"image": rel, "mask": rel, "label": int(mask.any()), "boxes": _gt(mask).coords.tolist()}
        )
    (root / "datalist.json").write_text(json.dumps({"validation": items}))
    net = MaskAsCAM()
    torch.save(net.state_dict(), root / "model.pt")
    return root


@pytest.fixture(scope="module")
def mask_dataset_3d(tmp_path_factory) -> Path:
    """The 3D counterpart of ``mask_dataset``: volumes that ARE their masks, one negative."""
    root = tmp_path_factory.mktemp("perfect3d")
    items = []
    for i, mask in enumerate(_lesion_masks_3d() + [np.zeros(SHAPE_3D, dtype=bool)]):
        path = write_nifti(mask.astype(np.uint8), np.eye(4), root / "masks" / f"vol_{i}.nii.gz", fsync=False)
        rel = str(path.relative_to(root))
        items.append(
            {"image": rel, "mask": rel, "label": int(mask.any()), "boxes": _gt(mask).coords.tolist()}
        )
    (root / "datalist.json").write_text(json.dumps({"validation": items}))
    torch.save(MaskAsCAM().state_dict(), root / "model.pt")
    return root


def _run_evaluate(root: Path, out: Path, **overrides) -> dict:
    from monai.bundle import ConfigWorkflow

    settings = {
        "dataset_dir": str(root),
        "split": "validation",
        "output_dir": str(out),
        "ckpt_path": str(root / "model.pt"),
        "network_def": MaskAsCAM(),
        "write_outputs": False,
        "device": "cpu",
        "amp": False,
        **overrides,
    }
    workflow = ConfigWorkflow(
        config_file=[INFERENCE, str(CONFIGS / "evaluate.json")],
        run_id="evaluate",
        workflow_type="infer",
        **settings,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    (row,) = json.loads((out / "metrics.json").read_text())
    return row


def test_bundle_evaluate_scores_a_perfect_map_100(mask_dataset, tmp_path):
    row = _run_evaluate(mask_dataset, tmp_path / "standard")
    assert row["MaxBoxAccV2"] == 100.0
    assert row["PxAP"] == 100.0 and row["Dice"] == 1.0  # the CAM is the mask indeed
    assert row["MaxBoxAcc"] == 100.0 and row["accuracy"] == 100.0
    # the same StandardMode boxes read as the protocol's (the former wiring): every elongated lesion's box
    # transposed overlaps the true one by IoU < 0.3, so nothing is found
    wrong = _run_evaluate(mask_dataset, tmp_path / "protocol", **{"handlers#3#box_convention": "protocol"})
    assert wrong["MaxBoxAccV2"] == 0.0


# ------------------------------------------------------------------------------------------------------------
# (b) python -m monai_wsol.evaluate on the protocol's metadata layout
# ------------------------------------------------------------------------------------------------------------
def test_bundle_evaluate_scores_a_perfect_3d_map_100(mask_dataset_3d, tmp_path):
    row = _run_evaluate(mask_dataset_3d, tmp_path / "standard", spatial_dims=3)
    assert row["MaxBoxAccV2"] == 100.0 and row["MaxBoxAcc"] == 100.0
    assert row["PxAP"] == 100.0 and row["Dice"] == 1.0


@pytest.mark.parametrize("slice_axis", [2, 0])
def test_bundle_evaluate_scores_a_2d_model_slice_by_slice_on_volumes_100(
    mask_dataset_3d, tmp_path, slice_axis
):
    # a 2D network run through the volumes slice by slice (the benchmark's 2D-on-slices comparison): the
    # slices' maps restacked in place are the volume's mask, whichever axis the volumes are cut along
    row = _run_evaluate(
        mask_dataset_3d, tmp_path / "slices", spatial_dims=2, image_spatial_dims=3, slice_axis=slice_axis
    )
    assert row["MaxBoxAccV2"] == 100.0 and row["MaxBoxAcc"] == 100.0
    assert row["PxAP"] == 100.0 and row["Dice"] == 1.0 and row["accuracy"] == 100.0


def test_benchmark_reads_the_bundle_evaluation(mask_dataset, tmp_path):
    # the benchmark's evaluation is the bundle's: BundleRunner.evaluate on a perfect map gives 100 too
    from monai_wsol.benchmark.bundle_runs import BundleRunner

    curves = BundleRunner().evaluate(
        mask_dataset / "model.pt",
        "validation",
        tmp_path / "bench",
        {"dataset_dir": str(mask_dataset), "network_def": MaskAsCAM(), "device": "cpu", "amp": False},
    )
    assert curves.scalars["MaxBoxAccV2"] == 100.0 and curves.scalars["Dice"] == 1.0
    assert curves.boxacc_v2.shape == (3, 1000) and curves.boxacc_v2.max() == 100.0
    # the reported tau is where the Dice curve peaks: the first tau above 0 for a binary map (tau 0 keeps
    # every pixel)
    assert curves.dice[0] < 1.0 and curves.scalars["Dice_tau"] == curves.mask_thresholds[1]


def test_the_benchmark_keeps_the_configs_it_started_with(mask_dataset, tmp_path):
    # a long benchmark must not pick up (or break on) an edit of the bundle's configs made while it runs
    from monai_wsol.benchmark.bundle_runs import BundleRunner

    bundle = tmp_path / "bundle"
    shutil.copytree(Path(__file__).resolve().parents[1] / "bundle" / "configs", bundle / "configs")
    runner = BundleRunner(bundle)
    for name in ("inference.json", "evaluate.json"):
        (bundle / "configs" / name).write_text('{"run": "$1/0"}')  # what an edit in progress could leave
    curves = runner.evaluate(
        mask_dataset / "model.pt",
        "validation",
        tmp_path / "bench",
        {"dataset_dir": str(mask_dataset), "network_def": MaskAsCAM(), "device": "cpu", "amp": False},
    )
    assert curves.scalars["MaxBoxAccV2"] == 100.0 and curves.scalars["Dice"] == 1.0
    assert runner.bundle_root == bundle  # the configs' relative paths still start from the bundle


def test_evaluate_cli_scores_a_perfect_map_100(tmp_path):
    ids = [f"test/lesion/{i}.png" for i in range(len(_lesion_masks_2d()))]
    meta = tmp_path / "metadata" / "CUB" / "test"
    meta.mkdir(parents=True)
    loc, sizes = [], []
    for image_id, mask in zip(ids, _lesion_masks_2d(), strict=True):
        path = tmp_path / "maps" / f"{image_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, mask.astype(np.float32))
        sizes.append(f"{image_id},{mask.shape[1]},{mask.shape[0]}")  # width, height: maps at the image size
        loc += [f"{image_id},{','.join(map(str, b))}" for b in _gt(mask).to_protocol().coords.tolist()]
    (meta / "image_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    (meta / "class_labels.txt").write_text("".join(f"{i},0\n" for i in ids))
    (meta / "image_sizes.txt").write_text("".join(f"{s}\n" for s in sizes))
    (meta / "localization.txt").write_text("".join(f"{line}\n" for line in loc))
    out = tmp_path / "result.json"
    argv = ["--scoremap_root", str(tmp_path / "maps"), "--metadata_root", str(tmp_path / "metadata"),
            "--dataset_name", "CUB", "--split", "test", "--multi_contour_eval", "--multi_iou_eval",
            "--output", str(out)]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "monai_wsol.evaluate", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["MaxBoxAccV2"] == 100.0 and result["MaxBoxAcc"] == 100.0
    assert [result[f"BoxAcc@{d}"] for d in (30, 50, 70)] == [100.0] * 3


# ------------------------------------------------------------------------------------------------------------
# (c) the metric classes directly, 2D and 3D
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("masks", [_lesion_masks_2d(), _lesion_masks_3d()], ids=["2d", "3d"])
def test_metrics_score_a_perfect_map_100(masks):
    maps = torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))
    gt = [_gt(m) for m in masks]
    v2, v1 = MaxBoxAccV2Metric(), MaxBoxAccMetric()
    v2(maps, gt)
    v1(maps, [Boxes.standard(mask_to_boxes(m), m.ndim) for m in masks])  # v1 boxes the largest region
    assert v2.aggregate()["MaxBoxAccV2"] == 100.0 and v1.aggregate()["MaxBoxAcc"] == 100.0
    # bare StandardMode arrays, named as such, give the same
    named = MaxBoxAccV2Metric(box_convention="standard")
    named(maps, [b.coords for b in gt])
    assert named.aggregate()["MaxBoxAccV2"] == 100.0
    loc = LocalizationAccuracyMetric(num_classes=2, multi_contour=True, box_convention="standard")
    loc(torch.tensor([[0.0, 1.0]] * len(masks)), [1] * len(masks), maps, [b.coords for b in gt])
    assert loc.aggregate()["gt_known_loc"] == 100.0


# ------------------------------------------------------------------------------------------------------------
# off by one pixel
# ------------------------------------------------------------------------------------------------------------
SIDES = (1, 2, 4, 5)


def _shifted_iou(k: int) -> float:
    """IoU of a k-wide square (cube) box with the same box shifted by one pixel along one axis, by hand.

    Protocol boxes end at start + k and the IoU counts k + 1 pixels per side.  Along the shifted axis the two
    boxes share k of those, along every other axis all k + 1:
    2D: k (k + 1) / (2 (k + 1)^2 - k (k + 1)) = k / (k + 2); 3D: k (k + 1)^2 / (2 (k + 1)^3 - k (k + 1)^2),
    the same k / (k + 2).  k = 1: 1/3, 2: 1/2, 4: 2/3, 5: 5/7.
    """
    return {1: 1 / 3, 2: 1 / 2, 4: 2 / 3, 5: 5 / 7}[k]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_map_shifted_by_one_pixel_scores_the_hand_computed_iou(spatial_dims):
    size = 16
    gts, maps = [], []
    for k in SIDES:
        mask = np.zeros((size,) * spatial_dims, dtype=bool)
        mask[(slice(5, 5 + k),) * spatial_dims] = True
        gts.append(_gt(mask))
        maps.append(np.roll(mask, 1, axis=-1).astype(np.float64))  # one pixel along the last axis
    metric = MaxBoxAccV2Metric()
    metric(np.stack(maps)[:, None], gts)
    out = metric.aggregate()
    # every threshold gives the same (binary) mask, so each image is right at delta exactly when IoU >= delta
    for delta in (30, 50, 70):
        expected = 100.0 * np.mean([_shifted_iou(k) >= delta / 100 for k in SIDES])
        assert out[f"BoxAcc@{delta}"] == expected
    # IoU 1/3, 1/2, 2/3, 5/7: all four pass 0.3, three pass 0.5 (1/2 included), one passes 0.7
    assert [out[f"BoxAcc@{d}"] for d in (30, 50, 70)] == [100.0, 75.0, 25.0]
    assert out["MaxBoxAccV2"] == pytest.approx((100.0 + 75.0 + 25.0) / 3, abs=1e-12)
