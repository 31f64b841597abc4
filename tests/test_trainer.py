"""MethodTrainer: every method trains through MONAI's SupervisedTrainer, resumably.

The method supplies the batch hook, the forward and the loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, EnsureTyped, RandGaussianNoised

from monai_wsol.engines import MethodTrainer, run_method_training
from monai_wsol.methods import build_method
from tests._bundle_helpers import TINY, TINY_CNN, TRAIN, make_tiny_data, run_workflow

TINY_NET = {"init_features": 8, "growth_rate": 4, "block_config": [1, 1], "low_stride": True}


def _loader(n: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    items = [{"image": torch.rand(1, 16, 16, generator=g), "label": torch.tensor(i % 2)} for i in range(n)]
    transform = Compose([EnsureTyped(["image", "label"]), RandGaussianNoised("image", prob=1.0, std=0.1)])
    return DataLoader(Dataset(items, transform=transform), batch_size=4, shuffle=True)


def _trainer(method: str, **options) -> MethodTrainer:
    torch.manual_seed(0)
    spec = build_method(method, 2, 1, 2, net_kwargs=TINY_NET, **options)
    return MethodTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=_loader(),
        optimizer=torch.optim.SGD(spec.net.parameters(), lr=0.01),
        method=spec,
        amp=False,
    )


def test_cutmix_batch_hook_hands_soft_labels_to_the_loss():
    trainer = _trainer("cutmix", seed=0)
    seen = []
    original = trainer.loss_function
    trainer.loss_function = lambda out, target: (seen.append(target.clone()), original(out, target))[1]
    trainer.run()
    assert seen and all(t.shape == (4, 2) and t.dtype.is_floating_point for t in seen)
    assert any(((t > 0) & (t < 1)).any() for t in seen)  # mixed, not one-hot
    assert torch.allclose(seen[0].sum(1), torch.ones(4))


def test_acol_two_head_output_is_reduced_to_logits_after_the_loss():
    trainer = _trainer("acol", hidden_channels=8)
    losses, preds = [], []
    original = trainer.loss_function

    def spy(out, target):
        losses.append(type(out))
        return original(out, target)

    trainer.loss_function = spy
    # MONAI decollates the output: one dict per sample
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: preds.extend(o["pred"] for o in e.state.output)
    )
    trainer.run()
    assert losses and all(t is tuple for t in losses)  # the loss saw both heads
    assert len(preds) == 8 and all(isinstance(p, torch.Tensor) and p.shape == (2,) for p in preds)  # logits


def test_prepare_batch_inferer_and_loss_cannot_be_replaced_silently():
    spec = build_method("cam", 2, 1, 2, net_kwargs=TINY_NET)
    with pytest.raises(TypeError, match="prepare_batch"):
        MethodTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=_loader(),
            optimizer=None,
            method=spec,
            prepare_batch=1,
        )


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    def run(ckpt: Path, epochs: int) -> dict:
        torch.manual_seed(0)
        # CutMix draws its own random numbers (boxes, pairs): EpochSeed reseeds them with the loader's
        spec = build_method("cutmix", 2, 1, 2, net_kwargs=TINY_NET, seed=0)
        loader = _loader()
        opt = torch.optim.SGD(spec.net.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
        trainer = run_method_training(
            spec, loader, opt, sched, epochs, ckpt, seed=3, randomizables=[loader.dataset.transform]
        )
        return {k: v.clone() for k, v in trainer.network.state_dict().items()}

    straight = run(tmp_path / "a", 2)
    run(tmp_path / "b", 1)  # interrupted after one epoch
    resumed = run(tmp_path / "b", 2)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert (tmp_path / "b" / "checkpoint_epoch=2.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["acol", "cutmix", "has", "adl"])
def test_bundle_trains_every_training_method(method, tmp_path):
    data = make_tiny_data(tmp_path / "data")
    run_workflow(
        "training",
        TRAIN,
        bundle_root=str(tmp_path / "bundle"),
        dataset_dir=str(data),
        output_dir=str(tmp_path / "runs"),
        run_name="r",
        method=method,
        network_kwargs=TINY_CNN,  # the bundle's default backbone
        **{**TINY, "epochs": 1},
    )
    run = tmp_path / "runs" / "r"
    assert json.loads((run / "config.json").read_text())["method"] == method
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_dice", "val_auc", "val_acc"} <= set(header)
    assert (run / "checkpoints" / "model.pt").is_file()
