"""The review app on Ray Serve: a FastAPI ingress and two model deployments.

- ``ReviewApp`` (ingress, FastAPI): the worklist, the case pages, the verdicts (appended to the ``reviews`` table)
  and on-demand scoring; it reads the committed tables and decodes uploads, and asks the deployments below for
  what needs a network.
- ``ScoringModel``: the nightly inference (``pipeline.scoring.stages.InferenceActor``, its backend chosen by
  ``model.backends``) behind ``@serve.batch``, so concurrent uploads share one pass; autoscaled between
  ``min_replicas`` and ``max_replicas``.
- ``HeatMapModel``: the deciding slice's heat map, LayerCAM of the tumor score (``model.gradcam``), the model
  loaded as its replica starts; TensorFlow loads only there.

Every response carries the page policy (``pages.POLICY``) and headers that keep it out of caches, frames and
referrers; who is answered at all is ``pipeline.review.access``'s rule (a bearer token, or loopback only).
``build_review_app`` is the application builder a RayService's Serve config names.
"""


import asyncio
import collections
import dataclasses
import json
import logging
import re
import urllib.parse

import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from ray import serve

from model import registry
from model.backends import auto_backend
from model.labels import CLASS_NAMES
from pipeline.results import queries, views
from pipeline import schema as col
from pipeline.pseudonym import load_key
from pipeline.review import access, cases, pages, scoring, verdicts, worklist
from pipeline.review.worklist import WorklistFilter

logger = logging.getLogger(__name__)

CASE_KEY = r"^([0-9a-f]{32}|[fr]-[0-9a-f]{12}(:[0-9]+)?)$"
RUN_ID = r"^[0-9A-Za-z_.:-]{1,80}$"
CACHED_CASES = 64  # case pages kept drawn (their pictures), most recently shown first
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


@dataclasses.dataclass(frozen=True)
class ReviewSettings:
    """What the app serves and how: the results output, the model for on-demand scoring, the reviewer's name, the
    token file (none: loopback only), the pseudonym key file (none: ``PSEUDONYM_KEY``, else references from run
    IDs), the upload bound, the scoring deployment's threads and replicas."""

    results: str
    model: str = registry.DEFAULT_MODEL
    reviewer: str = "reviewer"
    token_file: str | None = None
    pseudonym_key_file: str | None = None
    max_upload_mb: float = 64.0
    scoring_threads: int = 1
    min_replicas: int = 1
    max_replicas: int = 2

    @property
    def upload_limits(self) -> scoring.UploadLimits:
        return scoring.UploadLimits(max_bytes=int(self.max_upload_mb * 2**20))


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8})
class ScoringModel:
    """The nightly inference behind ``@serve.batch``: the tables of concurrent requests are scored in one pass."""

    def __init__(self, model: str, threads: int):
        from pipeline.scoring.stages import InferenceActor  # ONNX Runtime loads in the replica, not where the app is built

        info = registry.load_model_info(model)
        self.backend = auto_backend(info, use_gpu=False)
        self.inference = InferenceActor(info.uri, info.weights_sha256, info.threshold, threads, False,
                                        backend=self.backend)
        self.backend = self.inference.backend  # an int8 graph that fails its start-up check runs as float32

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def score(self, tables: list[pa.Table]) -> list[pa.Table]:
        joined = pa.concat_tables(tables)
        scored = (await asyncio.to_thread(self.inference, joined)).drop_columns([col.IMAGE])
        offsets = [0]
        for table in tables:
            offsets.append(offsets[-1] + table.num_rows)
        return [scored.slice(start, stop - start) for start, stop in zip(offsets, offsets[1:])]

    def backend_name(self) -> str:
        return self.backend


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5})
class HeatMapModel:
    """LayerCAM of the tumor score by a run's model, its networks loaded once per model: the app's own model as the
    replica starts (the first case page does not wait for TensorFlow), another run's model on first use."""

    def __init__(self, model: str):
        self.explainers = {}
        self.explainer(registry.load_model_info(model))

    def explainer(self, info: registry.ModelInfo):
        from model.gradcam import GradCam  # TensorFlow: only in this replica

        if info.weights_sha256 not in self.explainers:
            self.explainers[info.weights_sha256] = GradCam.from_model_info(info, info.weights_sha256)
        return self.explainers[info.weights_sha256]

    def overlay(self, image, info: registry.ModelInfo):
        from model.gradcam import TUMOR, overlay

        return overlay(image, self.explainer(info)(image[None], target=TUMOR)[0])


api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
STARTING = object()  # the token's place before the ingress has read it: every request waits (503)
SECURITY_HEADERS = {"Content-Security-Policy": pages.HEADER_POLICY, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY", "Cache-Control": "no-store",
                    "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Resource-Policy": "same-origin"}


@api.middleware("http")
async def guarded(request: Request, call_next):
    token = getattr(request.app.state, "token", STARTING)
    refused = (503, "the app is starting") if token is STARTING else access.refusal(
        request.method, request.url.scheme, request.headers, token)
    response = PlainTextResponse(refused[1], refused[0]) if refused else await call_next(request)
    if refused and refused[0] == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    response.headers.update(SECURITY_HEADERS)
    return response


def chosen_filter(request: Request) -> WorklistFilter:
    """The worklist's filters from the query string; a value that is not one is a 400."""
    parameters = request.query_params
    dates = queries.DateRange(parameters.get("from") or None, parameters.get("to") or None)
    for value in (dates.first, dates.last):
        if value is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(f"a date is written YYYY-MM-DD, not {value!r}")
    predicted_class = parameters.get("class") or None
    if predicted_class is not None and predicted_class not in CLASS_NAMES:
        raise ValueError(f"no class {predicted_class!r}")
    return WorklistFilter(dates, predicted_class, parameters.get("state") or None)


def nights_text(chosen: WorklistFilter, connection) -> str:
    if chosen.dates.first or chosen.dates.last:
        return f"Nights {chosen.dates.first or 'from the first'} to {chosen.dates.last or 'the latest'}"
    latest = connection.sql(f"SELECT max({col.RUN_DATE}) FROM runs").fetchall()[0][0]
    return f"Night of {latest}" if latest else "No night screened yet"


def too_large(limits: scoring.UploadLimits) -> JSONResponse:
    return JSONResponse({"detail": f"an upload is at most {limits.max_bytes:,} bytes"}, 413)


def check_case(run_id: str, case_key: str) -> tuple[str, str]:
    """A run ID and a case key as these results write them (a page asking for anything else is not found)."""
    if not re.fullmatch(RUN_ID, run_id) or not re.fullmatch(CASE_KEY, case_key):
        raise ValueError("not a case of these results")
    return run_id, case_key


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress(api)
class ReviewApp:
    """The pages, the verdicts and on-demand scoring."""

    def __init__(self, scoring_model, heat_map_model, settings: ReviewSettings):
        self.settings, self.scoring_model, self.heat_map_model = settings, scoring_model, heat_map_model
        self.log = verdicts.VerdictLog(settings.results)
        self.key = load_key(settings.pseudonym_key_file)
        self.info = registry.load_model_info(settings.model)
        self.context = scoring.scoring_context(self.info)
        self.drawn: collections.OrderedDict = collections.OrderedDict()
        api.state.token = access.read_token(settings.token_file) if settings.token_file else None

    # --- reading the tables (in a thread: DuckDB and the file reads block) ---------------------------------------

    def worklist_items(self, chosen: WorklistFilter) -> tuple[list, list, str]:
        connection = views.connect(self.settings.results)
        latest = self.log.latest()
        items = worklist.flagged_items(connection, chosen, self.key, latest)
        unfamiliar = worklist.unfamiliar_items(connection, chosen.dates, self.key)
        return items, unfamiliar, nights_text(chosen, connection)

    def drawn_case(self, run_id: str, case_key: str) -> cases.CaseView:
        if (run_id, case_key) not in self.drawn:
            self.drawn[(run_id, case_key)] = cases.load_case(views.connect(self.settings.results), run_id, case_key,
                                                             self.key)
            while len(self.drawn) > CACHED_CASES:
                self.drawn.popitem(last=False)
        self.drawn.move_to_end((run_id, case_key))
        return self.drawn[(run_id, case_key)]

    async def with_heat_map(self, view: cases.CaseView) -> cases.CaseView:
        case = view.case
        if case.heat_map is None and view.info is not None and case.deciding_image is not None:
            try:
                overlay = await self.heat_map_model.overlay.remote(case.deciding_image, view.info)
                cases.add_heat_map(view, overlay)
            except Exception as error:  # a case without its heat map is still a case to review
                logger.warning("no heat map for a case: %s", type(error).__name__)
                view.heat_note = "The heat map could not be drawn."
        return view

    # --- pages -------------------------------------------------------------------------------------------------

    @api.get("/", response_class=HTMLResponse)
    async def worklist_page(self, request: Request):
        try:
            chosen = chosen_filter(request)
        except ValueError as error:
            return HTMLResponse(pages.message_page("Not a worklist", str(error)), 400)
        items, unfamiliar, nights = await asyncio.to_thread(self.worklist_items, chosen)
        return HTMLResponse(pages.worklist_page(items, unfamiliar, chosen, self.settings.reviewer, nights,
                                                self.settings.max_upload_mb))

    @api.get("/case/{run_id}/{case_key}", response_class=HTMLResponse)
    async def case_page(self, request: Request, run_id: str, case_key: str):
        try:
            chosen = chosen_filter(request)
            view, current, previous, following = await asyncio.to_thread(self.case_and_neighbours, run_id,
                                                                          case_key, chosen)
        except (ValueError, cases.CaseNotFound) as error:
            return HTMLResponse(pages.message_page("No such case", str(error)), 404)
        view = await self.with_heat_map(view)
        return HTMLResponse(pages.case_page(view, current, previous, following, chosen, self.settings.reviewer))

    def case_and_neighbours(self, run_id: str, case_key: str, chosen: WorklistFilter):
        """The case drawn, as the worklist shows it, and its neighbours there (no dates chosen: its own night's)."""
        view = self.drawn_case(*check_case(run_id, case_key))
        if not (chosen.dates.first or chosen.dates.last):
            night = view.run[col.RUN_DATE]
            chosen = dataclasses.replace(chosen, dates=queries.DateRange(night, night))
        items, _, _ = self.worklist_items(chosen)
        previous, following = worklist.neighbours(items, run_id, case_key)
        current = self.current_item(view, case_key)
        return view, current, previous, following

    def current_item(self, view: cases.CaseView, case_key: str) -> worklist.Item:
        row, run = view.case.row, view.run
        label = case_key if view.kind == worklist.SERIES_KIND else row.get("file_label", case_key)
        found = worklist.Item(view.kind, run[col.RUN_ID], run[col.RUN_DATE], case_key,
                              view.tumor_probability, view.predicted_class, row.get(col.STUDY_DATE),
                              row.get(col.MODALITY), len(view.case.slices), label)
        return worklist.with_state(found, self.log.latest())

    @api.post("/case/{run_id}/{case_key}/verdict")
    async def verdict(self, request: Request, run_id: str, case_key: str):
        form = urllib.parse.parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
        try:
            view = await asyncio.to_thread(self.drawn_case, *check_case(run_id, case_key))
            given = self.verdict_of(view, case_key, form)
            await asyncio.to_thread(self.log.append, given)
        except (ValueError, cases.CaseNotFound) as error:
            return HTMLResponse(pages.message_page("Verdict not recorded", str(error)), 400)
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"/case/{urllib.parse.quote(run_id, safe='')}/"
                                f"{urllib.parse.quote(case_key, safe='')}{query}", 303)

    def verdict_of(self, view: cases.CaseView, case_key: str, form: dict) -> verdicts.Verdict:
        run, reviewer = view.run, self.settings.reviewer
        shared = (run[col.RUN_ID], run[col.RUN_DATE], view.kind, case_key)
        model = (view.predicted_class, view.tumor_probability)
        if "corrected_class" in form:
            return verdicts.corrected(*shared, form["corrected_class"][0], reviewer, *model)
        return verdicts.Verdict(*shared, (form.get("verdict") or [""])[0], reviewer, *model)

    @api.get(pages.SCRIPT_PATH)
    async def script(self):
        return Response(pages.SCRIPT.read_bytes(), media_type="text/javascript")

    # --- on-demand scoring ---------------------------------------------------------------------------------------

    @api.post("/api/score")
    async def score(self, request: Request):
        limits = self.settings.upload_limits
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_bytes:
            return too_large(limits)
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limits.max_bytes:
                return too_large(limits)
        try:
            files = scoring.upload_files(bytes(data), request.query_params.get("name", "upload"), limits)
        except scoring.UploadError as error:
            return JSONResponse({"detail": str(error)}, 400)
        table = await asyncio.to_thread(scoring.decode_upload, files, self.context)
        scored = await self.scoring_model.score.remote(table)
        backend = await self.scoring_model.backend_name.remote()
        return JSONResponse(json.loads(json.dumps(scoring.answer(scored, self.context, backend), default=str)))


def review_app(settings: ReviewSettings):
    """The bound application: the ingress with its two model deployments."""
    scoring_model = ScoringModel.options(autoscaling_config={
        "min_replicas": settings.min_replicas, "max_replicas": settings.max_replicas,
        "target_ongoing_requests": 8}).bind(settings.model, settings.scoring_threads)
    return ReviewApp.bind(scoring_model, HeatMapModel.bind(settings.model), settings)


def build_review_app(args: dict):
    """The application builder a Serve config names (``import_path: pipeline.review.serving:build_review_app``),
    its ``args`` the fields of ``ReviewSettings``."""
    return review_app(ReviewSettings(**args))
