"""Top-1 / Top-5 / GT-known Loc, honest threshold choice, and the ignite handlers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _paths import GOLDEN
from ignite.engine import Engine

from monai_wsol.metrics.box_accuracy import BoxAccuracyMetric
from monai_wsol.metrics.handlers import (
    BoxAccuracyHandler,
    LocalizationAccuracyHandler,
    MaskOverlapHandler,
    PositiveBoxAccuracyHandler,
    PxAPHandler,
)
from monai_wsol.metrics.localization import LocalizationAccuracyMetric, class_rank
from monai_wsol.metrics.mask_overlap import MaskOverlapMetric
from monai_wsol.metrics.pxap import PxAPMetric
from monai_wsol.metrics.threshold import (
    ThresholdSelection,
    apply_threshold,
    choose_threshold,
    select_threshold,
)

if not GOLDEN.exists():
    GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "metric_golden.npz"
COARSE = np.arange(0, 1, 0.01)


def _core_cam(shape=(32, 32), core=(8, 20, 8, 20), plateau: float = 0.3) -> np.ndarray:
    """A low plateau over the whole map and a bright core: the core's box only appears for tau >= plateau."""
    cam = np.full((1, *shape), plateau)
    r0, r1, c0, c1 = core
    cam[0, r0:r1, c0:c1] = 1.0
    return cam


def test_class_rank_breaks_ties_towards_lower_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 1.0, 5.0, 1.0]])
    labels = torch.tensor([2, 0, 3])
    # row 0: class 1 ties with class 2 and has the lower index -> rank 1; row 1: class 0 is first of a tie;
    # row 2: class 2 beats class 3 and class 1 ties it with a lower index -> rank 2
    assert class_rank(scores, labels).tolist() == [1, 0, 2]
    assert class_rank(scores, torch.tensor([1, 3, 2])).tolist() == [0, 3, 0]


def test_fixed_and_best_threshold_and_classification_gate():
    core_box = np.array([[8, 8, 19, 19]])
    cams = np.stack([_core_cam()] * 3)
    # image 0: class right; image 1: class wrong but in the top 2; image 2: class ranked last
    logits = torch.tensor([[5.0, 1.0, 0.0], [1.0, 5.0, 0.0], [5.0, 1.0, 0.0]])
    labels = [0, 0, 2]
    metric = LocalizationAccuracyMetric(num_classes=3, topk=2, thresholds=COARSE, fixed_threshold=0.2)
    metric(y_pred=logits, y=labels, cam=cams, gt_boxes=[core_box] * 3)
    out = metric.aggregate()
    # tau < 0.3: the plateau is in the mask, the box is the whole map, IoU = 144 / 1024 < 0.5
    # (q = floor(76.5) = 76 > int(0.3 * 255) = 76 is False: the first tau keeping only the core is 0.30)
    assert out["gt_known_loc_fixed"] == 0.0
    assert out["gt_known_loc"] == 100.0 and out["gt_known_loc_threshold"] == pytest.approx(0.30)
    assert out["top1_loc"] == pytest.approx(100 / 3) and out["top2_loc"] == pytest.approx(200 / 3)
    assert out["top1_cls"] == pytest.approx(100 / 3) and out["top2_cls"] == pytest.approx(200 / 3)
    curve = out["gt_known_loc_curve"].numpy()
    np.testing.assert_array_equal(curve, np.where(COARSE >= 0.295, 100.0, 0.0))
    # per class at the best tau: class 0 has images 0 (top-1 right) and 1 (wrong); class 1 has none
    per_class = out["top1_loc_per_class"].numpy()
    assert per_class[0] == 50.0 and np.isnan(per_class[1]) and per_class[2] == 0.0
    assert out["top1_loc_fixed_per_class"].tolist()[0] == 0.0
    assert "pred_class_box_acc" not in out


@pytest.mark.parametrize("multi, key", [(False, "boxacc_coarse_largest"), (True, "boxacc_coarse_multi")])
def test_gt_known_loc_is_the_reference_boxacc_on_golden_maps(multi, key):
    """GT-known Loc(tau) is BoxAcc(tau, 0.5): it must equal the WSOL reference's curve on its own maps."""
    golden = dict(np.load(GOLDEN))  # decompress each array once
    shapes = golden["cam_shapes"]
    offsets = np.r_[0, np.cumsum(shapes[:, 0] * shapes[:, 1])]
    box_offsets = np.r_[0, np.cumsum(golden["gt_box_counts"])]
    n = len(shapes)
    metric = LocalizationAccuracyMetric(
        num_classes=2, thresholds=golden["thresholds_coarse"], multi_contour=multi
    )
    for i in range(n):
        cam = golden["cams_flat"][offsets[i] : offsets[i + 1]].reshape(1, 1, *shapes[i])
        metric(
            y_pred=torch.tensor([[1.0, 0.0]]),
            y=[0],
            cam=cam,
            gt_boxes=[golden["gt_boxes_flat"][box_offsets[i] : box_offsets[i + 1]]],
        )
    out = metric.aggregate()
    np.testing.assert_allclose(out["gt_known_loc_curve"].numpy(), golden[key][1], atol=1e-9)
    assert out["gt_known_loc"] == pytest.approx(golden[key][1].max())
    # every class is right here, so Top-1 Loc is GT-known Loc
    np.testing.assert_array_equal(out["top1_loc_curve"].numpy(), out["gt_known_loc_curve"].numpy())


def test_per_class_figures_equal_metrics_run_per_class():
    rng = np.random.default_rng(5)
    n, c = 9, 3
    cams = [
        _core_cam(core=(r, r + 10, 4, 14), plateau=p)
        for r, p in zip(rng.integers(0, 20, n), rng.uniform(0, 0.9, n), strict=True)
    ]
    boxes = [np.array([[4, 8, 13, 17]])] * n
    labels = rng.integers(0, c, n)
    logits = torch.from_numpy(rng.normal(size=(n, c)))
    full = LocalizationAccuracyMetric(num_classes=c, thresholds=COARSE, topk=2)
    full(y_pred=logits, y=labels, cam=cams, gt_boxes=boxes)
    out = full.aggregate()
    for k in range(c):
        sel = np.flatnonzero(labels == k)
        if sel.size == 0:
            continue
        part = LocalizationAccuracyMetric(num_classes=c, thresholds=COARSE, topk=2)
        part(y_pred=logits[sel], y=labels[sel], cam=[cams[i] for i in sel], gt_boxes=[boxes[i] for i in sel])
        sub = part.aggregate()
        for name in ("top1_loc", "top2_loc", "gt_known_loc"):
            best = int(np.argmin(np.abs(COARSE - out[f"{name}_threshold"])))
            assert out[f"{name}_per_class"][k] == pytest.approx(sub[f"{name}_curve"][best].item())
            assert out[f"{name}_fixed_per_class"][k] == pytest.approx(sub[f"{name}_fixed"])


def test_streaming_reset_images_without_boxes_and_pred_cam_3d():
    cam3d = np.zeros((1, 6, 10, 10))
    cam3d[0, 1:4, 2:7, 3:8] = 1.0
    box3d = np.array([[1, 2, 3, 4, 7, 8]])  # the extractor's own box of the block (ends one past, as 2D)
    wrong = np.zeros_like(cam3d)
    wrong[0, 0, 0, 0] = 1.0
    metric = LocalizationAccuracyMetric(num_classes=2, thresholds=COARSE)
    # batch 1: right class, right CAM; batch 2: an image without boxes (counts for classification only)
    metric(y_pred=torch.tensor([[2.0, 1.0]]), y=[0], cam=cam3d[None], gt_boxes=[box3d], pred_cam=wrong[None])
    metric(
        y_pred=torch.tensor([[0.0, 1.0]]),
        y=[0],
        cam=cam3d[None],
        gt_boxes=[np.zeros((0, 6))],
        pred_cam=cam3d[None],
    )
    out = metric.aggregate()
    assert out["num_images"] == 2 and out["num_images_with_boxes"] == 1
    assert out["top1_cls"] == 50.0 and out["top1_loc"] == 100.0
    # the top-1 class's CAM (a single wrong voxel) localizes nothing
    assert out["pred_class_box_acc"] == 0.0
    metric.reset()
    with pytest.raises(RuntimeError, match="before any image"):
        metric.aggregate()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"y": [3]}, "labels outside"),
        ({"gt_boxes": [np.array([[0, 0, 40, 5]])]}, "outside"),
        ({"gt_boxes": [np.array([[5, 5, 2, 2]])]}, "inverted"),
        ({"gt_boxes": [np.array([[0, 0, 1, 1, 2, 2]])]}, "4 coordinates"),
        ({"y_pred": torch.tensor([[float("nan"), 0.0, 0.0]])}, "NaN"),
        ({"cam": np.full((1, 1, 32, 32), 2.0)}, r"\[0, 1\]"),
        ({"cam": np.zeros((1, 2, 32, 32))}, "channel-first"),
        ({"y": [0, 1]}, "1 integer class labels"),
    ],
)
def test_localization_bad_input(kwargs, match):
    args = {
        "y_pred": torch.tensor([[1.0, 0.0, 0.0]]),
        "y": [0],
        "cam": _core_cam()[None],
        "gt_boxes": [np.array([[8, 8, 19, 19]])],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LocalizationAccuracyMetric(num_classes=3)(**args)
    with pytest.raises(ValueError, match="fixed_threshold"):
        LocalizationAccuracyMetric(num_classes=3, fixed_threshold=0.1234)


# ---------------------------------------------------------------- threshold choice


def test_choose_and_apply_threshold():
    taus = np.arange(0, 1, 0.1)
    curve = np.array([0, 1, 3, 3, 2, np.nan, 0, 0, 0, 0], dtype=float)
    assert choose_threshold(curve, taus) == (pytest.approx(0.2), 3.0)  # first maximum, NaN never chosen
    rows = np.stack([curve, curve[::-1]])
    tau, value = choose_threshold(rows, taus)
    np.testing.assert_allclose(tau, [0.2, 0.6])
    np.testing.assert_array_equal(value, [3.0, 3.0])
    assert apply_threshold(curve, taus, 0.4) == 2.0
    np.testing.assert_array_equal(apply_threshold(rows, taus, [0.4, 0.4]), [2.0, np.nan])
    with pytest.raises(ValueError, match="not one of the thresholds"):
        apply_threshold(curve, taus, 0.45)
    with pytest.raises(ValueError, match="n_tau = 10"):
        choose_threshold(curve[:5], taus)


def test_select_threshold_reports_honest_and_oracle_figures():
    taus = np.arange(0, 1, 0.01)
    val = np.exp(-((taus - 0.3) ** 2) / 0.01)
    test = np.exp(-((taus - 0.5) ** 2) / 0.01)
    sel = select_threshold(val, test, taus, name="BoxAcc@50")
    assert isinstance(sel, ThresholdSelection)
    assert sel.validation_threshold == pytest.approx(0.3) and sel.oracle_threshold == pytest.approx(0.5)
    assert sel.test_value == pytest.approx(test[30]) and sel.oracle_value == pytest.approx(1.0)
    assert sel.test_value < sel.oracle_value
    d = sel.as_dict()
    assert d["BoxAcc@50 [tau chosen on validation, applied to test]"] == pytest.approx(test[30])
    assert d["BoxAcc@50 [oracle tau on test]"] == pytest.approx(1.0)
    # MaxBoxAccV2-style (delta, tau) curves: one tau per row and the mean over rows
    sel2 = select_threshold(np.stack([val, test]), np.stack([test, test]), taus, name="BoxAccV2")
    np.testing.assert_allclose(sel2.validation_threshold, [0.3, 0.5])
    assert sel2.as_dict()[
        "BoxAccV2 [tau chosen on validation, applied to test, mean over rows]"
    ] == pytest.approx((test[30] + 1.0) / 2)
    with pytest.raises(ValueError, match="same shape"):
        select_threshold(val, np.stack([test, test]), taus)


def test_threshold_choice_on_dice_curves_from_mask_overlap():
    rng = np.random.default_rng(2)
    taus = np.arange(0, 1, 0.05)
    curves = []
    for _ in range(2):  # validation split, test split
        metric = MaskOverlapMetric(thresholds=taus)
        cams = rng.random((3, 1, 8, 8))
        metric(cams, cams > 0.6)
        curves.append(metric.aggregate()["dice_curve"])
    sel = select_threshold(curves[0], curves[1], taus, name="Dice")
    assert sel.test_value == pytest.approx(curves[1][int(round(sel.validation_threshold / 0.05))].item())
    assert sel.oracle_value == pytest.approx(curves[1].max().item())


# ---------------------------------------------------------------- ignite handlers


def _engine_data():
    cams = torch.zeros((4, 1, 24, 24))
    cams[:, :, 6:15, 6:15] = 1.0
    cams[1, :, 0:3, 0:3] = 0.5
    cams[3] = torch.from_numpy(_core_cam(shape=(24, 24), core=(2, 10, 2, 10))).float()
    boxes = [np.array([[6, 6, 14, 14]])] * 3 + [np.array([[0, 0, 4, 4], [2, 2, 9, 9]])]
    logits = torch.tensor([[3.0, 1, 0], [0, 2, 1], [1, 1, 0], [0, 0, 5]])
    labels = torch.tensor([0, 2, 1, 2])
    masks = cams > 0.9
    return cams, boxes, logits, labels, masks


@pytest.mark.parametrize("decollated", [True, False])
def test_handlers_record_value_and_details(decollated):
    cams, boxes, logits, labels, masks = _engine_data()

    def step(engine, idx):
        if decollated:  # MONAI evaluators decollate the batch into per-image dicts
            return [
                {
                    "cam": cams[i],
                    "gt_boxes": boxes[i],
                    "gt_mask": masks[i],
                    "pred": logits[i],
                    "label": labels[i],
                }
                for i in idx
            ]
        return {
            "cam": cams[idx],
            "gt_boxes": [boxes[i] for i in idx],
            "gt_mask": masks[idx],
            "pred": logits[idx],
            "label": labels[idx],
        }

    engine = Engine(step)
    # these boxes are in the protocol's convention, as the metrics below read bare arrays by default
    BoxAccuracyHandler(box_convention="protocol").attach(engine, "MaxBoxAcc")
    BoxAccuracyHandler(multi_contour=True, box_convention="protocol").attach(engine, "MaxBoxAccV2")
    PxAPHandler().attach(engine, "PxAP")
    MaskOverlapHandler(value_key="iou").attach(engine, "IoU")
    LocalizationAccuracyHandler(num_classes=3, value_key="top5_loc", box_convention="protocol").attach(
        engine, "Top5Loc"
    )
    LocalizationAccuracyHandler(num_classes=3, box_convention="protocol").attach(engine, "Top1Loc")
    engine.run([[0, 1], [2, 3]], max_epochs=1)

    # the same numbers from the metrics called directly on all images
    v1 = BoxAccuracyMetric(iou_thresholds=(50,))
    v1(cams, boxes)
    v2 = BoxAccuracyMetric(multi_contour=True)
    v2(cams, boxes)
    pxap = PxAPMetric()
    pxap(cams, masks)
    overlap = MaskOverlapMetric()
    overlap(cams, masks)
    loc = LocalizationAccuracyMetric(num_classes=3)
    loc(logits, labels, cams, boxes)
    loc_out = loc.aggregate()
    metrics = engine.state.metrics
    assert metrics["MaxBoxAcc"] == v1.aggregate()["MaxBoxAcc"]
    assert metrics["MaxBoxAccV2"] == v2.aggregate()["MaxBoxAccV2"]
    assert metrics["PxAP"] == pxap.aggregate()["PxAP"]
    assert metrics["IoU"] == overlap.aggregate()["iou"]
    assert metrics["Top1Loc"] == loc_out["top1_loc"] and metrics["Top5Loc"] == loc_out["top5_loc"]
    # 3 classes: the top 5 holds every class, so Top-5 Loc is GT-known Loc, and here Top-1 Loc is less
    assert metrics["Top5Loc"] == loc_out["gt_known_loc"] > metrics["Top1Loc"]
    details = engine.state.metric_details
    assert details["Top1Loc"]["top1_loc_per_class"].shape == (3,)
    assert details["IoU"]["dice"] == overlap.aggregate()["dice"]
    assert details["MaxBoxAcc"]["box_acc"].shape == (1, 1000)


@pytest.mark.parametrize("decollated", [True, False])
def test_positive_box_handler_reads_standard_boxes_and_skips_negatives(decollated):
    # perfect maps of a tall and a wide lesion, and two negatives; GT boxes as datalists hold them (MONAI
    # StandardMode float32 tensors, (0, 4) for a negative)
    cams = torch.zeros((4, 1, 20, 20))
    cams[0, 0, 2:16, 4:7] = 1.0
    cams[2, 0, 12:15, 1:18] = 1.0
    boxes = [
        torch.tensor([[2.0, 4.0, 16.0, 7.0]]),
        torch.zeros((0, 4)),
        torch.tensor([[12.0, 1.0, 15.0, 18.0]]),
        torch.zeros((0, 4)),
    ]

    def step(engine, idx):
        if decollated:
            return [{"cam": cams[i], "boxes": boxes[i]} for i in idx]
        return {"cam": cams[idx], "boxes": [boxes[i] for i in idx]}

    engine = Engine(step)
    default = PositiveBoxAccuracyHandler(multi_contour=True, boxes_key="boxes")
    assert default.metric_fn.box_convention == "standard"
    default.attach(engine, "standard")
    PositiveBoxAccuracyHandler(multi_contour=True, boxes_key="boxes", box_convention="protocol").attach(
        engine, "protocol"
    )
    engine.run([[0, 1], [2, 3]], max_epochs=1)
    assert engine.state.metrics["standard"] == 100.0
    assert engine.state.metric_details["standard"]["num_images"] == 2  # the negatives are not scored
    # the same boxes read in the protocol's order (x = column first) miss both lesions
    assert engine.state.metrics["protocol"] == 0.0


def test_localization_reads_standard_tensors_and_empty_tensors_as_negatives():
    # datalist boxes after EnsureTyped: float32 StandardMode tensors, (0, 4) for an image without a lesion
    cams = torch.zeros((2, 1, 20, 20))
    cams[0, 0, 2:16, 4:7] = 1.0  # a tall lesion, found perfectly
    cams[1, 0, 5, 5] = 1.0
    boxes = [torch.tensor([[2.0, 4.0, 16.0, 7.0]]), torch.zeros((0, 4))]
    metric = LocalizationAccuracyMetric(num_classes=2, thresholds=COARSE, box_convention="standard")
    metric(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), [1, 0], cams, boxes)
    out = metric.aggregate()
    assert out["num_images"] == 2 and out["num_images_with_boxes"] == 1
    assert out["gt_known_loc"] == 100.0 and out["top1_cls"] == 100.0


def test_handler_reports_missing_output_key():
    engine = Engine(lambda e, b: {"cam": torch.zeros(1, 1, 4, 4)})
    MaskOverlapHandler().attach(engine, "Dice")
    with pytest.raises(KeyError, match="gt_mask"):
        engine.run([0], max_epochs=1)


@pytest.mark.parametrize("decollated", [False, True])
def test_mask_overlap_handler_positives_only(decollated):
    # two positives and two negatives whose (normalised) CAMs light up somewhere: positives_only must equal
    # the metric on the positives alone, and differ from the all-image Dice (the negatives add only false
    # positives)
    rng = np.random.default_rng(3)
    cams = torch.from_numpy(rng.random((4, 1, 16, 16))).float()
    masks = torch.zeros(4, 1, 16, 16, dtype=torch.bool)
    masks[0, 0, 2:8, 3:9] = True
    masks[2, 0, 5:12, 6:10] = True
    cams[0, 0, 2:8, 3:9] += 1.0
    cams[2, 0, 5:12, 6:10] += 1.0
    cams = cams / cams.amax(dim=(2, 3), keepdim=True)

    def step(engine, idx):
        if decollated:
            return [{"cam": cams[i], "gt_mask": masks[i]} for i in idx]
        return {"cam": cams[idx], "gt_mask": masks[idx]}

    engine = Engine(step)
    MaskOverlapHandler(positives_only=True).attach(engine, "DicePos")
    MaskOverlapHandler().attach(engine, "DiceAll")
    engine.run([[0, 1], [2, 3]], max_epochs=1)
    positives = MaskOverlapMetric()
    positives(cams[[0, 2]], masks[[0, 2]])
    assert engine.state.metrics["DicePos"] == positives.aggregate()["dice"]
    assert engine.state.metrics["DiceAll"] < engine.state.metrics["DicePos"]
