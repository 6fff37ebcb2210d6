"""The formats a DICOM header value must have before it is stored or quoted in an output.

A header is filled by hand at the scanner or the PACS, and a mis-filled one can carry a patient's name in any
element: in StudyDate, Modality, BodyPartExamined or ImageType as easily as in PatientName. What the results tables,
their Delta statistics and the report keep of a header is therefore checked against the value representation (VR)
its element declares: a date is a real calendar date, stored YYYYMMDD (else nothing is kept); a code string (CS:
Modality, BodyPartExamined, each value of ImageType) is at most 16 upper-case letters, digits, spaces and
underscores (else :data:`INVALID_CODE_STRING` stands in its place); numbers and UIDs are kept when they are numbers
and UIDs. Free text (descriptions, names, comments: every other VR) is never quoted; a selection rule quotes only
the part a regular expression of its own matched (``pipeline.sources.selection``).
"""

from __future__ import annotations

import datetime
import re

from pydicom.datadict import dictionary_VR, tag_for_keyword

INVALID_CODE_STRING = "(invalid code string)"
INVALID_DATE = "(invalid date)"
INVALID_NUMBER = "(invalid number)"
INVALID_UID = "(invalid UID)"
FREE_TEXT = "(free text, not quoted)"

CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")  # PS3.5 6.2, CS: at most 16 of these characters
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
UID = re.compile(r"[0-9.]{1,64}")
NUMBER_VRS = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"})
MAX_NUMBER_CHARS = 16  # DS, the longest number written as text


def dicom_date(text: str | None) -> str | None:
    """``text`` when it is a DICOM date (DA: YYYYMMDD, a real calendar day), written YYYYMMDD (the YYYY.MM.DD of
    ACR-NEMA files, which readers of DICOM accept, is rewritten so), else None."""
    text = (text or "").strip()
    legacy = re.fullmatch(r"(\d{4})\.(\d{2})\.(\d{2})", text)
    text = "".join(legacy.groups()) if legacy else text
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        datetime.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return None
    return text


def code_string(text: str | None) -> str | None:
    """A code string as stored: ``text`` stripped when it is a valid CS value, :data:`INVALID_CODE_STRING` when it
    is not, None when it is empty."""
    text = (text or "").strip()
    if not text:
        return None
    return text if CODE_STRING.fullmatch(text) else INVALID_CODE_STRING


def keyword_vr(keyword: str) -> str | None:
    """The VR pydicom's dictionary gives ``keyword`` (e.g. ``CS``, ``US or SS``), None for an unknown keyword."""
    tag = tag_for_keyword(keyword)
    return dictionary_VR(tag) if tag is not None else None


def quotable(keyword: str, text: str) -> str:
    """One value of ``keyword`` as it may be quoted in an output: checked against its VR's format, or a marker
    that says what it was not (free text, and elements of unknown VR, are never quoted)."""
    vrs = set((keyword_vr(keyword) or "").split(" or "))
    text = text.strip()
    if "CS" in vrs:
        return code_string(text) or ""
    if "DA" in vrs:
        return dicom_date(text) or INVALID_DATE
    if vrs & NUMBER_VRS:
        return text if len(text) <= MAX_NUMBER_CHARS and NUMBER.fullmatch(text) else INVALID_NUMBER
    if "UI" in vrs:
        return text if UID.fullmatch(text) else INVALID_UID
    return FREE_TEXT
