"""The screening job: a run's options (``config``), the files it chooses (``choice``), its scoring stages on Ray Data
(``scoring``), its series and counts (``summary``), its record (``record``), and the orchestration (``run``)."""

from pipeline.screening.config import ScreenConfig
from pipeline.screening.record import RunRecord
from pipeline.screening.run import ScreeningPlan, prepare, run_screening, score_and_commit

__all__ = ["RunRecord", "ScreenConfig", "ScreeningPlan", "prepare", "run_screening", "score_and_commit"]
