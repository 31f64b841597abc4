"""Inference from and back to a DICOMweb archive (a PACS such as Orthanc, dcm4chee, Google/Azure DICOM).

The bundle's ``inference`` with ``dicomweb_url`` and ``study_uid`` set:

1. :func:`dicomweb_inputs` (the ``data`` of the run) asks the archive (QIDO-RS) for each study's series,
   retrieves (WADO-RS) every image series into ``<output_dir>/dicomweb/<study>/<series>/`` and lists each
   series folder as one input, so the run treats it as any DICOM series folder (one volume, slice by slice for
   a 2D model; the input checks; the DICOM-SEG on the source instances). What cannot be run is one record, not
   an error: an archive that does not answer or a study it does not hold fail that study at ``fetch``;
   non-image series (SEG, SR, PR, KO, DOC, RT objects) and the results of an earlier run (series
   descriptions starting with ``"monai_wsol "``, e.g. the overlay Secondary Capture) are skipped with a note;
   a study with no image series fails. Series whose results are already stored are not fetched again
   (``<series>_stored.json`` in ``output_dir``).
2. :class:`DicomWebStore` (a handler after :class:`~monai_wsol.engines.LocalizationWriter`) stores each done
   series' DICOM objects (the DICOM-SEG, the CAM's Parametric Map, the boxes' Structured Report and the
   overlay Secondary Capture, each as its ``write_dicom_*`` flag says) back
   into its study in one STOW-RS, checks that the archive then lists each (QIDO-RS: an archive may answer a
   STOW with success and drop an object), and writes ``<series>_stored.json`` (atomically), listing the SOP
   instances stored. A refused or failed store fails that input at ``store`` (the local outputs stay); a
   re-run stores it without inferring again (its local outputs are complete) and skips the series already
   stored.

The archive is reached with ``dicomweb-client`` (``pip install dicomweb-client``, the ``dicomweb`` extra).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from monai_wsol.data.readers import short_error
from monai_wsol.engines.batch import DICOM_FILE_KEYS, InputRecord, add_records, image_stem, problem_item
from monai_wsol.engines.handlers import is_main_process
from monai_wsol.io_utils import atomic_write_json

__all__ = [
    "ArchiveError",
    "NON_IMAGE_MODALITIES",
    "STORED_SUFFIX",
    "DicomWebStore",
    "dicomweb_client",
    "dicomweb_inputs",
    "parse_study_uids",
    "store_verified",
    "stored_marker",
]

logger = logging.getLogger(__name__)

#: series of these modalities hold no image to localise in (results, reports, presentation states...)
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "SR", "PR", "KO", "DOC", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "OT_PDF", "PLAN"}
)
#: the series descriptions of this package's outputs (DICOM-SEG, overlay Secondary Capture) start with it
OWN_SERIES_PREFIX = "monai_wsol "
#: per-series marker in ``output_dir``: the results of that series are stored in the archive
STORED_SUFFIX = "_stored.json"
#: the DICOM attribute tags QIDO-RS answers with (hexadecimal keys of the DICOM JSON model)
_SERIES_UID, _MODALITY, _SERIES_DESCRIPTION = "0020000E", "00080060", "0008103E"


class ArchiveError(RuntimeError):
    """The archive did not do what was asked (unreachable, an error status, a refused store); the message
    names the study or series and the archive's answer."""


def dicomweb_client(url: str, timeout: float = 60.0) -> Any:
    """A ``dicomweb_client.DICOMwebClient`` for ``url`` (the DICOMweb root, e.g.
    ``http://127.0.0.1:8042/dicom-web``) whose requests give up after ``timeout`` seconds."""
    try:
        from dicomweb_client.api import DICOMwebClient
        from dicomweb_client.session_utils import create_session
    except ImportError as e:  # pragma: no cover - the test environment installs it
        raise ImportError(
            "DICOMweb needs dicomweb-client: pip install dicomweb-client (or monai_wsol[dicomweb])"
        ) from e
    session = create_session()
    session.request = _with_timeout(session.request, timeout)  # type: ignore[method-assign]
    return DICOMwebClient(url=str(url).rstrip("/"), session=session)


def _with_timeout(request: Callable, timeout: float) -> Callable:
    def timed(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", timeout)
        return request(*args, **kwargs)

    return timed


def parse_study_uids(study_uid: str | Sequence[str] | None) -> list[str]:
    """The StudyInstanceUIDs of ``study_uid``: one UID, a comma-separated string, a list, or the path of a
    text file with one UID per line (``#`` comments and blank lines ignored). Duplicates are dropped."""
    if study_uid is None:
        raise ValueError(
            "dicomweb_url is set but study_uid is not: give a StudyInstanceUID, a list, or a file"
        )
    if isinstance(study_uid, str):
        path = Path(study_uid)
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            items = [line.split("#", 1)[0].strip() for line in lines]
        else:
            items = [s.strip() for s in study_uid.split(",")]
    else:
        items = [str(s).strip() for s in study_uid]
    uids = list(dict.fromkeys(s for s in items if s))
    for uid in uids:
        if len(uid) > 64 or not all(c.isdigit() or c == "." for c in uid):
            raise ValueError(f"study_uid: {uid!r} is no DICOM UID (digits and dots, at most 64 characters)")
    if not uids:
        raise ValueError(f"study_uid: no StudyInstanceUID in {study_uid!r}")
    return uids


def stored_marker(output_dir: str | os.PathLike, series_uid: str) -> Path:
    """``<output_dir>/<series_uid>_stored.json``: written once the series' results are stored."""
    return Path(output_dir) / f"{series_uid}{STORED_SUFFIX}"


def _value(item: dict, tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def dicomweb_inputs(
    url: str,
    study_uid: str | Sequence[str],
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    client: Any = None,
) -> list[dict]:
    """Retrieve the image series of the studies into ``<output_dir>/dicomweb/<study>/<series>/``; one input
    item per series (``{"image": folder}``), or a record item for what cannot be run (see the module
    docstring). ``overwrite`` fetches and redoes series whose results are already stored."""
    uids = parse_study_uids(study_uid)
    client = client if client is not None else dicomweb_client(url)
    cache = Path(output_dir) / "dicomweb"
    items: list[dict] = []
    for study in uids:
        source = f"{url.rstrip('/')}/studies/{study}"
        try:
            found = client.search_for_series(study_instance_uid=study)
        except Exception as e:
            reason = f"the archive did not list the study's series ({_archive_error(e, url)})"
            items.append(
                problem_item(source, "failed", "fetch", f"{reason}; check dicomweb_url and that it is up")
            )
            continue
        images = []
        for series in found:
            uid, modality = _value(series, _SERIES_UID), _value(series, _MODALITY).upper()
            if modality in NON_IMAGE_MODALITIES:
                what = f"a {modality} series, not an image series"
                items.append(problem_item(f"{source}/series/{uid}", "skipped", "fetch", what))
            elif _value(series, _SERIES_DESCRIPTION).startswith(OWN_SERIES_PREFIX):
                what = (
                    f"results of an earlier run ({_value(series, _SERIES_DESCRIPTION)}), not a source series"
                )
                items.append(problem_item(f"{source}/series/{uid}", "skipped", "fetch", what))
            elif uid:
                images.append(uid)
        if not images:
            reason = (
                "the study holds no image series" if found else "the archive holds no series of this study"
            )
            items.append(problem_item(source, "failed", "fetch", f"{reason}; check study_uid"))
            continue
        for series in images:
            folder = cache / study / series
            if not overwrite and stored_marker(output_dir, series).is_file():
                reason = f"results already stored in the archive ({stored_marker(output_dir, series).name})"
                items.append(
                    problem_item(str(folder), "skipped", "resume", f"{reason}; overwrite=true redoes it")
                )
                continue
            start = time.perf_counter()
            try:
                count = _fetch_series(client, study, series, folder)
            except Exception as e:
                reason = f"series {series} of study {study} could not be retrieved ({_archive_error(e, url)})"
                items.append(problem_item(str(folder), "failed", "fetch", reason))
                continue
            logger.info(
                "fetched: series %s (%d instances) in %.1f s", series, count, time.perf_counter() - start
            )
            items.append({"image": str(folder), "dicomweb": {"study": study, "series": series}})
    return items


def _fetch_series(client: Any, study: str, series: str, folder: Path) -> int:
    """WADO-RS retrieve of a series into ``folder`` (``<SOPInstanceUID>.dcm`` each), replacing what an
    earlier retrieve left there; written to a temporary folder and renamed, so a partial fetch never looks
    like a series."""
    datasets = client.retrieve_series(study, series)
    if not datasets:
        raise ArchiveError(f"the archive returned no instance of series {series}")
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for ds in datasets:
        for tag in [t for t in ds.keys() if t.group == 0]:
            del ds[tag]  # command-set elements (some archives keep them) do not belong in a file
        ds.save_as(partial / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return len(datasets)


class DicomWebStore:
    """Store each done DICOMweb input's DICOM-SEG into its study (STOW-RS); attach after the
    :class:`~monai_wsol.engines.LocalizationWriter` and before the
    :class:`~monai_wsol.engines.batch.InputLog`.

    It acts on the records of ``engine.state.input_records``: an input written in this run (``done`` at
    ``write``) or found complete by a re-run (``skipped`` at ``resume``) whose series has no
    ``<series>_stored.json`` yet is stored; success writes that marker and records ``done`` at ``store``, a
    failure records ``failed`` at ``store`` (the last record of an input counts, so the run's exit status is
    1 and ``failures.csv`` lists it).

    Args:
        url: the DICOMweb root.
        output_dir: the run's output folder (per-input JSON and markers).
        client: a ``DICOMwebClient`` (default: one for ``url``).
    """

    def __init__(self, url: str, output_dir: str | os.PathLike, client: Any = None) -> None:
        self.url = str(url)
        self.output_dir = Path(output_dir)
        self._client = client
        self._seen = 0
        self.stored: list[dict] = []

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = dicomweb_client(self.url)
        return self._client

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._report)

    def _reset(self, engine: Engine) -> None:
        self._seen, self.stored = 0, []

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        records = getattr(engine.state, "input_records", None) or []
        new, self._seen = records[self._seen :], len(records)
        out = []
        for r in new:
            if not (
                (r.status == "done" and r.stage == "write") or (r.status == "skipped" and r.stage == "resume")
            ):
                continue
            if r.output is None or not str(r.output).endswith("_localization.json"):
                continue  # skipped before any output existed (e.g. a series already stored)
            series = image_stem(r.input)
            if stored_marker(self.output_dir, series).is_file():
                continue
            try:
                out.append(self.store(r, series))
            except Exception as e:
                out.append(InputRecord(r.index, r.input, "failed", "store", _store_reason(e), detail=repr(e)))
        self._seen += len(out)  # this handler's own records are not acted on again
        add_records(engine, out)

    def store(self, record: InputRecord, series: str) -> InputRecord:
        """STOW-RS the DICOM objects written for ``record``'s input into its study (:func:`store_verified`);
        write the stored marker."""
        import pydicom

        doc = json.loads(Path(str(record.output)).read_text(encoding="utf-8"))
        files = [doc[k] for k in DICOM_FILE_KEYS if doc.get(k)]
        if not files:
            raise ArchiveError("no DICOM object was written for this input (write_dicom_seg is off?)")
        objects = [pydicom.dcmread(f) for f in files]
        study = str(objects[0].StudyInstanceUID)
        names = ", ".join(Path(f).name for f in files)
        start = time.perf_counter()
        store_verified(self.client, self.url, objects, [Path(f).name for f in files])
        entry = {
            "input": record.input,
            "study": study,
            "series": series,
            "stored": [
                {
                    "file": Path(f).name,
                    "sop_class": str(ds.SOPClassUID),
                    "sop_instance": str(ds.SOPInstanceUID),
                }
                for f, ds in zip(files, objects, strict=True)
            ],
            "archive": self.url,
        }
        atomic_write_json(stored_marker(self.output_dir, series), entry)
        self.stored.append(entry)
        logger.info(
            "stored: %s -> study %s (%s) in %.1f s",
            names,
            study,
            self.url,
            time.perf_counter() - start,
        )
        return InputRecord(record.index, record.input, "done", "store", output=record.output)

    def _report(self, engine: Engine) -> None:
        if self.stored:
            objects = sum(len(entry["stored"]) for entry in self.stored)
            logger.info(
                "dicomweb: the results of %d series stored in %s (%d objects)",
                len(self.stored),
                self.url,
                objects,
            )


def store_verified(client: Any, url: str, objects: Sequence[Any], names: Sequence[str]) -> None:
    """STOW-RS ``objects`` (pydicom datasets of one study) into the archive in one request, then check that
    the archive lists each (QIDO-RS).

    Args:
        client: a ``dicomweb_client.DICOMwebClient`` (:func:`dicomweb_client`).
        url: the archive's DICOMweb URL, for messages.
        objects: the datasets to store.
        names: a name for each dataset (its file name), for messages.

    Raises:
        ArchiveError: the request failed, the archive refused an object, or it does not hold one afterwards
        (an archive may answer a STOW with success and drop the object: Orthanc's ``ReceivedInstanceFilter``
        does), naming the objects, the study and the archive's answer.
    """
    study = str(objects[0].StudyInstanceUID)
    listed = ", ".join(names)
    try:
        response = client.store_instances(list(objects), study_instance_uid=study)
    except Exception as e:
        raise ArchiveError(f"STOW-RS of {listed} into study {study} failed: {_archive_error(e, url)}") from e
    failed = getattr(response, "FailedSOPSequence", None) if response is not None else None
    if failed:
        reasons = ", ".join(
            f"{getattr(f, 'ReferencedSOPInstanceUID', '?')}: 0x{int(getattr(f, 'FailureReason', 0)):04X}"
            for f in failed
        )
        raise ArchiveError(f"the archive refused {listed} in study {study} (failure reasons {reasons})")
    for name, ds in zip(names, objects, strict=True):
        sop_uid = str(ds.SOPInstanceUID)
        try:
            held = client.search_for_instances(
                study_instance_uid=study,
                series_instance_uid=str(ds.SeriesInstanceUID),
                search_filters={"SOPInstanceUID": sop_uid},
            )
        except Exception as e:
            raise ArchiveError(f"the archive did not confirm {name}: {_archive_error(e, url)}") from e
        if not held:
            raise ArchiveError(
                f"the archive answered the STOW of {name} with success but does not hold SOP "
                f"instance {sop_uid} in study {study} (refused or filtered out by the archive)"
            )


def _archive_error(e: BaseException, url: str) -> str:
    """One line for an error of a DICOMweb request (a refused connection says so instead of urllib3's
    nested repr)."""
    import requests

    if isinstance(e, requests.ConnectionError):
        return f"cannot connect to {url}"
    if isinstance(e, requests.Timeout):
        return f"{url} did not answer in time"
    if isinstance(e, requests.HTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code} {e.response.reason} from {e.response.url}"
    return short_error(e)


def _store_reason(e: BaseException) -> str:
    text = str(e) if isinstance(e, ArchiveError) else f"storing the results failed ({short_error(e)})"
    return f"{text}; the local outputs are kept: a re-run stores them"
