"""A screened series' finding as a DICOM Structured Report that goes back to the PACS beside the images. In: a
``SeriesFinding``, its ``ScreeningModel`` and the deciding image's DICOM header (read with ``stop_before_pixels``);
out: a Comprehensive SR (``screening_report``), or that and a heat-map Secondary Capture (``report_datasets``).

The report's content is a TID 1500 Measurement Report, not a free-form Comprehensive SR tree: TID 1500 is the
template DICOM (and the IHE AI Results profile) gives for an algorithm's results on images, so PACS viewers and
highdicom read it without knowing this software. Each part of the finding has its standard place there: the model's
name, version and operating point in the Algorithm Identification (TID 4019), the verdict and the most likely class
as qualitative evaluations and the probabilities as measurements of one measurement group (TID 1501) on the brain,
the deciding image (and frame) as that group's source image and in the Image Library (TID 1600), and the words
"AI-generated screening result, not a diagnosis" as a text evaluation of the whole report (TID 1500 row 14), in the
SR series' description too. Concepts DICOM has no code for (the classes, the probabilities of each) use this
software's private coding scheme ``99MRISCREEN``, declared in the Coding Scheme Identification.

The report is of the image's patient and study: highdicom copies the patient and study attributes from the header,
and nothing else gives or keeps them. Its SeriesInstanceUID and SOPInstanceUID derive from the run date and the
source series (``findings.object_uids``), so writing a run again, or a re-run of its date, replaces its reports; the
run id is one of the algorithm's parameters, to find the run's rows again. It is marked complete,
unverified and preliminary: a radiologist has not read it.
"""

from __future__ import annotations

import copy
import datetime
import logging

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from model.decode import float_list, header_value
from model.labels import CLASS_NAMES
from pipeline.dicomweb.findings import (CLASS_MEANINGS, DISCLAIMER, SOFTWARE, SOFTWARE_MODEL_NAME, ScreeningModel,
                                        SeriesFinding, derived_uid, keep_identifiers_out_of_logs, object_uids,
                                        software_version)

logger = logging.getLogger(__name__)

LOCAL_SCHEME = "99MRISCREEN"
REPORT_SERIES_NUMBER = 9901  # the SR series beside the images; the heat-map capture's series is 9902
REQUIRED_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Type 2 patient and study attributes highdicom reads from the header: present but empty where the header lacks them
PATIENT_STUDY_KEYWORDS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                          "StudyDate", "StudyTime", "ReferringPhysicianName")


class HeaderError(ValueError):
    """The deciding image's header cannot make a report; the message names what it lacks, never a value."""


def local_code(value: str, meaning: str) -> Code:
    return Code(value, LOCAL_SCHEME, meaning)


TUMOR_SUSPECTED = local_code("tumor-suspected", "Brain tumor suspected")
MOST_LIKELY_CLASS = local_code("most-likely-class", "Most likely class")
SERIES_TUMOR_PROBABILITY = local_code("series-tumor-probability", "Series tumor probability")
OPERATING_POINT = local_code("operating-point", "Operating point: flagged at this tumor probability or above")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
NO_UNITS = codes.UCUM.NoUnits


def class_code(name: str) -> Code:
    return local_code(name, CLASS_MEANINGS[name])


def class_probability_code(name: str) -> Code:
    return local_code(f"probability-{name}", f"{CLASS_MEANINGS[name]} probability of the deciding slice")


def screening_report(finding: SeriesFinding, model: ScreeningModel, header: pydicom.Dataset) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR of ``finding``, of the patient and study of ``header`` (the deciding image's)."""
    evidence = evidence_header(header)
    uids = object_uids("report", finding.run_date, evidence.SeriesInstanceUID)
    report = hd.sr.ComprehensiveSR(
        evidence=[evidence], content=measurement_report(finding, model, evidence),
        series_instance_uid=uids.series, series_number=REPORT_SERIES_NUMBER, sop_instance_uid=uids.instance,
        instance_number=1, manufacturer=SOFTWARE, is_complete=True, is_final=False, is_verified=False,
        series_description=DISCLAIMER, coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
            LOCAL_SCHEME, name="mri-screen screening concepts", responsible_organization=SOFTWARE)],
        **device_attributes(model), **content_date_time(finding.scored_at))
    report.TimezoneOffsetFromUTC = "+0000"
    return report


def report_datasets(finding: SeriesFinding, model: ScreeningModel, header: pydicom.Dataset,
                    heat_map: np.ndarray | None = None) -> list[pydicom.Dataset]:
    """What goes to the PACS for one series: its report, and with ``heat_map`` (the deciding slice with its heat map
    blended over it, an RGB uint8 image as the morning report draws it) a Secondary Capture of it, labelled with the
    same words (``pipeline.dicomweb.captures``). A capture that cannot be made (the header states no orientation) is
    left out with a warning; the report still goes."""
    datasets = [screening_report(finding, model, header)]
    if heat_map is not None:
        from pipeline.dicomweb.captures import NoOrientationError, heat_map_capture  # it imports this module

        try:
            datasets.append(heat_map_capture(finding, model, header, heat_map))
        except NoOrientationError as error:
            logger.warning("heat-map capture left out of a series' report: %s", error)
    return datasets


def evidence_header(header: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of the header with every patient and study attribute highdicom reads (empty where absent); refuses a
    header that does not name its study, series and image, in a sentence that names no value. From here on the
    DICOM libraries log no identifier (``keep_identifiers_out_of_logs``)."""
    keep_identifiers_out_of_logs()
    missing = [keyword for keyword in REQUIRED_KEYWORDS if not header.get(keyword)]
    if missing:
        raise HeaderError(f"the deciding image's header lacks {', '.join(missing)}: a report must name the study, "
                         f"series and image it is about")
    evidence = copy.deepcopy(header)
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword not in evidence:
            setattr(evidence, keyword, "")
    return evidence


def device_attributes(model: ScreeningModel) -> dict:
    """The equipment attributes of every object written: this software, its version and the model's."""
    return {"manufacturer_model_name": SOFTWARE_MODEL_NAME, "software_versions": [software_version(), model.version]}


def content_date_time(moment: datetime.datetime) -> dict:
    """ContentDate and ContentTime (UTC) of an object: when its finding was scored, so a rerun writes the same."""
    utc = moment.astimezone(datetime.timezone.utc)
    return {"content_date": utc.date(), "content_time": utc.time().replace(tzinfo=None)}


def measurement_report(finding: SeriesFinding, model: ScreeningModel,
                       evidence: pydicom.Dataset) -> hd.sr.MeasurementReport:
    """TID 1500: the observing device, the procedure, the image library, one measurement group, the words."""
    library = library_view(evidence, finding.deciding_frame_index)
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(model), procedure_reported=codes.LN.BrainMRI,
        imaging_measurements=[measurement_group(finding, model, evidence)],
        referenced_images=[library] if library is not None else None)
    report[0].ContentSequence.append(disclaimer())
    return report


def observation_context(model: ScreeningModel) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("device", SOFTWARE_MODEL_NAME), name=SOFTWARE, manufacturer_name=SOFTWARE,
        model_name=model.version)
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def measurement_group(finding: SeriesFinding, model: ScreeningModel,
                      evidence: pydicom.Dataset) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the verdict, the class and the probabilities, found on the brain by the model, from the deciding
    image."""
    tracking = hd.sr.TrackingIdentifier(
        uid=derived_uid("finding", finding.run_date, evidence.SeriesInstanceUID), identifier="brain tumor screening")
    source = hd.sr.SourceImageForMeasurementGroup(evidence.SOPClassUID, evidence.SOPInstanceUID,
                                                  referenced_frames(evidence, finding.deciding_frame_index))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, finding_type=codes.SCT.Neoplasm, algorithm_id=algorithm(model, finding.run_id),
        finding_sites=[hd.sr.FindingSite(codes.SCT.Brain)], source_images=[source],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(TUMOR_SUSPECTED, codes.SCT.Present if finding.flagged else codes.SCT.Absent),
            hd.sr.QualitativeEvaluation(MOST_LIKELY_CLASS, class_code(finding.predicted_class))],
        measurements=[probability(SERIES_TUMOR_PROBABILITY, finding.tumor_probability),
                      *(probability(class_probability_code(name), finding.probabilities[name])
                        for name in CLASS_NAMES),
                      probability(OPERATING_POINT, model.operating_point)])


def algorithm(model: ScreeningModel, run_id: str) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=model.name, version=model.version, manufacturer=SOFTWARE,
        parameters=[f"operating point: a series is flagged at a tumor probability of "
                    f"{model.operating_point:.6f} or above", f"screening run {run_id}"])


def probability(name: Code, value: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=round(float(value), 6), unit=NO_UNITS)


def disclaimer() -> hd.sr.ContainerContentItem:
    """TID 1500 rows 12 and 14: the words, as a text evaluation of the whole report."""
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(
        name=codes.DCM.Comment, value=DISCLAIMER, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)])
    return container


def frame_count(header: pydicom.Dataset) -> int:
    frames = header_value(header, "NumberOfFrames")
    return int(frames) if frames else 1


def referenced_frames(header: pydicom.Dataset, frame_index: int) -> list[int] | None:
    """The deciding frame's number (from 1) in a multi-frame image; None for a single frame."""
    frames = frame_count(header)
    if frame_index >= frames:
        raise ValueError(f"the deciding frame index {frame_index} is beyond the image's {frames} frame(s)")
    return [frame_index + 1] if frames > 1 else None


def frame_geometry(header: pydicom.Dataset, frame_index: int) -> dict[str, list[float]] | None:
    """The deciding frame's orientation, position, pixel spacing and slice thickness, from the top level or the
    frame's or shared functional groups; None when any is missing."""
    per_frame = header_value(header, "PerFrameFunctionalGroupsSequence")
    groups = [header, per_frame[frame_index] if per_frame and frame_index < len(per_frame) else None,
              header_value(header, "SharedFunctionalGroupsSequence")]
    wanted = {"ImageOrientationPatient": "PlaneOrientationSequence", "ImagePositionPatient": "PlanePositionSequence",
              "PixelSpacing": "PixelMeasuresSequence", "SliceThickness": "PixelMeasuresSequence"}
    geometry = {keyword: next(filter(None, (numbers(group_value(group, macro, keyword)) for group in groups)), None)
                for keyword, macro in wanted.items()}
    return geometry if all(geometry.values()) else None


def group_value(group, macro: str, keyword: str):
    """``keyword`` at the top of ``group`` (a dataset), else in the first item of its ``macro`` sequence (a
    functional-groups item, or a one-item sequence of one); None when absent."""
    if isinstance(group, pydicom.Sequence):
        group = group[0] if len(group) else None
    if group is None:
        return None
    value = header_value(group, keyword)
    items = header_value(group, macro) if value is None else None
    return header_value(items[0], keyword) if items else value


def numbers(value) -> list[float] | None:
    """A DICOM number or list of numbers as floats; None when absent or malformed."""
    return float_list([value] if isinstance(value, (int, float)) else value)


def library_view(header: pydicom.Dataset, frame_index: int) -> pydicom.Dataset | None:
    """The deciding image as the Image Library describes it (the deciding frame's geometry at the top level); None
    when its geometry is incomplete, and the library is left out (the group's source image still names it)."""
    geometry = frame_geometry(header, frame_index)
    if geometry is None:
        return None
    view = pydicom.Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Modality", "Rows", "Columns", "FrameOfReferenceUID"):
        if keyword in header:
            setattr(view, keyword, header[keyword].value)
    geometry["SliceThickness"] = geometry["SliceThickness"][0]
    for keyword, value in geometry.items():
        setattr(view, keyword, value)
    return view
