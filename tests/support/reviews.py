"""A reviewed night for the tests of ``jobs.retrain --reviews``: real sample files copied beside a results folder, a
night of rows naming them committed to real Delta tables without Ray, and radiologists' verdicts appended to the
``reviews`` table as the review app appends them. What each verdict must give is ``EXPECTED``."""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
import shutil

from pipeline import schema as col
from pipeline.review.examples import NOT_FOUND
from pipeline.review.verdicts import CONFIRMED, DISMISSED, REOPENED, UNSURE, Verdict, VerdictLog, corrected
from pipeline.review.worklist import image_key
from tests.conftest import SAMPLES, TEST_KEY
from tests.support import nights

RUN_ID, RUN_DATE = "night-1", "2026-11-06"
KEY = TEST_KEY.encode()
GLIOMA_SERIES, NO_TUMOR_SERIES = "a" * 32, "b" * 32
DECIDING = 2  # the glioma series' deciding slice
UNFAMILIAR_FRAME = 1  # a frame of the tumor-free multi-frame series the model found unfamiliar: not scored


@dataclasses.dataclass(frozen=True)
class ReviewedNight:
    results: pathlib.Path
    deciding_slice: str  # the confirmed glioma series' deciding file
    multiframe: str  # the dismissed series' one multi-frame file
    corrected_image: str  # an image confirmed as another tumor class than the model's
    validation_copy: str  # a copy of a validation image, dismissed: never trained on
    vanished: str  # an image confirmed, whose file is gone before retraining


# how reviewed_night's cases count by their latest verdict, and the one no longer in the tables
EXPECTED = {"cases": {CONFIRMED: 4, DISMISSED: 2, "not reviewed": 1, UNSURE: 1}, "dropped": {NOT_FOUND: 1}}


def prediction(uri: pathlib.Path, frame: int = 0, series_key: str | None = None, ood: bool = False,
               predicted_class: str = "glioma") -> dict:
    return {col.SOURCE_URI: str(uri), col.FRAME_INDEX: frame, col.STATUS: col.STATUS_OK, col.OOD: ood,
            col.SERIES_KEY: series_key, col.PREDICTED_CLASS: predicted_class, col.TUMOR_PROBABILITY: 0.9,
            col.FLAGGED: True}


def series_row(key: str, slices: list[tuple[pathlib.Path, int]], deciding: int, predicted_class: str) -> dict:
    return {col.SERIES_KEY: key, col.SLICES: len(slices), col.TUMOR_PROBABILITY: 0.9, col.FLAGGED: True,
            col.PREDICTED_CLASS: predicted_class, col.ORDERED_SOURCE_URIS: [str(uri) for uri, _ in slices],
            col.ORDERED_FRAME_INDICES: [frame for _, frame in slices], col.MOST_SUSPICIOUS_SLICE_INDEX: deciding}


def reviewed_night(root: pathlib.Path, validation_image: pathlib.Path) -> ReviewedNight:
    """Under ``root``: an archive of sample files (``validation_image`` copied in among them) and a results folder
    whose night flagged a glioma series, a tumor-free multi-frame series and five loose images, and whose
    verdicts confirm the glioma series, dismiss the tumor-free one, correct one image to meningioma, dismiss the
    copy of the validation image, confirm an image whose file then vanishes, leave one unsure, reopen one, and
    confirm a case of a run no longer in the tables."""
    archive = root / "archive"
    shutil.copytree(SAMPLES / "archive" / "dicom" / "axial-glioma", archive / "glioma")
    shutil.copytree(SAMPLES / "archive" / "dicom" / "axial-notumor-multiframe", archive / "notumor")
    loose = archive / "loose"
    loose.mkdir()
    for name in ("pituitary-Tr-pi_0936.jpg", "glioma-Tr-gl_0470.jpg", "meningioma-Tr-me_0570.jpg", "tumor-y147.png"):
        shutil.copy(SAMPLES / "archive" / "loose" / name, loose / name)
    shutil.copy(validation_image, loose / f"copy-{validation_image.name}")
    pituitary, unsure, reopened, vanished = (loose / name for name in (
        "pituitary-Tr-pi_0936.jpg", "glioma-Tr-gl_0470.jpg", "meningioma-Tr-me_0570.jpg", "tumor-y147.png"))
    validation_copy = loose / f"copy-{validation_image.name}"
    glioma_slices = [(path, 0) for path in sorted((archive / "glioma").glob("*.dcm"))]
    multiframe = archive / "notumor" / "frames.dcm"
    frames = [(multiframe, index) for index in range(4)]
    loose_images = [pituitary, unsure, reopened, vanished, validation_copy]
    predictions = ([prediction(path, 0, GLIOMA_SERIES) for path, _ in glioma_slices]
                   + [prediction(path, frame, NO_TUMOR_SERIES, ood=frame == UNFAMILIAR_FRAME, predicted_class="notumor")
                      for path, frame in frames]
                   + [prediction(path, predicted_class="pituitary" if path == pituitary else "glioma")
                      for path in loose_images])
    series = [series_row(GLIOMA_SERIES, glioma_slices, DECIDING, "glioma"),
              series_row(NO_TUMOR_SERIES, frames, 0, "notumor")]
    results = root / "results"
    nights.commit_night(str(results), RUN_ID, RUN_DATE, predictions, series,
                        datetime.datetime(2026, 11, 6, 2, tzinfo=datetime.timezone.utc))
    log, reviewer = VerdictLog(str(results)), "dr-test"

    def verdict(kind: str, case: str, said: str, predicted: str = "glioma", run: str = RUN_ID) -> Verdict:
        return Verdict(run, RUN_DATE, kind, case, said, reviewer, predicted, 0.9)

    def key(path: pathlib.Path) -> str:
        return image_key(str(path), 0, KEY, RUN_ID)

    log.append(verdict("series", GLIOMA_SERIES, UNSURE))
    log.append(verdict("series", GLIOMA_SERIES, CONFIRMED))  # the latest verdict counts
    log.append(verdict("series", NO_TUMOR_SERIES, DISMISSED, "notumor"))
    log.append(corrected(RUN_ID, RUN_DATE, "image", key(pituitary), "meningioma", reviewer, "pituitary", 0.9))
    log.append(verdict("image", key(validation_copy), DISMISSED))
    log.append(verdict("image", key(vanished), CONFIRMED))
    log.append(verdict("image", key(unsure), UNSURE))
    log.append(verdict("image", key(reopened), DISMISSED))
    log.append(verdict("image", key(reopened), REOPENED))  # taken back: not reviewed
    log.append(verdict("series", "c" * 32, CONFIRMED, run="replaced-run"))  # its date was screened again
    return ReviewedNight(results, str(glioma_slices[DECIDING][0]), str(multiframe), str(pituitary),
                         str(validation_copy), str(vanished))


def labelled_slices(night: ReviewedNight) -> dict[tuple[str, int], str]:
    """What the verdicts label, slice by slice: (file, frame) -> label."""
    return {(night.deciding_slice, 0): "glioma",
            **{(night.multiframe, frame): "notumor" for frame in range(4) if frame != UNFAMILIAR_FRAME},
            (night.corrected_image, 0): "meningioma", (night.validation_copy, 0): "notumor",
            (night.vanished, 0): "glioma"}
