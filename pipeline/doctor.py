"""A cluster's self-check before its first nightly run: each check answers with one plain sentence.

``ray``          the cluster answers, and has CPUs to decode on (resources per node in the detail)
``gpus``         on every node that advertises GPUs, TensorFlow sees them, with memory growth on
``inference``    each inference actor the screening job would start loads the model and scores one batch (images/s),
                 on the backend it would run there (an int8 graph that fails the start-up check on a node's CPU
                 falls back to float32 there), with that node's int8 instruction sets
``int8``         here: the model's int8 graph against float32 on the check images, this CPU's instruction sets, and
                 what ``--backend auto`` runs
``input``        the input can be listed and a file read (S3 or disk); a PACS answers, accepts the credentials, its
                 search finds an instance and that instance is retrieved
``output``       the output can be written and the write removed
``decoders``     on a worker: pydicom can decode JPEG baseline, JPEG-LS, JPEG 2000 and RLE pixel data
``model``        the model's weights match the sha256 in its model.json and in its model card
``pseudonym``    a pseudonym key is there, long enough, and not the demo key ``make demo`` generates
Checks that need Ray are reported as not run when Ray cannot be reached. Nothing here changes the output.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import time

import numpy as np
import pyarrow as pa
import ray

from infra import storage
from infra.ray_runtime import ensure_ray
from model import registry
from model.backends import cpu_instruction_sets, int8_report
from model.decode import DecodeLimits
from pipeline.results import tables
from pipeline import schema as col
from pipeline.dicomweb.client import load_credentials
from pipeline.sources.listing import iter_input_files
from pipeline.sources.pacs import PacsAddress, PacsOptions, check_pacs, is_dicomweb, iter_instances, pacs_for
from pipeline.pseudonym import PseudonymKeyError, load_key
from pipeline.scoring.stages import InferenceActor, StageContext, file_rows, rows_to_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO_KEY_FILE = ROOT / "out" / "demo-pseudonym.key"
SAMPLE_IMAGES = ROOT / "samples" / "archive" / "loose"
DICOM_SYNTAXES = ("JPEGBaseline8Bit", "JPEGLSLossless", "JPEG2000Lossless", "RLELossless")


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not run
    detail: str


@dataclasses.dataclass(frozen=True)
class DoctorConfig:
    inputs: tuple[str, ...] = ()
    output: str | None = None
    model: str = registry.DEFAULT_MODEL
    pseudonym_key_file: str | None = None
    inference_actors: int | None = None
    use_gpu: bool | None = None
    dicomweb_credentials_file: str | None = None
    dicomweb_ca_bundle: str | None = None


def guarded(name: str, check, *args) -> Check:
    """Run one check; an exception becomes its failed sentence, so one broken part never hides the others."""
    try:
        return check(*args)
    except Exception as error:  # the check's purpose is to turn any failure into a sentence
        message = " ".join(str(error).split()) or type(error).__name__
        return Check(name, False, message[:400])


def check_ray() -> Check:
    ensure_ray()
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    described = "; ".join(
        f"{node['NodeManagerAddress']}: " + ", ".join(f"{key} {node['Resources'].get(key, 0):g}" for key in (
            "CPU", "GPU", "decode") if key == "CPU" or key in node["Resources"])
        for node in nodes)
    cpus = sum(node["Resources"].get("CPU", 0) for node in nodes)
    if cpus == 0:
        return Check("ray", False, f"the cluster has no CPU to decode on ({len(nodes)} node(s): {described})")
    return Check("ray", True, f"{len(nodes)} node(s): {described}")


@ray.remote
def tensorflow_gpus() -> tuple[str, int, list[bool]]:
    from model.predict import configure_tensorflow
    from model.tensorflow_runtime import tf

    configure_tensorflow(None, use_gpu=True)
    gpus = tf.config.list_physical_devices("GPU")
    return ray.util.get_node_ip_address(), len(gpus), [tf.config.experimental.get_memory_growth(g) for g in gpus]


def check_gpus() -> Check:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node for node in ray.nodes() if node.get("Alive") and node["Resources"].get("GPU", 0) > 0]
    if not nodes:
        return Check("gpus", True, "no node advertises a GPU: inference runs on CPU actors")
    problems, seen = [], []
    for node in nodes:
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        address, found, growth = ray.get(tensorflow_gpus.options(num_gpus=1, scheduling_strategy=strategy).remote(),
                                          timeout=600)
        advertised = int(node["Resources"]["GPU"])
        seen.append(f"{address}: {found} of {advertised}")
        if found == 0:
            problems.append(f"node {address} advertises {advertised} GPU(s) but TensorFlow there sees none (CUDA "
                            f"drivers or a CPU-only TensorFlow in the image)")
        elif not all(growth):
            problems.append(f"node {address}: GPU memory growth is off")
    return Check("gpus", not problems, "; ".join(problems) or "TensorFlow sees the GPUs: " + ", ".join(seen))


def sample_batch(info: registry.ModelInfo, size: int = 32) -> pa.Table:
    """``size`` preprocessed sample images in the in-flight schema, as the decode stage hands them on."""
    context = StageContext("doctor", "1970-01-01", info.preprocessing, DecodeLimits(), None, 0.5, info.version,
                           info.weights_sha256)
    rows = [row for path in sorted(SAMPLE_IMAGES.glob("*.jpg")) for row in file_rows(str(path), context)]
    rows = [row for row in rows if row[col.STATUS] == col.STATUS_OK]
    return rows_to_table([rows[index % len(rows)] for index in range(size)])


@ray.remote
class InferenceProbe:
    """One inference actor, as the screening job starts it, timed on one batch."""

    def __init__(self, model_dir: str, weights_sha256: str, cpu_threads: int, use_gpu: bool, backend: str):
        self.actor = InferenceActor(model_dir, weights_sha256, 0.5, cpu_threads, use_gpu, backend=backend)

    def score(self, batch: pa.Table) -> tuple[str, int, float, str]:
        self.actor(batch)  # the first call builds the graph
        started = time.perf_counter()
        scored = self.actor(batch)
        seconds = time.perf_counter() - started
        errors = int(np.sum(np.asarray(scored[col.STATUS].to_pylist()) != col.STATUS_OK))
        if errors:
            raise RuntimeError(f"{errors} of {scored.num_rows} sample images failed to score: "
                               f"{scored[col.ERROR_MESSAGE].to_pylist()[0]}")
        return (ray.util.get_node_ip_address(), scored.num_rows, scored.num_rows / seconds,
                f"{self.actor.backend}, CPU {cpu_instruction_sets()}")


def check_inference(config: DoctorConfig) -> Check:
    from pipeline.screening import ScreenConfig
    from pipeline.screening.scoring import inference_backend, inference_resources

    info = registry.load_model_info(config.model)
    screen = ScreenConfig(inputs=("-",), output="-", inference_actors=config.inference_actors,
                          use_gpu=config.use_gpu)
    actors, cpus, gpus, use_gpu = inference_resources(screen)
    backend = inference_backend(screen, info, use_gpu)
    batch = sample_batch(info)
    probes = [InferenceProbe.options(num_cpus=cpus, num_gpus=gpus).remote(info.uri, info.weights_sha256,
                                                                          max(1, int(cpus)), use_gpu, backend)
              for _ in range(actors)]
    rates = ray.get([probe.score.remote(batch) for probe in probes], timeout=900)
    for probe in probes:
        ray.kill(probe)
    return Check("inference", True, f"{actors} {'GPU' if use_gpu else 'CPU'} actor(s) scored a batch of "
                                    f"{batch.num_rows}: " + ", ".join(f"{address} {rate:.0f} images/s ({runs})"
                                                                       for address, _, rate, runs in rates))


def check_int8(config: DoctorConfig) -> Check:
    ok, detail = int8_report(registry.load_model_info(config.model))
    return Check("int8", ok, detail)


def check_input(config: DoctorConfig) -> Check:
    if not config.inputs:
        return Check("input", None, "no --input given")
    archives = [location for location in config.inputs if not is_dicomweb(location)]
    details = [check_pacs_input(location, config) for location in config.inputs if is_dicomweb(location)]
    if archives:
        for location in archives:
            storage.check_reachable(location)
        first, count = None, 0
        for file in iter_input_files(archives):  # counted as it streams: an archive's list is never held
            first, count = first or file, count + 1
        if first is None:
            return Check("input", False, f"no files under {', '.join(archives)}")
        data = storage.read_bytes(first.uri, max_bytes=DecodeLimits().max_file_bytes)
        details.append(f"{count} file(s) listed; read {first.uri} ({len(data)} bytes)")
    return Check("input", True, "; ".join(details))


def check_pacs_input(location: str, config: DoctorConfig) -> str:
    """A PACS input answers and accepts the credentials (the run's own probe), its search for studies holding MR (of
    any date) finds an instance, and that instance is retrieved: a sentence saying so; StorageError otherwise."""
    options = PacsOptions(load_credentials(config.dicomweb_credentials_file), ca_bundle=config.dicomweb_ca_bundle,
                          page_size=1)
    check_pacs(location, options)
    found = next(iter_instances(location, options), None)
    if found is None:
        raise storage.StorageError(f"{location} answers and accepts the credentials, but its search finds no "
                                   f"study holding MR")
    address = PacsAddress.of_instance(found[0])
    data = pacs_for(address.server, options).retrieve(address, DecodeLimits().max_file_bytes)
    return f"{location} answers, accepts the credentials and is searchable; retrieved {address.uri} ({len(data)} bytes)"


def check_output(config: DoctorConfig) -> Check:
    if not config.output:
        return Check("output", None, "no --output given")
    storage.check_reachable(config.output)
    tables.check_writable(config.output)
    tables.check_layout(config.output)
    return Check("output", True, f"{config.output} is writable")


@ray.remote(num_cpus=0.1)
def dicom_decoders() -> tuple[str, list[str]]:
    import pydicom.uid
    from pydicom.pixels import get_decoder

    missing = [name for name in DICOM_SYNTAXES if not get_decoder(getattr(pydicom.uid, name)).is_available]
    return ray.util.get_node_ip_address(), missing


def check_decoders() -> Check:
    address, missing = ray.get(dicom_decoders.remote(), timeout=300)
    if missing:
        return Check("decoders", False, f"on {address} pydicom cannot decode {', '.join(missing)} pixel data: "
                                        f"install the project's pinned pylibjpeg, pylibjpeg-openjpeg and python-gdcm")
    return Check("decoders", True, f"on {address}: {', '.join(DICOM_SYNTAXES)}")


def check_model(config: DoctorConfig) -> Check:
    info = registry.load_model_info(config.model)  # raises when the weights do not match model.json
    for export in registry.ONNX_EXPORTS:  # the float32 export and its int8 quantization, where shipped
        if info.export_sha256(export):
            registry.verify_onnx(info, storage.read_bytes(info.export_uri(export)), export)
    card = storage.join(info.uri, "MODEL_CARD.md")
    if not storage.exists(card):
        return Check("model", False, f"{info.version} has no MODEL_CARD.md beside its weights")
    recorded = re.findall(r"sha256 `([0-9a-f]{64})`", storage.read_text(card))
    if info.weights_sha256 not in recorded:
        return Check("model", False, f"the weights of {info.version} (sha256 {info.weights_sha256[:12]}...) are not "
                                     f"the ones its model card describes")
    return Check("model", True, f"{info.version}: weights sha256 {info.weights_sha256[:12]}... match model.json "
                                f"and the card")


def check_pseudonym(config: DoctorConfig) -> Check:
    try:
        key = load_key(config.pseudonym_key_file)
    except PseudonymKeyError as error:
        return Check("pseudonym", False, str(error))
    if key is None:
        return Check("pseudonym", False, "no pseudonym key: pass --pseudonym-key-file (a file on every node) or set "
                                         "PSEUDONYM_KEY")
    if DEMO_KEY_FILE.exists() and key == DEMO_KEY_FILE.read_text().strip().encode():
        return Check("pseudonym", False, f"the pseudonym key is the demo key of {DEMO_KEY_FILE}: generate the site's "
                                         f"own and keep it secret")
    return Check("pseudonym", True, f"a {len(key)}-character key is present (not shown)")


def run_checks(config: DoctorConfig) -> list[Check]:
    checks = [guarded("model", check_model, config), guarded("int8", check_int8, config),
              guarded("pseudonym", check_pseudonym, config),
              guarded("input", check_input, config), guarded("output", check_output, config)]
    cluster = guarded("ray", check_ray)
    checks.append(cluster)
    for name, check, args in (("gpus", check_gpus, ()), ("decoders", check_decoders, ()),
                              ("inference", check_inference, (config,))):
        checks.append(guarded(name, check, *args) if cluster.ok else Check(name, None, "not run: no Ray cluster"))
    return checks
