"""What a screening report says of one series, without a word of patient identity: the finding (``SeriesFinding``,
from the committed ``series`` row and its deciding slice's ``predictions`` row) and the model that made it
(``ScreeningModel``, from the ``runs`` row), plus the identity of this software as the reports name it and the
deterministic UIDs of the objects written for a series.

The patient, study and image attributes a report needs come from the deciding image's DICOM header at write time
(``pipeline.dicomweb.reports``); nothing here holds them. A report's UIDs derive from the run date and the source
series' SeriesInstanceUID alone, as a date's rows in the tables belong to its standing run: writing a run again, or
a re-run of its date (which replaced the date's rows), gives the same UIDs, so a PACS that overwrites instances
replaces the report and never holds two of one night. A series scored again on another night (it gained a slice,
say) gets that night's report beside the earlier one. The run id is written in the report, to find its rows again.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import logging
from collections.abc import Mapping

from pydicom.uid import generate_uid

from model.labels import CLASS_NAMES
from pipeline import schema as col

SOFTWARE = "mri-screen"  # Manufacturer of every object written, and the observing device's name
SOFTWARE_MODEL_NAME = "mri-screen brain MRI tumor screening"  # ManufacturerModelName
MODEL_NAME = "mri-screen brain tumor classifier"  # the algorithm's name; its version is the model version
DISCLAIMER = "AI-generated screening result, not a diagnosis"
CLASS_MEANINGS = {"glioma": "Glioma", "meningioma": "Meningioma", "notumor": "No tumor",
                  "pituitary": "Pituitary tumor"}


def keep_identifiers_out_of_logs() -> None:
    """Quiet the DICOM libraries' INFO and DEBUG lines: highdicom's name the source image's SOP Instance UID,
    dicomweb-client's the studies searched and retrieved."""
    for library in ("highdicom", "dicomweb_client"):
        logging.getLogger(library).setLevel(logging.WARNING)


def software_version() -> str:
    """This software's installed version (``unknown`` when run from a tree that was never installed)."""
    try:
        return importlib.metadata.version("mri-screen")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclasses.dataclass(frozen=True)
class ScreeningModel:
    """The model a finding came from: its name, version, and operating point (the tumor probability at or above
    which a series is flagged)."""

    name: str
    version: str
    operating_point: float

    def __post_init__(self):
        if not 0.0 <= self.operating_point <= 1.0:
            raise ValueError(f"the operating point is a tumor probability between 0 and 1, not {self.operating_point}")

    @classmethod
    def from_run(cls, run: Mapping, name: str = MODEL_NAME) -> ScreeningModel:
        """The model of a ``runs`` row: its ``model_version`` and ``threshold``."""
        return cls(name=name, version=run[col.MODEL_VERSION], operating_point=float(run[col.THRESHOLD]))


@dataclasses.dataclass(frozen=True)
class SeriesFinding:
    """One screened series' verdict. ``tumor_probability``, ``flagged`` and ``predicted_class`` are the series' (by
    the series rule; a flagged series may still have the class ``notumor``: flagged at a tumor probability under
    one half); ``class_probabilities`` are its deciding slice's, in ``CLASS_NAMES`` order;
    ``deciding_frame_index`` is that slice's frame in its file (0 for a single-frame file); ``scored_at`` is when
    the deciding slice was scored."""

    run_id: str
    run_date: str  # the night whose result it is: the report's UIDs derive from it (``object_uids``)
    flagged: bool
    tumor_probability: float
    predicted_class: str
    class_probabilities: tuple[float, ...]
    deciding_frame_index: int
    scored_at: datetime.datetime

    def __post_init__(self):
        if len(self.class_probabilities) != len(CLASS_NAMES):
            raise ValueError(f"class probabilities come one per class ({', '.join(CLASS_NAMES)}), "
                             f"not {len(self.class_probabilities)}")
        if self.predicted_class not in CLASS_NAMES:
            raise ValueError(f"unknown class {self.predicted_class!r}: expected one of {', '.join(CLASS_NAMES)}")
        if self.deciding_frame_index < 0:
            raise ValueError(f"a frame index counts from 0, not {self.deciding_frame_index}")

    @property
    def probabilities(self) -> dict[str, float]:
        """The deciding slice's class probabilities by class name."""
        return dict(zip(CLASS_NAMES, self.class_probabilities))

    @classmethod
    def from_rows(cls, series: Mapping, deciding: Mapping) -> SeriesFinding:
        """The finding of a ``series`` row, with ``deciding``: the ``predictions`` row of its deciding slice (the
        file and frame ``deciding_slice`` names). A series without a verdict (no slice classified) has no finding."""
        if series.get(col.FLAGGED) is None or series.get(col.TUMOR_PROBABILITY) is None:
            raise ValueError("the series has no verdict (none of its slices was classified): there is no finding "
                             "to report")
        if (deciding[col.SOURCE_URI], deciding[col.FRAME_INDEX] or 0) != deciding_slice(series):
            raise ValueError("the prediction row given is not the series' deciding slice")
        return cls(run_id=series[col.RUN_ID], run_date=series[col.RUN_DATE], flagged=bool(series[col.FLAGGED]),
                   tumor_probability=float(series[col.TUMOR_PROBABILITY]),
                   predicted_class=series[col.PREDICTED_CLASS],
                   class_probabilities=tuple(float(deciding[name]) for name in col.PROBABILITY_COLUMNS),
                   deciding_frame_index=int(deciding[col.FRAME_INDEX] or 0), scored_at=deciding[col.SCORED_AT])


def deciding_slice(series: Mapping) -> tuple[str, int]:
    """The (source URI, frame index) of a ``series`` row's deciding slice."""
    index = series[col.MOST_SUSPICIOUS_SLICE_INDEX]
    if index is None:
        raise ValueError("the series has no deciding slice (none of its slices was classified)")
    return series[col.ORDERED_SOURCE_URIS][index], int(series[col.ORDERED_FRAME_INDICES][index])


@dataclasses.dataclass(frozen=True)
class ObjectUIDs:
    """The SeriesInstanceUID and SOPInstanceUID of one object written for a series."""

    series: str
    instance: str


def object_uids(kind: str, run_date: str, source_series_uid: str) -> ObjectUIDs:
    """Deterministic UIDs of the ``kind`` of object (``report``, ``heat-map``) written for a source series on a
    run date: every run of that date gives the same UIDs, another date or series others."""
    return ObjectUIDs(*(generate_uid(entropy_srcs=[SOFTWARE, kind, role, run_date, source_series_uid])
                        for role in ("series", "instance")))


def derived_uid(*parts: str) -> str:
    """A UID derived from ``parts`` alone (the tracking UID of a finding, the observing device's UID)."""
    return generate_uid(entropy_srcs=[SOFTWARE, *parts])
