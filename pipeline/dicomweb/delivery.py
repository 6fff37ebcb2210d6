"""A committed run's findings written back beside the images. In: a results output and one of its committed runs, a
checked ``Destination`` (a PACS or a folder), which series (``flagged``, or ``all`` with a verdict), the pseudonym key
and, for heat-map captures, how to draw them; out: ``FindingsDelivered``, the counts, and one log line.

Its series are taken most suspicious first, ``BATCH`` at a time. For each: its finding from the committed rows (the
series row and its deciding slice's prediction row, ``pipeline.report.morning.run_series``); the deciding file's
header read again, without its pixels (``infra.storage.read_bytes`` and ``model.decode.read_dicom`` for a file on
disk or S3; WADO-RS metadata for a PACS instance, ``pipeline.sources.pacs``), so the patient and study attributes
come from the image at write time and go nowhere but into the report; the report, and
with heat maps a capture of the deciding slice, built (``pipeline.dicomweb.reports.report_datasets``); stored.

A series that cannot be written is counted as failed and never stops the others: its deciding file cannot be read
again or found (pseudonymised folders are found with the key), its header no longer holds the series it was scored
in (its key under the pseudonym key differs: the file was replaced since, and a report would reach another
series' study), or it cannot make a report. Its reason names the file by its reference (``f-...``), never a path or
a header value. A PACS that refuses the credentials fails the series not yet stored, at once (each refused login
counts towards locking the account). Images outside any series (JPEG, PNG) have no patient or study to file a
report under: they are counted as skipped, as are series without a verdict (none of their slices classified).

Nothing here writes to the results tables, the counts included: the ``runs`` row is committed with the night's
results, before any finding is sent, and a failed delivery must never touch a committed night; and a delivery can be
done again at any time (``python -m jobs.findings``, its reports' UIDs making the PACS replace what an earlier one
stored), so counts kept in the row would tell of a first attempt, not of what the PACS holds. The job's summary line
and its log carry them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings

import numpy as np
import pydicom

from infra import storage
from infra.ray_runtime import ensure_ray
from model import registry
from model.decode import DecodeError, DecodeLimits, header_value, read_dicom
from pipeline import schema as col
from pipeline.dicomweb.client import AccessRefusedError, load_credentials
from pipeline.dicomweb.destination import Destination
from pipeline.dicomweb.findings import ScreeningModel, SeriesFinding
from pipeline.dicomweb.reports import HeaderError, report_datasets
from pipeline.dicomweb.store import SeriesStored
from pipeline.errors import RunNotStartedError
from pipeline.pseudonym import PseudonymKeyError, pseudonymize
from pipeline.report.images import HeatMaps, SliceReader, run_model
from pipeline.report.morning import (DECIDING_SCORED_AT, FileNames, ReportError, heat_maps_in_worker, latest_run_id,
                                     of_run, run_row, run_series)
from pipeline.results import views
from pipeline.sources.pacs import PacsAddress, PacsOptions, is_dicomweb, pacs_for

logger = logging.getLogger(__name__)

SCOPES = ("flagged", "all")
BATCH = 64  # series whose reports are built, and held in memory, at once
LIMITS = DecodeLimits()  # a deciding file larger than scoring reads is not read again


@dataclasses.dataclass(frozen=True)
class FindingsOptions:
    """What a run's findings are asked for: where they go (``destination``, as ``open_destination`` takes it), for
    which series (``scope``: ``flagged`` or ``all``), with heat-map captures or not, and where the PACS credentials
    are (else the ``DICOMWEB_*`` environment variables)."""

    destination: str
    scope: str = "flagged"
    heat_map: bool = False
    credentials_file: str | None = None

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"findings are written for {' or '.join(SCOPES)} series, not {self.scope!r}")


@dataclasses.dataclass(frozen=True)
class FindingsDelivered:
    """What became of a run's findings. ``stored``: series whose every object was stored; ``failed``: series
    whose objects were not all stored (their reasons are logged); ``skipped``: findings with nowhere to go (images
    outside any series, series without a verdict); ``instances``: objects stored (reports and captures)."""

    run_id: str
    destination: str
    scope: str
    stored: int
    failed: int
    skipped: int
    instances: int

    def summary(self) -> dict:
        """The counts as the job's summary line gives them."""
        return {"to": self.destination, "for": self.scope, "stored": self.stored, "failed": self.failed,
                "skipped": self.skipped, "instances_stored": self.instances}


class FindingError(ValueError):
    """One series' report cannot be made; the message names its file by reference only."""


@dataclasses.dataclass(frozen=True)
class RunWriter:
    """What each series of one run is written with: its model, how its files are named and found, the key, and the
    heat maps' drawing (``heat_maps`` and the model that scored the run; None: no captures)."""

    model: ScreeningModel
    files: FileNames
    key: bytes = dataclasses.field(repr=False)
    heat_maps: HeatMaps | None = None
    heat_map_model: registry.ModelInfo | None = None
    pacs: PacsOptions | None = dataclasses.field(default=None, repr=False)  # how PACS sources are read

    def reports(self, rows: list[dict]) -> tuple[dict[str, list[pydicom.Dataset]], list[SeriesStored]]:
        """The datasets of each series of ``rows`` by series key, and the series whose report could not be made."""
        reports, failures = {}, []
        for row, picture in zip(rows, self.pictures(rows)):
            try:
                reports[row[col.SERIES_KEY]] = self.datasets(row, picture)
            except FindingError as error:
                failures.append(not_written(row, str(error)))
        return reports, failures

    def datasets(self, row: dict, picture: np.ndarray | None) -> list[pydicom.Dataset]:
        header = self.deciding_header(row)
        with warnings.catch_warnings():  # pydicom and highdicom warnings may quote a header value
            warnings.simplefilter("ignore")
            try:
                return report_datasets(finding_of(row), self.model, header, picture)
            except HeaderError as error:
                raise FindingError(str(error)) from None
            except Exception as error:  # highdicom and pydicom raise many types, quoting values
                raise FindingError(f"{type(error).__name__} while building the report (its message is withheld: it "
                                   f"may quote a header value)") from None

    def deciding_header(self, row: dict) -> pydicom.Dataset:
        """The deciding file's header, read again now, holding the series it was scored in."""
        uri = row["deciding_uri"]
        reference, path = self.files.reference(uri), self.files.locate(uri)
        if path is None:
            raise FindingError(f"the deciding file {reference} was not found: its pseudonymised folders are gone")
        try:
            header = source_header(path, self.pacs)
        except (storage.StorageError, DecodeError, ValueError) as error:
            raise FindingError(f"the deciding file {reference} cannot be read again ({type(error).__name__})") from None
        if pseudonymize(header_value(header, "SeriesInstanceUID"), self.key, "series") != row[col.SERIES_KEY]:
            raise FindingError(f"the deciding file {reference} no longer holds the series it was scored in (replaced "
                               f"since the run, or not the run's pseudonym key): no report, so none reaches another "
                               f"series' study")
        return header

    def pictures(self, rows: list[dict]) -> list[np.ndarray | None]:
        """Each row's deciding slice with its heat map (RGB), None where there is none: no heat maps asked or
        possible, a slice no longer readable, or withheld (its file may carry burned-in text)."""
        pictures: list[np.ndarray | None] = [None] * len(rows)
        if self.heat_maps is None or self.heat_map_model is None:
            return pictures
        reader = SliceReader(self.heat_map_model.preprocessing, locate=self.files.locate, name=self.files.reference,
                             pacs=self.pacs)
        slices = [reader(row["deciding_uri"], row["deciding_frame"]) for row in rows]
        shown = [index for index, image in enumerate(slices) if isinstance(image, np.ndarray)]
        if shown:
            overlays = self.heat_maps(np.stack([slices[index] for index in shown]), self.heat_map_model)
            for index, overlay in zip(shown, overlays):
                pictures[index] = overlay
        return pictures


def source_header(uri: str, pacs: PacsOptions | None) -> pydicom.Dataset:
    """A source image's header without its pixels: a file's read and parsed up to them, a PACS instance's
    attributes from WADO-RS (its ``/metadata``, never its pixels), with ``pacs``'s credentials (else the
    ``DICOMWEB_*`` environment variables')."""
    if not is_dicomweb(uri):
        return read_dicom(storage.read_bytes(uri, max_bytes=LIMITS.max_file_bytes), stop_before_pixels=True)
    address = PacsAddress.of_instance(uri)
    server = pacs_for(address.server, pacs or PacsOptions(load_credentials()))
    with server.get(f"{address.path}/metadata", what=address.uri) as response:
        attributes, = response.json()
    # bulk data (the pixels) is only referenced there: left out, or pydicom warns of each reference in the log
    return pydicom.Dataset.from_json({tag: value for tag, value in attributes.items() if "BulkDataURI" not in value})


def finding_of(row: dict) -> SeriesFinding:
    """The finding of a ``run_series`` row; FindingError when its deciding slice has no committed prediction."""
    if row[DECIDING_SCORED_AT] is None:
        raise FindingError("its deciding slice has no committed prediction row")
    deciding = {col.SOURCE_URI: row["deciding_uri"], col.FRAME_INDEX: row["deciding_frame"],
                col.SCORED_AT: row[DECIDING_SCORED_AT], **{name: row[name] for name in col.PROBABILITY_COLUMNS}}
    try:
        return SeriesFinding.from_rows(row, deciding)
    except ValueError as error:
        raise FindingError(str(error)) from None


def not_written(row: dict, reason: str) -> SeriesStored:
    logger.warning("a series' report was not written: %s", reason)
    return SeriesStored(row[col.SERIES_KEY], 0, 1, reason)


def deliver_findings(output: str, run_id: str | None, destination: Destination, scope: str = "flagged",
                     key: bytes | None = None, heat_maps: HeatMaps | None = None,
                     pacs: PacsOptions | None = None) -> FindingsDelivered:
    """Write the findings of the committed run ``run_id`` (None: the latest) of ``output`` to ``destination``;
    ``heat_maps`` draws the captures' heat maps (None: no captures); ``pacs`` says how to read the run's PACS
    sources. See the module docstring."""
    started = time.monotonic()
    connection = views.connect(output)
    run = committed_run(connection, run_id)
    series = run_series(connection, run, flagged_only=scope == "flagged")
    with_verdict = [row for row in series if row[col.FLAGGED] is not None]
    skipped = len(series) - len(with_verdict) + images_outside_series(connection, run, scope)
    connection.close()
    outcomes = deliver_series(with_verdict, run_writer(run, key, heat_maps, pacs), destination) if with_verdict else []
    delivered = FindingsDelivered(
        run[col.RUN_ID], destination.location, scope, sum(1 for outcome in outcomes if not outcome.failed),
        sum(1 for outcome in outcomes if outcome.failed), skipped, sum(outcome.stored for outcome in outcomes))
    log_delivered(delivered, output, time.monotonic() - started)
    return delivered


def heat_maps_in_ray(images: np.ndarray, info: registry.ModelInfo) -> list[np.ndarray]:
    """The heat maps drawn in a Ray task, Ray started (or joined) when first needed: TensorFlow never loads in the
    job's driver."""
    ensure_ray()
    return heat_maps_in_worker(images, info)


def committed_run(connection, run_id: str | None) -> dict:
    try:
        return run_row(connection, run_id or latest_run_id(connection))
    except ReportError as error:
        raise RunNotStartedError(str(error)) from error


def run_writer(run: dict, key: bytes | None, heat_maps: HeatMaps | None, pacs: PacsOptions | None) -> RunWriter:
    """The writer of ``run``'s series; refuses without the key, which finds and checks each deciding file."""
    if key is None:
        raise PseudonymKeyError("writing a run's findings needs the pseudonym key the run used: each deciding file "
                                "is checked to hold the series it was scored in; set PSEUDONYM_KEY or pass "
                                "--pseudonym-key-file")
    heat_map_model = None
    if heat_maps is not None:
        heat_map_model, why_not = run_model(run)
        if heat_map_model is None:
            logger.warning("run %s: its findings go without heat-map captures: %s", run[col.RUN_ID], why_not)
    return RunWriter(ScreeningModel.from_run(run), FileNames(key, run[col.RUN_ID]), key, heat_maps, heat_map_model,
                     pacs)


def deliver_series(rows: list[dict], writer: RunWriter, destination: Destination) -> list[SeriesStored]:
    """Each series' report built and stored, ``BATCH`` series at a time; when the PACS refuses the credentials,
    the series not yet stored fail with its sentence."""
    outcomes: list[SeriesStored] = []
    for start in range(0, len(rows), BATCH):
        reports, failures = writer.reports(rows[start:start + BATCH])
        try:
            with warnings.catch_warnings():  # encoding may warn, quoting a header value
                warnings.simplefilter("ignore")
                stored = destination.store(reports)
        except AccessRefusedError as error:
            logger.error("%s; findings of %d series not stored", error, len(rows) - start)
            return outcomes + [SeriesStored(row[col.SERIES_KEY], 0, 1, str(error)) for row in rows[start:]]
        outcomes.extend(failures + list(stored.series))
    return outcomes


def images_outside_series(connection, run: dict, scope: str) -> int:
    """The run's classified images outside any series (JPEG, PNG) that the scope would report: flagged ones, or
    all (unfamiliar ones apart)."""
    where, parameters = of_run(run)
    chosen = col.FLAGGED if scope == "flagged" else f"NOT coalesce({col.OOD}, false)"
    return connection.execute(f"""
        SELECT count(*) FROM predictions WHERE {where} AND {col.SERIES_KEY} IS NULL
                                            AND {col.STATUS} = '{col.STATUS_OK}' AND {chosen}""",
                              parameters).fetchone()[0]


def log_delivered(delivered: FindingsDelivered, output: str, seconds: float) -> None:
    line = (f"run {delivered.run_id}: findings ({delivered.scope} series) to {delivered.destination}: "
            f"{delivered.stored} series stored ({delivered.instances} objects), {delivered.failed} failed, "
            f"{delivered.skipped} skipped (no series to file them under, or no verdict), in {seconds:.1f} s")
    if delivered.failed:
        logger.warning("%s; the run's results are committed: resend its findings with `python -m jobs.findings "
                       "--results %s --run-id %s --findings-to %s`", line, output, delivered.run_id,
                       delivered.destination)
    else:
        logger.info("%s", line)

