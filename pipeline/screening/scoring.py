"""Stages 3-5 of a run on Ray Data: the chosen files decoded, scored on actors (GPU when the cluster has
them), and their rows streamed to the run's work folder with progress logged."""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import pyarrow.compute as pc
import ray

from infra.ray_runtime import ensure_ray
from model import registry
from pipeline.results import tables
from pipeline import schema as col
from pipeline.sources.paths import PathPseudonymizer
from model.backends import auto_backend
from pipeline.scoring.stages import ScoringActor, StageContext, decode_and_preprocess
from pipeline.screening.choice import Selection
from pipeline.screening.config import ScreenConfig

logger = logging.getLogger(__name__)


def inference_resources(config: ScreenConfig) -> tuple[int, float, int, bool]:
    """(actors, CPUs per actor, GPUs per actor, use_gpu) for the cluster at hand (started or joined here): one
    actor per GPU, or on CPU one per ``inference_cpus`` of the cluster's CPUs (each also decodes its batches)."""
    ensure_ray()
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    use_gpu = gpus > 0 if config.use_gpu is None else config.use_gpu
    if use_gpu:
        return config.inference_actors or max(1, gpus), 1.0, 1, True
    cpus = resources.get("CPU", 1)
    return config.inference_actors or max(1, int(cpus // config.inference_cpus)), config.inference_cpus, 0, False



DECODE_RESOURCE = "decode"  # advertised by a cluster's CPU nodes (cluster.yaml): decoding lands on them alone


def decode_placement(config: ScreenConfig) -> dict:
    """Decode tasks request a share of the ``decode`` resource when the cluster's nodes advertise it, so they run
    on CPU nodes and leave GPU nodes to inference; on a cluster without it (a GPU workstation) they go where CPUs
    are."""
    if DECODE_RESOURCE in ray.cluster_resources():
        return {"resources": {DECODE_RESOURCE: config.decode_cpus}}
    return {}


def predictions_dataset(selection: Selection, context: StageContext, config: ScreenConfig,
                        model: registry.ModelInfo) -> ray.data.Dataset:
    """Stages 3-4: the chosen files (``chosen_files_dataset``) -> scored prediction tables, lazily.

    On GPUs, CPU tasks decode (``--decode-cpus`` each, on the nodes advertising ``decode`` when there are any) and
    one actor per GPU scores. On CPU only, each scoring actor decodes its own batches: one process per CPU runs the
    whole per-image work and no image crosses the object store (docs/benchmarks.md: 1.35-1.44x a plain
    single-process loop here in the steady state)."""
    actors, cpus, gpus, use_gpu = inference_resources(config)
    backend = inference_backend(config, model, use_gpu)
    blocks = max(1, -(-selection.files // config.decode_batch_size))  # batches of at most decode_batch_size files
    actors = min(actors, blocks)
    logger.info("scoring: %d actor(s), %s CPU and %d GPU each, %s%s", actors, cpus, gpus, backend,
                "" if use_gpu else ", each decoding its own batches")
    dataset = chosen_files_dataset(selection, config.decode_batch_size)
    if use_gpu:
        dataset = dataset.map_batches(decode_and_preprocess, fn_kwargs={"context": context, "cpus": config.decode_cpus},
                                      batch_size=config.decode_batch_size, num_cpus=config.decode_cpus,
                                      **decode_placement(config))
    scorer = {"context": context, "scored_at": tables.utc_now(), "decode": not use_gpu, "model_dir": model.uri,
              "weights_sha256": model.weights_sha256, "threshold": context.threshold,
              "cpu_threads": max(1, int(cpus)), "use_gpu": use_gpu, "batch_size": config.inference_batch_size,
              "backend": backend, "mirror_average": mirror_average(config, model)}
    return dataset.map_batches(ScoringActor, fn_constructor_kwargs=scorer, batch_format="pyarrow",
                               batch_size=config.inference_batch_size if use_gpu else config.decode_batch_size,
                               num_cpus=cpus, num_gpus=gpus, compute=ray.data.ActorPoolStrategy(size=actors))


def mirror_average(config: ScreenConfig, model: registry.ModelInfo) -> bool:
    """Whether the actors average each image with its mirror: asked for, and not already in the model's graph."""
    if config.mirror_average and model.architecture.mirror_views:
        logger.info("model %s averages each slice with its mirror in its own graph: --mirror-average adds nothing",
                    model.version)
    return config.mirror_average and not model.architecture.mirror_views


def chosen_files_dataset(selection: Selection, rows: int) -> ray.data.Dataset:
    """The chosen files as a Ray dataset of blocks of ``rows`` files (``LISTING_SCHEMA``), read from the selection's
    Parquet and put in the object store by the driver, with their metadata computed here (``from_arrow_refs``
    would run a task a block for it: a second here for 32 blocks). The blocks are held at once only while they are
    put: about 100 bytes a file."""
    return ray.data.from_blocks(list(selection.blocks(rows)))


def inference_backend(config: ScreenConfig, model: registry.ModelInfo, use_gpu: bool) -> str:
    """The backend asked for; "auto": TensorFlow on GPUs, on CPU actors float32 ONNX unless the model's int8 graph
    earned the default on held-out data (``model.backends``). Each actor asked for int8 checks it against float32
    on its own CPU first and falls back to float32 when they disagree."""
    return auto_backend(model, use_gpu) if config.backend == "auto" else config.backend


class Progress:
    """Logs files done, errors, rate and time left at most every ``every`` seconds while rows arrive."""

    def __init__(self, total_files: int, every: float = 10.0):
        self.total, self.every = total_files, every
        self.files = self.rows = self.errors = 0
        self.started = self.last = time.monotonic()

    def update(self, batch: pa.Table) -> None:
        if not self.rows:
            logger.info("first scored rows after %.1f s (actors started, model loaded)",
                        time.monotonic() - self.started)
        self.rows += batch.num_rows
        self.files += int(pc.sum(pc.equal(batch[col.FRAME_INDEX], 0)).as_py() or 0)
        self.errors += int(pc.sum(pc.equal(batch[col.STATUS], col.STATUS_ERROR)).as_py() or 0)
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.files / (now - self.started)
            left = (self.total - self.files) / rate if rate else float("nan")
            logger.info("progress: %d/%d files (%d rows, %d errors), %.1f files/s, about %.0f s left", self.files,
                        self.total, self.rows, self.errors, rate, left)


def stage_predictions(dataset: ray.data.Dataset, uri: str, total_files: int,
                      paths: PathPseudonymizer | None = None) -> None:
    """Stage 5: stream the scored rows (a few hundred bytes each, no image) to Parquet files under ``uri``,
    logging progress; the driver's memory does not grow with the run (``tables.ParquetParts``). With ``paths``,
    each row's ``source_uri`` is stored with its folder names pseudonymised."""
    progress, parts = Progress(total_files), tables.ParquetParts(uri, col.PREDICTIONS_SCHEMA)
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        progress.update(batch)
        parts.write(with_pseudonymous_paths(batch, paths) if paths else batch)
    parts.close()


def with_pseudonymous_paths(batch: pa.Table, paths: PathPseudonymizer) -> pa.Table:
    """``batch`` with each ``source_uri`` pseudonymised, and in its error message too (a message may quote it)."""
    uris = batch[col.SOURCE_URI].to_pylist()
    hidden = [paths(uri) for uri in uris]
    messages = [message.replace(uri, pseudonym) if message and uri else message
                for message, uri, pseudonym in zip(batch[col.ERROR_MESSAGE].to_pylist(), uris, hidden)]
    batch = batch.set_column(batch.schema.get_field_index(col.SOURCE_URI), col.SOURCE_URI,
                             pa.array(hidden, pa.string()))
    return batch.set_column(batch.schema.get_field_index(col.ERROR_MESSAGE), col.ERROR_MESSAGE,
                            pa.array(messages, pa.string()))
