"""Training reliability: the datalist is checked before the first epoch, and runs do not clobber.

Each datalist defect is refused at start-up with one line naming the entry (split, index, image path) and no
run folder left behind; ``bundle/models/model.pt`` changes only with ``export_model``; ``resume`` reads
true/false in any case; a resume keeps only the latest and the best checkpoints; a non-finite loss names the
files of its batch.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from _bundle_helpers import TINY, TINY_CNN, TRAIN, make_tiny_data, run_cli, run_workflow
from ignite.engine import Engine

from monai_wsol.data import DatalistError, validate_datalist
from monai_wsol.engines import (
    AtomicCheckpointSaver,
    NonFiniteLossError,
    ResumeCheckpointLoader,
    RunRefused,
    as_bool,
    checked_training_data,
    parse_resume,
    resume_checkpoint,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("data"))


#: a compact DenseNet: these tests are about the workflow around the network, not about what it learns
SMALL_NET = TINY_CNN


def _train(data_dir: Path, out: Path, run_name: str, **overrides) -> Path:
    args = {**TINY, "dataset_dir": str(data_dir), "output_dir": str(out / "runs"), "run_name": run_name}
    args["network_kwargs"] = SMALL_NET
    args.update(bundle_root=str(out / "bundle"), **overrides)
    run_workflow("training", TRAIN, **args)
    return out / "runs" / run_name


@contextmanager
def _logged(name: str = "monai_wsol") -> Iterator[list[str]]:
    """The messages logged under ``name`` (INFO and up) inside the block.

    A handler on the package's logger: ``monai.bundle`` reconfigures the root logger from the bundle's
    ``logging.conf``, which removes pytest's ``caplog`` handler from it.
    """

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    lines: list[str] = []
    logger, handler = logging.getLogger(name), _Collect(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _absolute_datalist(data_dir: Path) -> dict:
    """The tiny datalist with absolute paths, so a modified copy can live in another folder."""
    datalist = json.loads((data_dir / "datalist.json").read_text())
    for split in ("training", "validation", "test"):
        for item in datalist[split]:
            for key in ("image", "mask"):
                if key in item:
                    item[key] = str(data_dir / item[key])
    return datalist


def _write_nifti(path: Path, array: np.ndarray, like: Path) -> str:
    nib.save(nib.Nifti1Image(array, nib.load(like).affine), path)
    return str(path)


def _nan_image(d: dict, folder: Path) -> None:
    src = Path(d["training"][4]["image"])
    array = np.asarray(nib.load(src).dataobj, dtype=np.float32).copy()
    array.reshape(-1)[:400] = np.nan
    d["training"][4]["image"] = _write_nifti(folder / "nan.nii.gz", array, src)


def _truncated_image(d: dict, folder: Path) -> None:
    raw = Path(d["training"][5]["image"]).read_bytes()
    (folder / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    d["training"][5]["image"] = str(folder / "cut.nii.gz")


def _grid_mismatch(d: dict, folder: Path) -> None:
    d["validation"][2]["mask"] = _write_nifti(
        folder / "small_mask.nii.gz", np.zeros((32, 32), np.uint8), Path(d["validation"][2]["image"])
    )


def _set(split: str, index: int, key: str, value) -> Callable[[dict, Path], None]:
    def edit(d: dict, folder: Path) -> None:
        d[split][index][key] = value

    return edit


def _drop_image(d: dict, folder: Path) -> None:
    del d["validation"][1]["image"]


def _one_class(d: dict, folder: Path) -> None:
    for item in d["training"]:
        item["label"] = 0


def _empty_training(d: dict, folder: Path) -> None:
    d["training"] = []


# row of docs/reliability.md -> (edit of the datalist, the split[index] named, a phrase of the problem)
DEFECTS = {
    "missing file": (_set("training", 3, "image", "/nowhere/missing.nii.gz"), "training[3]", "no such file"),
    "no image key": (_drop_image, "validation[1]", "no 'image' key"),
    "string label": (_set("training", 2, "label", "1"), "training[2]", "must be a non-negative integer"),
    "negative-size box": (
        _set("validation", 0, "boxes", [[30, 30, 10, 40]]),
        "validation[0]",
        "negative size",
    ),
    "truncated NIfTI": (_truncated_image, "training[5]", "unreadable or truncated"),
    "grid mismatch": (_grid_mismatch, "validation[2]", "differs from the image grid"),
    "label 7": (_set("training", 1, "label", 7), "training[1]", "outside the class set (classes 0..1"),
    "NaN voxels": (_nan_image, "training[4]", "400 NaN and 0 infinite voxels"),
    "box outside": (_set("validation", 3, "boxes", [[50, 50, 70, 60]]), "validation[3]", "outside the image"),
    "empty training": (_empty_training, "training: the split is empty", "add entries"),
    "one class": (_one_class, "training: all 8 labels are class 0", "set allow_single_class=true"),
}


def _defective(data_dir: Path, folder: Path, edit: Callable[[dict, Path], None]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    datalist = _absolute_datalist(data_dir)
    edit(datalist, folder)
    (folder / "datalist.json").write_text(json.dumps(datalist))
    return folder


def _line_with(message: str, *fragments: str) -> str:
    lines = [line for line in message.splitlines() if all(f in line for f in fragments)]
    assert lines, f"no line of the message holds {fragments}:\n{message}"
    return lines[0]


@pytest.mark.parametrize("row", list(DEFECTS))
def test_bad_datalist_refused_before_the_run_folder(data_dir, tmp_path, row):
    edit, entry, problem = DEFECTS[row]
    ds = _defective(data_dir, tmp_path / "ds", edit)
    with pytest.raises(RunRefused) as info:
        _train(ds, tmp_path, "refused", epochs=1)
    message = str(info.value)
    assert message.startswith("Training refused before the first epoch (nothing was written)")
    line = _line_with(message, entry, problem)
    if "[" in entry:  # an entry (not a whole split): its image path is on the same line
        d = json.loads((ds / "datalist.json").read_text())
        split, index = re.match(r"(\w+)\[(\d+)\]", entry).groups()
        image = d[split][int(index)].get("image", "<missing>")
        assert f"(image {image})" in line
    assert not (tmp_path / "runs").exists()  # validated before prepare_run_dir: no run folder
    assert not (tmp_path / "bundle").exists()


def test_truncated_datalist_json_refused(data_dir, tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    text = json.dumps(_absolute_datalist(data_dir))
    (folder / "datalist.json").write_text(text[: len(text) // 2])
    with pytest.raises(RunRefused) as info:
        _train(folder, tmp_path, "refused", epochs=1)
    _line_with(str(info.value), str(folder / "datalist.json"), "invalid JSON at line 1")
    assert not (tmp_path / "runs").exists()


def test_every_bad_entry_reported_at_once(data_dir, tmp_path):
    edits = [DEFECTS[row][0] for row in ("missing file", "label 7", "NaN voxels", "box outside")]

    def all_of(d: dict, folder: Path) -> None:
        for edit in edits:
            edit(d, folder)

    ds = _defective(data_dir, tmp_path / "ds", all_of)
    with pytest.raises(DatalistError) as info:
        validate_datalist(ds / "datalist.json", num_classes=2)
    named = sorted(f"{p.split}[{p.index}]" for p in info.value.problems)
    assert named == ["training[1]", "training[3]", "training[4]", "validation[3]"]
    # without the class count a label of 7 is a valid class index: train.json must pass num_classes
    with pytest.raises(DatalistError) as info:
        validate_datalist(ds / "datalist.json")
    assert "training[1]" not in str(info.value)


def test_cli_refusal_is_one_clean_error(data_dir, tmp_path):
    ds = _defective(data_dir, tmp_path / "ds", DEFECTS["label 7"][0])
    res = run_cli(
        ["-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--dataset_dir", str(ds)]
        + ["--output_dir", str(tmp_path / "runs"), "--bundle_root", str(tmp_path / "bundle")],
        PYTHONWARNINGS="ignore",
    )
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "Failed to evaluate" not in res.stderr, res.stderr[-3000:]
    _line_with(res.stderr, "training[1] (image ", "training_0001.nii.gz", "label 7 is outside the class set")
    assert len(res.stderr.strip().splitlines()) == 2  # the summary and the one bad entry
    assert not (tmp_path / "runs").exists()


def test_single_class_allowed_on_request(data_dir, tmp_path, caplog):
    ds = _defective(data_dir, tmp_path / "ds", _one_class)
    with pytest.raises(RunRefused, match="a classifier trained on one class learns nothing"):
        checked_training_data(ds / "datalist.json", num_classes=2)
    with caplog.at_level(logging.WARNING, logger="monai_wsol.data.datalist"):
        data = checked_training_data(ds / "datalist.json", num_classes=2, allow_single_class="True")
    assert len(data["training"]) == 8 and "all 8 labels are class 0" in caplog.text


def test_model_pt_touched_only_when_asked(data_dir, tmp_path):
    exported = tmp_path / "bundle" / "models" / "model.pt"
    exported.parent.mkdir(parents=True)
    exported.write_bytes(b"the user's model")
    # --resume false and --export_model false as the command line passes them (strings)
    with _logged() as log:
        run = _train(data_dir, tmp_path, "plain", epochs=1, resume="false", export_model="FALSE")
    assert exported.read_bytes() == b"the user's model"
    assert (run / "checkpoints" / "model.pt").is_file()
    assert _line_with("\n".join(log), "Model not exported (export_model=false)", str(exported))
    assert _line_with("\n".join(log), "export_model=false", "will not be touched")  # said at start-up too
    assert json.loads((run / "config.json").read_text())["resume"] is False

    with _logged() as log:
        run = _train(data_dir, tmp_path, "exported", epochs=1, export_model="true")
    assert exported.read_bytes() == (run / "checkpoints" / "model.pt").read_bytes()
    assert _line_with("\n".join(log), f"Exported model to {exported} (export_model=true)")


@pytest.mark.parametrize(
    "value, parsed",
    [
        ("false", False),
        ("FALSE", False),
        (False, False),
        (0, False),
        ("", False),
        (None, False),
        ("True", True),
        ("yes", True),
        (1, True),
        ("runs/a/checkpoints/checkpoint_epoch=2.pt", "runs/a/checkpoints/checkpoint_epoch=2.pt"),
    ],
)
def test_resume_parsing(value, parsed):
    assert parse_resume(value) == parsed


def test_bool_keys_refuse_other_values():
    assert as_bool("Off", "export_model") is False and as_bool("ON", "export_model") is True
    with pytest.raises(RunRefused, match="export_model='maybe' is not a boolean"):
        as_bool("maybe", "export_model")


def test_nothing_to_resume_says_so_in_one_line(data_dir, tmp_path):
    with pytest.raises(RunRefused) as info:
        _train(data_dir, tmp_path, "never_ran", resume="true")
    message = str(info.value)
    assert "\n" not in message and message.startswith("Nothing to resume: resume=true but")
    assert str(tmp_path / "runs" / "never_ran" / "checkpoints") in message
    assert not (tmp_path / "runs").exists()
    with pytest.raises(RunRefused, match="^Nothing to resume: resume='/nowhere/c.pt' is not a checkpoint"):
        resume_checkpoint("/nowhere/c.pt", tmp_path)


def test_new_run_refused_in_a_folder_holding_a_run(data_dir, tmp_path):
    run = _train(data_dir, tmp_path, "taken", epochs=1)
    before = (run / "checkpoints" / "checkpoint_epoch=1.pt").read_bytes()
    with pytest.raises(RunRefused, match="already holds a run \\(checkpoint_epoch=1.pt\\)"):
        _train(data_dir, tmp_path, "taken", epochs=1)
    assert (run / "checkpoints" / "checkpoint_epoch=1.pt").read_bytes() == before


def test_resume_keeps_only_latest_and_best(data_dir, tmp_path):
    straight = _train(data_dir, tmp_path, "straight", epochs=2)
    interrupted = _train(data_dir, tmp_path, "resumed", epochs=2, **{"train#trainer#max_epochs": 1})
    assert sorted(p.name for p in (interrupted / "checkpoints").iterdir()) == [
        "checkpoint_epoch=1.pt",
        "model.pt",
    ]
    resumed = _train(data_dir, tmp_path, "resumed", epochs=2, resume="TRUE")
    # the stale epoch-1 checkpoint is gone once epoch 2 is written; the best model is kept
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == [
        "checkpoint_epoch=2.pt",
        "model.pt",
    ]
    # the best-model score survived the resume: the same epoch's weights are the best in both runs
    a = torch.load(straight / "checkpoints" / "model.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    best = torch.load(resumed / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)[
        "best_model_saver"
    ]
    scores = [r["val_auc"] for r in json.loads((resumed / "metrics.json").read_text())]
    assert [score for score, _ in best["_saved"]] == [pytest.approx(max(scores))]


def test_non_finite_loss_names_the_batch_files(data_dir, tmp_path):
    nan_loss = "$lambda p, y: torch.nn.functional.cross_entropy(p, y) * float('nan')"
    with pytest.raises(RuntimeError) as info:  # monai.bundle wraps it in "Failed to evaluate ..."
        _train(data_dir, tmp_path, "nan", epochs=1, loss=nan_loss)
    e = info.value
    while e is not None and not isinstance(e, NonFiniteLossError):
        e = e.__cause__
    assert e is not None, info.value
    held = re.search(r"The batch held 4 image\(s\): (.+?)\. ", str(e))
    assert held, str(e)
    training = {str(data_dir / item["image"]) for item in _read(data_dir)["training"]}
    assert set(held.group(1).split(", ")) <= training
    # a fresh run stopped in its first epoch has no checkpoint to point to
    assert "No checkpoint was written before it." in str(e) and "last good checkpoint" not in str(e)


def _read(data_dir: Path) -> dict:
    return json.loads((data_dir / "datalist.json").read_text())


def test_saver_adopts_earlier_interval_checkpoints(tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 2)
    for epoch in (1, 2):  # left by an interrupted run (an older version kept the first one too)
        torch.save({"model": net.state_dict()}, tmp_path / f"model_epoch={epoch}.pt")
    (tmp_path / "model_epoch=9.pt").write_bytes(b"ahead of the resumed epoch: not this run's to delete")
    engine = Engine(lambda e, b: None)
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_interval=1, n_saved=1)
    saver.attach(engine)
    engine.state.epoch = 3

    def broken_save(obj, f, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        saver.interval_completed(engine)
    # nothing is deleted before the new checkpoint exists
    assert {p.name for p in tmp_path.iterdir()} == {
        "model_epoch=1.pt",
        "model_epoch=2.pt",
        "model_epoch=9.pt",
    }
    monkeypatch.undo()
    engine.state.epoch = 4
    saver.interval_completed(engine)
    assert {p.name for p in tmp_path.iterdir()} == {"model_epoch=4.pt", "model_epoch=9.pt"}


def test_header_only_check_still_catches_truncation(data_dir, tmp_path):
    ds = _defective(data_dir, tmp_path / "ds", _truncated_image)
    with pytest.raises(DatalistError, match=r"training\[5\] .*cut.nii.gz\): unreadable or truncated"):
        validate_datalist(ds / "datalist.json", num_classes=2, check_voxels=False)
    ds2 = _defective(data_dir, tmp_path / "ds2", _nan_image)
    # NaN needs the voxels: with headers only the entry passes, with voxels it is refused
    assert len(validate_datalist(ds2 / "datalist.json", num_classes=2, check_voxels=False)["training"]) == 8
    with pytest.raises(DatalistError, match="400 NaN"):
        validate_datalist(ds2 / "datalist.json", num_classes=2, check_voxels=True)


def test_valid_datalist_passes(data_dir):
    # no false alarm on a good datalist; paths come back absolute for the datasets
    data = validate_datalist(data_dir / "datalist.json", num_classes=2)
    assert [len(data["training"]), len(data["validation"])] == [8, 4]
    assert data["training"][0]["image"] == str(data_dir / _read(data_dir)["training"][0]["image"])


def test_best_model_score_survives_a_resume(tmp_path):
    net = torch.nn.Linear(2, 2)

    def validated(saver: AtomicCheckpointSaver, score: float) -> bytes | None:
        engine = Engine(lambda e, b: None)
        engine.state.metrics = {"val_auc": score}
        with torch.no_grad():
            net.weight.fill_(score)
        saver.metrics_completed(engine)
        best = tmp_path / "model.pt"
        return best.read_bytes() if best.exists() else None

    def new_saver() -> AtomicCheckpointSaver:
        return AtomicCheckpointSaver(
            str(tmp_path),
            {"model": net},
            save_key_metric=True,
            key_metric_name="val_auc",
            key_metric_filename="model.pt",
        )

    before = new_saver()
    best = validated(before, 0.9)
    state = before.state_dict()  # what the epoch checkpoint holds
    assert [score for score, _ in state["_saved"]] == [0.9]
    after = new_saver()  # the resumed process
    after.load_state_dict(state)
    assert validated(after, 0.5) == best  # worse than before the interruption: the best model stays
    kept = validated(after, 0.95)
    assert kept != best  # a better score still replaces it
    # a saver that forgot the score (MONAI's behaviour on a resume) replaces the best with a worse model
    assert validated(new_saver(), 0.1) != kept


def test_checkpoint_without_best_model_state_still_resumes(tmp_path):
    # an epoch checkpoint written before the best-model state was saved in it
    old = torch.nn.Linear(2, 2)
    torch.save({"model": old.state_dict()}, tmp_path / "checkpoint_epoch=1.pt")
    net = torch.nn.Linear(2, 2)
    saver = AtomicCheckpointSaver(
        str(tmp_path),
        {"model": net},
        save_key_metric=True,
        key_metric_name="val_auc",
        key_metric_filename="m.pt",
    )
    load_dict = {"model": net, "best_model_saver": saver}
    with pytest.raises(ValueError, match="best_model_saver"):  # MONAI's loader insists on every entry
        ResumeCheckpointLoader(str(tmp_path / "checkpoint_epoch=1.pt"), dict(load_dict))(
            Engine(lambda e, b: None)
        )
    with _logged() as log:
        loader = ResumeCheckpointLoader(
            str(tmp_path / "checkpoint_epoch=1.pt"), dict(load_dict), optional=["best_model_saver"]
        )
        loader(Engine(lambda e, b: None))
    assert torch.equal(net.weight, old.weight)
    assert _line_with("\n".join(log), "holds no 'best_model_saver'")
