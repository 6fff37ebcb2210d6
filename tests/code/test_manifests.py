"""The container image and the Kubernetes manifests in infra/, checked offline: no cluster, no Docker.

Ray kinds (RayCluster, RayJob, RayCronJob, RayService) are validated against the KubeRay CRDs in ../shared/k8s-crds, made strict:
the published schemas allow unknown keys (the API server prunes them without a word), so a misspelt field would pass
and silently do nothing. Core kinds are validated with kubernetes-validate in its strict mode. Beyond the schemas:
every entrypoint is a job whose own argument parser accepts it, the cluster copies agree, secrets stay out of the
files, schedules cannot overlap, and the Dockerfile installs what pyproject.toml pins.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import importlib
import json
import re
import shlex
import shutil
import subprocess
import tomllib
import zoneinfo

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.conftest import ROOT

INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
DOCKERFILE = INFRA / "Dockerfile"
CRDS = ROOT.parent / "shared" / "k8s-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayCronJob": "ray.io_raycronjobs.yaml", "RayService": "ray.io_rayservices.yaml"}
CORE_KINDS = {"CronJob", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Secret"}
KUBERNETES_VERSION = "1.31.0"   # the oldest Kubernetes the manifests are written for (CronJob timeZone is GA)
MANIFEST_FILES = {"raycluster.yaml", "rayjob-screen.yaml", "raycronjob-nightly-screen.yaml",
                  "raycronjob-weekly-retrain.yaml", "cronjob-fallback-nightly-screen.yaml", "rayservice-review.yaml"}

TOKEN_SECRET, TOKEN_KEY = "mri-screen-ray-token", "auth_token"   # KubeRay's authOptions.secretName reads `auth_token`
KEY_SECRET, KEY_DIR = "mri-screen-pseudonym-key", "/var/run/secrets/mri-screen"
KEY_FILE = f"{KEY_DIR}/pseudonym.key"
RAY_SERVICE_ACCOUNT, SCHEDULER_SERVICE_ACCOUNT = "mri-screen", "mri-screen-scheduler"
# Options naming storage: on a cluster each must be s3:// (a local path exists on one pod only, and goes with it).
STORAGE_OPTIONS = {"jobs.screen": ("input", "manifest", "output", "model"),
                   "jobs.retrain": ("data", "tumor_data", "output", "cache", "storage_path", "member_model"),
                   "jobs.evaluate": ("data", "tumor_data", "model", "output", "cache"),
                   "jobs.maintain": ("results",), "jobs.query": ("results",)}
SHELL_SPECIAL = re.compile(r"""["'`$<>|;&(){}\\*?\[\]]""")
SECRET_LIKE_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|(^|_)KEY($|_)", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------------------
# Loading


@dataclasses.dataclass(frozen=True)
class Manifest:
    source: str   # file#document, or file#document:key for a manifest held in a ConfigMap
    doc: dict

    @property
    def kind(self) -> str:
        return self.doc.get("kind", "")

    @property
    def name(self) -> str:
        metadata = self.doc.get("metadata", {})
        return metadata.get("name") or metadata.get("generateName", "")


def load_manifests() -> list[Manifest]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is None:
                continue
            found.append(Manifest(f"{path.name}#{index}", doc))
            if doc.get("kind") == "ConfigMap":
                for key, text in sorted(doc.get("data", {}).items()):
                    if key.endswith(".yaml"):
                        found.append(Manifest(f"{path.name}#{index}:{key}", yaml.safe_load(text)))
    return found


MANIFESTS = load_manifests()
RAY_MANIFESTS = [m for m in MANIFESTS if m.kind in CRD_FILES]
CORE_MANIFESTS = [m for m in MANIFESTS if m.kind in CORE_KINDS]


def of_kind(*kinds: str) -> list[Manifest]:
    return [m for m in MANIFESTS if m.kind in kinds]


def job_specs() -> list[tuple[str, dict]]:
    """Every RayJob spec: RayJobs (in files or ConfigMaps) and the jobTemplate of every RayCronJob."""
    specs = [(m.source, m.doc["spec"]) for m in of_kind("RayJob")]
    specs += [(m.source, m.doc["spec"]["jobTemplate"]) for m in of_kind("RayCronJob")]
    return specs


def cluster_specs() -> list[tuple[str, dict]]:
    specs = [(m.source, m.doc["spec"]) for m in of_kind("RayCluster")]
    specs += [(source, spec["rayClusterSpec"]) for source, spec in job_specs() if "rayClusterSpec" in spec]
    return specs


def pod_specs() -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod the manifests run: Ray heads and workers, submitters, CronJob pods."""
    pods = []
    for source, cluster in cluster_specs():
        pods.append((f"{source} head", cluster["headGroupSpec"]["template"]["spec"]))
        for group in cluster.get("workerGroupSpecs", []):
            pods.append((f"{source} {group['groupName']}", group["template"]["spec"]))
    for source, spec in job_specs():
        if "submitterPodTemplate" in spec:
            pods.append((f"{source} submitter", spec["submitterPodTemplate"]["spec"]))
    for m in of_kind("CronJob"):
        pods.append((f"{m.source} pod", m.doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return pods


def ray_pod_specs() -> list[tuple[str, dict]]:
    return [(where, pod) for where, pod in pod_specs() if " pod" not in where]


def containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def walk(value, path=()):
    """Every (path, dict) in a nested document."""
    if isinstance(value, dict):
        yield path, value
        for key, item in value.items():
            yield from walk(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(item, (*path, index))


def ids(items) -> list[str]:
    return [item.source if isinstance(item, Manifest) else item[0] for item in items]


@functools.cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned(package: str) -> SpecifierSet:
    """pyproject.toml's version range for ``package`` (extras ignored)."""
    for requirement in pyproject()["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)", requirement)
        if match and match.group(1).lower() == package.lower():
            return SpecifierSet(match.group(3))
    raise AssertionError(f"pyproject.toml pins no {package}")


def test_the_manifests_are_all_there():
    assert {path.name for path in K8S.glob("*.yaml")} >= MANIFEST_FILES
    assert {m.kind for m in MANIFESTS} >= {"RayCluster", "RayJob", "RayCronJob", "CronJob", "ServiceAccount", "Role",
                                          "RoleBinding", "ConfigMap"}
    unchecked = sorted({m.kind for m in MANIFESTS} - set(CRD_FILES) - CORE_KINDS)
    assert unchecked == [], f"kinds no test validates: {unchecked}"
    for m in MANIFESTS:
        assert m.doc.get("apiVersion") and m.name, f"{m.source}: apiVersion and metadata.name (or generateName)"


# ---------------------------------------------------------------------------------------------------------------
# Ray kinds against the KubeRay CRDs, made strict


def strict(schema: dict) -> dict:
    """A copy of an OpenAPI v3 schema in which every object schema with ``properties`` and neither
    ``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields: true`` rejects keys it does not name."""
    result = dict(schema)
    for key in ("properties", "patternProperties"):
        if key in result:
            result[key] = {name: strict(sub) for name, sub in result[key].items()}
    for key in ("allOf", "anyOf", "oneOf"):
        if key in result:
            result[key] = [strict(sub) for sub in result[key]]
    for key in ("items", "additionalProperties", "not"):
        if isinstance(result.get(key), dict):
            result[key] = strict(result[key])
    if ("properties" in result and "additionalProperties" not in result
            and not result.get("x-kubernetes-preserve-unknown-fields")):
        result["additionalProperties"] = False
    return result


@functools.cache
def crd_schema(kind: str, strict_schema: bool = True) -> dict:
    path = CRDS / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(f"needs the KubeRay CRDs in {CRDS} (absent in a fresh clone)")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))   # 10-25k lines
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = version["schema"]["openAPIV3Schema"]
    return strict(schema) if strict_schema else schema


def schema_errors(schema: dict, doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, error.absolute_path)) or '(document)'}: {error.message}"
            for error in sorted(validator.iter_errors(doc), key=lambda error: list(map(str, error.absolute_path)))]


@pytest.mark.parametrize("manifest", RAY_MANIFESTS, ids=ids(RAY_MANIFESTS))
def test_ray_manifest_matches_its_strict_crd(manifest):
    assert manifest.doc["apiVersion"] == "ray.io/v1"
    assert schema_errors(crd_schema(manifest.kind), manifest.doc) == []


def first_rayjob() -> dict:
    return copy.deepcopy(next(m.doc for m in of_kind("RayJob")))


def test_strict_crd_rejects_a_misspelt_key_the_published_crd_lets_through():
    job = first_rayjob()
    job["spec"]["entrypont"] = job["spec"].pop("entrypoint")
    # Kubernetes would accept this RayJob, drop `entrypont`, and run a RayJob without an entrypoint.
    assert schema_errors(crd_schema("RayJob", strict_schema=False), job) == []
    errors = schema_errors(crd_schema("RayJob"), job)
    assert any("entrypont" in error for error in errors), errors


def test_strict_crd_rejects_a_misspelt_key_deep_in_a_pod_template():
    job = first_rayjob()
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["resource"] = head.pop("resources")
    errors = schema_errors(crd_schema("RayJob"), job)
    assert any("'resource'" in error and "containers.0" in error for error in errors), errors


def test_strict_crd_rejects_a_wrong_type():
    job = first_rayjob()
    job["spec"]["entrypoint"] = 42
    errors = schema_errors(crd_schema("RayJob"), job)
    assert any(error.startswith("spec.entrypoint:") and "is not of type 'string'" in error for error in errors), errors
    job = first_rayjob()
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "8"
    assert any("maxReplicas" in error for error in schema_errors(crd_schema("RayJob"), job))


def test_raycronjob_has_no_concurrency_policy_to_set():
    """The RayCronJob CRD has no concurrencyPolicy (nor history limits): setting one would be dropped unseen, so the
    schedules rely on deadlines and the jobs' own locks instead (test_schedules_cannot_overlap)."""
    cron = copy.deepcopy(of_kind("RayCronJob")[0].doc)
    cron["spec"]["concurrencyPolicy"] = "Forbid"
    assert any("concurrencyPolicy" in error for error in schema_errors(crd_schema("RayCronJob"), cron))


# ---------------------------------------------------------------------------------------------------------------
# Core kinds with kubernetes-validate


@pytest.mark.parametrize("manifest", CORE_MANIFESTS, ids=ids(CORE_MANIFESTS))
def test_core_manifest_is_valid_kubernetes(manifest):
    try:
        kubernetes_validate.validate(manifest.doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{manifest.source} ({manifest.kind}): {error}")


def test_strict_kubernetes_validation_rejects_a_misspelt_key():
    cron = copy.deepcopy(of_kind("CronJob")[0].doc)
    cron["spec"]["concurencyPolicy"] = cron["spec"].pop("concurrencyPolicy")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(cron, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------------------------------------------------------
# Entrypoints: real jobs, arguments their parsers accept, storage on S3, nothing for a shell to interpret


@pytest.mark.parametrize(("source", "spec"), job_specs(), ids=ids(job_specs()))
def test_entrypoint_runs_a_job_that_accepts_its_arguments(source, spec, capsys):
    entrypoint = spec["entrypoint"]
    assert not SHELL_SPECIAL.search(entrypoint), f"{source}: KubeRay runs the entrypoint in a shell: {entrypoint!r}"
    words = shlex.split(entrypoint)
    assert words[:2] == ["python", "-m"] and words[2].startswith("jobs."), f"{source}: {entrypoint!r}"
    module_name = words[2]
    assert (ROOT / "jobs" / f"{module_name.removeprefix('jobs.')}.py").is_file(), f"{source}: no {module_name}"
    module = importlib.import_module(module_name)
    parse = getattr(module, "parse_args", None) or module.build_parser().parse_args
    try:
        args = parse(words[3:])
    except SystemExit as exit:
        pytest.fail(f"{source}: {module_name} rejects {words[3:]} (exit {exit.code}): {capsys.readouterr().err}")
    for option in STORAGE_OPTIONS.get(module_name, ()):
        values = getattr(args, option, None)
        for value in values if isinstance(values, list) else [values]:
            assert value is not None and str(value).startswith("s3://"), (
                f"{source}: --{option.replace('_', '-')} is {value!r}; on a cluster it must be an s3:// location")
    assert "--runtime-env" not in entrypoint and "PSEUDONYM_KEY" not in spec.get("runtimeEnvYAML", "")


def parsed(spec: dict):
    words = shlex.split(spec["entrypoint"])
    module = importlib.import_module(words[2])
    return words[2], (getattr(module, "parse_args", None) or module.build_parser().parse_args)(words[3:])


def gpu_workers(cluster: dict) -> int:
    return sum(group["maxReplicas"] for group in cluster.get("workerGroupSpecs", [])
               if "num-gpus" in group.get("rayStartParams", {}))


@pytest.mark.parametrize(("source", "spec"), job_specs(), ids=ids(job_specs()))
def test_entrypoint_fits_its_cluster(source, spec):
    module_name, args = parsed(spec)
    cluster = spec["rayClusterSpec"]
    if module_name == "jobs.screen":
        # The key is a mounted file, never created on the cluster (a new key would make new pseudonyms).
        assert args.pseudonym_key_file == KEY_FILE and not args.create_pseudonym_key
        mounts = containers(cluster["headGroupSpec"]["template"]["spec"])[0].get("volumeMounts", [])
        assert any(mount["mountPath"] == KEY_DIR for mount in mounts), f"{source}: the head does not mount {KEY_DIR}"
    if getattr(args, "use_gpu", False):
        wanted = args.inference_actors if module_name == "jobs.screen" else args.num_workers
        assert wanted and wanted <= gpu_workers(cluster), (
            f"{source}: asks for {wanted} GPUs, the cluster can have {gpu_workers(cluster)}")


# ---------------------------------------------------------------------------------------------------------------
# One cluster shape, one image, token authentication everywhere


def test_every_cluster_copy_matches_the_raycluster():
    (reference,) = [m.doc["spec"] for m in of_kind("RayCluster")]
    copies = cluster_specs()[1:]
    assert copies
    for source, cluster in copies:
        if cluster.get("workerGroupSpecs"):
            assert cluster == reference, f"{source}: rayClusterSpec differs from raycluster.yaml's spec"
        else:   # a head-only cluster (maintenance): the same head, no autoscaler
            assert cluster["headGroupSpec"] == reference["headGroupSpec"], f"{source}: head differs"
            assert {key: cluster[key] for key in ("rayVersion", "authOptions")} == {
                key: reference[key] for key in ("rayVersion", "authOptions")}, source
            assert not cluster.get("enableInTreeAutoscaling")


def test_ray_version_is_the_pinned_one():
    for source, cluster in cluster_specs():
        assert Version(cluster["rayVersion"]) in pinned("ray"), source
    image_ray = dockerfile_base()["ray"]
    assert image_ray is None or cluster_specs()[0][1]["rayVersion"] == image_ray, "rayVersion is not the image's Ray"


def ray_images() -> dict[str, str]:
    images = {}
    for where, pod in ray_pod_specs():
        for container in containers(pod):
            images[f"{where} {container['name']}"] = container["image"]
    for source, cluster in cluster_specs():
        if "image" in cluster.get("autoscalerOptions", {}):
            images[f"{source} autoscaler"] = cluster["autoscalerOptions"]["image"]
    return images


def test_every_ray_container_runs_the_project_image_of_this_version():
    images = ray_images()
    assert len(images) >= 10
    assert len(set(images.values())) == 1, images
    repository, _, tag = next(iter(images.values())).rpartition(":")
    assert repository.endswith("/mri-screen") and tag == pyproject()["project"]["version"], images


def test_scheduler_images_are_pinned():
    for m in of_kind("CronJob"):
        for container in containers(m.doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]):
            image = container["image"]
            tag = image.rpartition("/")[2].partition(":")[2]
            assert "@sha256:" in image or (tag and tag != "latest"), f"{m.source}: unpinned image {image}"


def test_token_authentication_on_every_ray_container():
    for source, cluster in cluster_specs():
        assert cluster["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}, source
    envs = {f"{where} {c['name']}": env_of(c) for where, pod in ray_pod_specs() for c in containers(pod)}
    envs.update({f"{source} autoscaler": {e["name"]: e for e in cluster["autoscalerOptions"].get("env", [])}
                 for source, cluster in cluster_specs() if cluster.get("enableInTreeAutoscaling")})
    assert len(envs) >= 10
    for where, env in envs.items():
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", where
        token = env.get("RAY_AUTH_TOKEN", {})
        assert "value" not in token and token.get("valueFrom") == {
            "secretKeyRef": {"name": TOKEN_SECRET, "key": TOKEN_KEY}}, f"{where}: RAY_AUTH_TOKEN {token}"


def test_no_secret_values_in_the_manifests():
    assert of_kind("Secret") == [], "Secrets are created with kubectl (infra/README.md), never committed"
    checked = 0
    for m in MANIFESTS:
        for path, node in walk(m.doc):
            if len(path) >= 2 and path[-2] == "env" and isinstance(path[-1], int):   # an environment variable
                checked += 1
                name = node["name"]
                assert name not in {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                    "PSEUDONYM_KEY"}, f"{m.source}: {name} must not be set in a manifest"
                if SECRET_LIKE_NAME.search(name):
                    assert "value" not in node and "secretKeyRef" in node.get("valueFrom", {}), (
                        f"{m.source} {'.'.join(map(str, path))}: {name} must come from a Secret (valueFrom)")
            for key, value in node.items():
                if isinstance(value, str):
                    assert not re.search(r"(?<![:0-9a-f])[0-9a-f]{32,}", value), f"{m.source}: {key} looks like a key"
    assert checked >= 30


def test_pseudonym_key_is_a_read_only_file_from_its_secret():
    for where, pod in ray_pod_specs():
        if where.endswith("submitter"):
            continue
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        mounts = [m for m in containers(pod)[0].get("volumeMounts", []) if m["mountPath"] == KEY_DIR]
        assert len(mounts) == 1 and mounts[0].get("readOnly") is True, where
        secret = volumes[mounts[0]["name"]]["secret"]
        assert secret["secretName"] == KEY_SECRET and secret["items"] == [
            {"key": "pseudonym.key", "path": "pseudonym.key"}], where
        assert secret.get("defaultMode", 0o644) & 0o007 == 0, f"{where}: the key file is world-readable"


# ---------------------------------------------------------------------------------------------------------------
# Worker groups, resources, identities


def test_worker_groups_autoscale_and_gpu_groups_request_gpus():
    clusters = [(source, c) for source, c in cluster_specs() if c.get("workerGroupSpecs")]
    assert clusters
    for source, cluster in clusters:
        assert cluster["enableInTreeAutoscaling"] is True, source
        head = cluster["headGroupSpec"]
        assert head["rayStartParams"].get("num-cpus") == "0" and head.get("serviceType", "ClusterIP") == "ClusterIP"
        groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
        assert {"cpu-decode", "gpu-infer"} <= set(groups), source
        for name, group in groups.items():
            assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], f"{source} {name}"
            assert group["maxReplicas"] >= 1
            gpus = group.get("rayStartParams", {}).get("num-gpus")
            resources = containers(group["template"]["spec"])[0]["resources"]
            limit = resources.get("limits", {}).get("nvidia.com/gpu")
            if name.startswith("gpu") or gpus or limit:
                assert gpus is not None and limit is not None and int(gpus) == int(limit) >= 1, (
                    f"{source} {name}: num-gpus {gpus!r}, nvidia.com/gpu limit {limit!r}")
                assert resources["requests"].get("nvidia.com/gpu") in (None, limit), f"{source} {name}"


def advertised(group: dict) -> dict:
    """The custom Ray resources a worker group's pods advertise (rayStartParams.resources, shell-quoted JSON)."""
    text = group.get("rayStartParams", {}).get("resources")
    return json.loads(text.strip().strip('"').replace('\\"', '"')) if text else {}


def test_only_the_cpu_group_advertises_the_decode_resource():
    """Decode tasks ask for the pipeline's decode resource when the cluster has it, so that they stay off the GPU
    pods; the CPU group advertises it (one per CPU) and keeps a pod up so that it is there when a job starts."""
    decode = getattr(importlib.import_module("pipeline.screening.scoring"), "DECODE_RESOURCE", None)
    if decode is None:
        pytest.skip("the screening pipeline asks for no decode resource")
    clusters = [(source, c) for source, c in cluster_specs() if c.get("workerGroupSpecs")]
    assert clusters
    for source, cluster in clusters:
        groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
        cpu = groups.pop("cpu-decode")
        cpus = quantity(containers(cpu["template"]["spec"])[0]["resources"]["limits"]["cpu"])
        assert advertised(cpu) == {decode: cpus} and cpu["minReplicas"] >= 1, f"{source}: cpu-decode"
        for name, group in groups.items():
            assert decode not in advertised(group), f"{source}: {name} advertises {decode}"


def quantity(text) -> float:
    match = re.fullmatch(r"([0-9.]+)(m|k|Ki|M|Mi|G|Gi|T|Ti)?", str(text))
    assert match, f"not a Kubernetes quantity: {text!r}"
    factor = {None: 1, "m": 1e-3, "k": 1e3, "Ki": 2**10, "M": 1e6, "Mi": 2**20, "G": 1e9, "Gi": 2**30, "T": 1e12,
              "Ti": 2**40}[match.group(2)]
    return float(match.group(1)) * factor


def test_every_container_has_requests_and_limits_and_runs_unprivileged():
    seen = 0
    for where, pod in pod_specs():
        security = pod.get("securityContext", {})
        assert security.get("runAsNonRoot") is True and security.get("runAsUser", 1) != 0, f"{where}: pod"
        for container in containers(pod):
            seen += 1
            name = f"{where} {container['name']}"
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            for resource in ("cpu", "memory"):
                assert quantity(requests[resource]) <= quantity(limits[resource]), f"{name}: {resource}"
            assert container.get("securityContext", {}).get("allowPrivilegeEscalation") is False, name
    for source, cluster in cluster_specs():
        if cluster.get("enableInTreeAutoscaling"):
            options = cluster["autoscalerOptions"]
            assert {"requests", "limits"} <= set(options["resources"]), f"{source}: autoscaler"
            assert options["securityContext"].get("allowPrivilegeEscalation") is False, f"{source}: autoscaler"
    assert seen >= 15


def test_pods_run_as_their_service_accounts():
    service_accounts = {m.name for m in of_kind("ServiceAccount")}
    assert {RAY_SERVICE_ACCOUNT, SCHEDULER_SERVICE_ACCOUNT} <= service_accounts
    for where, pod in ray_pod_specs():
        if not where.endswith("submitter"):   # the submitter only talks to Ray: default account, no token
            assert pod["serviceAccountName"] == RAY_SERVICE_ACCOUNT, where
    for m in of_kind("CronJob"):
        assert m.doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"] == (
            SCHEDULER_SERVICE_ACCOUNT), m.source


def test_the_scheduler_may_manage_rayjobs_and_nothing_else():
    (role,) = [m.doc for m in of_kind("Role") if m.name == SCHEDULER_SERVICE_ACCOUNT]
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"],
                              "verbs": ["create", "get", "list", "delete"]}]
    (binding,) = [m.doc for m in of_kind("RoleBinding") if m.doc["roleRef"]["name"] == SCHEDULER_SERVICE_ACCOUNT]
    assert binding["roleRef"]["kind"] == "Role"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SCHEDULER_SERVICE_ACCOUNT}]


# ---------------------------------------------------------------------------------------------------------------
# Schedules


def cron_values(field: str, low: int, high: int) -> set[int]:
    values = set()
    for part in field.split(","):
        body, _, step = part.partition("/")
        if body == "*":
            start, stop = low, high
        elif "-" in body:
            start, stop = map(int, body.split("-"))
        else:
            start = int(body)
            stop = high if step else start
        values.update(range(start, stop + 1, int(step or 1)))
    assert values and min(values) >= low and max(values) <= high, f"bad cron field {field!r}"
    return values


@functools.cache
def shortest_gap(schedule: str, time_zone: str) -> datetime.timedelta:
    """The shortest time between two runs of a cron schedule in a time zone, over weeks around both clock changes
    (a local time inside the autumn's repeated hour fires twice, an hour apart)."""
    minute, hour, day, month, weekday = schedule.split()
    minutes, hours = cron_values(minute, 0, 59), cron_values(hour, 0, 23)
    days, months = cron_values(day, 1, 31), cron_values(month, 1, 12)
    weekdays = {value % 7 for value in cron_values(weekday, 0, 7)}
    zone = zoneinfo.ZoneInfo(time_zone)

    def due(local: datetime.datetime) -> bool:
        day_ok, weekday_ok = local.day in days, local.isoweekday() % 7 in weekdays
        either = (day_ok or weekday_ok) if day != "*" and weekday != "*" else (day_ok and weekday_ok)
        return local.minute in minutes and local.hour in hours and local.month in months and either

    gaps = []
    for start in ("2027-03-20", "2027-06-05", "2027-10-23"):
        moment = datetime.datetime.fromisoformat(f"{start}T00:00+00:00")
        runs = []
        for _ in range(16 * 24 * 60):
            if due(moment.astimezone(zone)):
                runs.append(moment)
            moment += datetime.timedelta(minutes=1)
        gaps += [later - earlier for earlier, later in zip(runs, runs[1:])]
    assert gaps, f"{schedule!r} does not run twice in 16 days"
    return min(gaps)


def test_shortest_gap_knows_the_clock_changes():
    assert shortest_gap("30 1 * * *", "Europe/Berlin") == datetime.timedelta(hours=23)
    assert shortest_gap("30 2 * * *", "Europe/Berlin") == datetime.timedelta(hours=1)   # 02:30 twice in October
    assert shortest_gap("0 3 * * 0", "UTC") == datetime.timedelta(days=7)


def test_schedules_cannot_overlap():
    """A run ends (its deadline) before the next one of its schedule is due. RayCronJobs have no concurrencyPolicy,
    so this is what keeps two nightly runs apart (with jobs.screen's own lock on its output); CronJobs also Forbid."""
    crons = of_kind("RayCronJob")
    assert crons
    for m in crons:
        spec, template = m.doc["spec"], m.doc["spec"]["jobTemplate"]
        gap = shortest_gap(spec["schedule"], spec["timeZone"])
        deadline = datetime.timedelta(seconds=template["activeDeadlineSeconds"])
        assert deadline < gap, f"{m.source}: a run may last {deadline}, the next starts {gap} after it"
        assert template["shutdownAfterJobFinishes"] is True and template["submissionMode"] == "K8sJobMode"
    for m in of_kind("CronJob"):
        spec = m.doc["spec"]
        assert spec["concurrencyPolicy"] == "Forbid", m.source
        for limit in ("successfulJobsHistoryLimit", "failedJobsHistoryLimit", "startingDeadlineSeconds"):
            assert isinstance(spec.get(limit), int) and spec[limit] >= 1, f"{m.source}: {limit}"
        zoneinfo.ZoneInfo(spec["timeZone"])
        job = spec["jobTemplate"]["spec"]
        assert datetime.timedelta(seconds=job["activeDeadlineSeconds"]) < shortest_gap(spec["schedule"],
                                                                                       spec["timeZone"])


def test_fallback_cronjobs_run_what_the_raycronjobs_run():
    (config_map,) = of_kind("ConfigMap")
    held = {m.source.rpartition(":")[2]: m.doc for m in of_kind("RayJob") if m.source.startswith(
        config_map.source + ":")}
    crons = {m.name: m.doc for m in of_kind("CronJob")}
    ray_crons = {m.name: m.doc for m in of_kind("RayCronJob")}
    assert set(crons) == set(ray_crons) and crons
    for name, cron in crons.items():
        ray_cron = ray_crons[name]
        assert {key: cron["spec"][key] for key in ("schedule", "timeZone")} == {
            key: ray_cron["spec"][key] for key in ("schedule", "timeZone")}, name
        (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        manifest_path, keep = container["args"]
        key = manifest_path.rpartition("/")[2]
        assert container["command"][-1].rpartition("/")[2] in config_map.doc["data"], name
        rayjob = held[key]
        assert rayjob["spec"] == ray_cron["spec"]["jobTemplate"], f"{name}: {key} differs from the RayCronJob"
        metadata = rayjob["metadata"]
        assert "name" not in metadata and metadata["generateName"].endswith("-"), f"{key}: a new name every run"
        assert metadata["labels"]["mri-screen/schedule"] == key.removesuffix(".yaml") and int(keep) >= 1
        assert cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] > (
            rayjob["spec"]["activeDeadlineSeconds"] + rayjob["spec"]["preRunningDeadlineSeconds"]), name


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
def test_scheduler_script_is_valid_shell(tmp_path):
    (config_map,) = of_kind("ConfigMap")
    script = tmp_path / "run-rayjob.sh"
    script.write_text(config_map.doc["data"]["run-rayjob.sh"])
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "kubectl create -f" in script.read_text() and "SUCCEEDED" in script.read_text()


# ---------------------------------------------------------------------------------------------------------------
# The Dockerfile (read, not built)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        word, _, rest = text.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    return instructions


def of_instruction(name: str) -> list[str]:
    return [rest for word, rest in dockerfile_instructions() if word == name]


def dockerfile_base() -> dict:
    """The base image (ARG defaults resolved), and the Ray and Python versions its tag or the RUN lines name."""
    arguments = {}
    for rest in of_instruction("ARG"):
        key, _, value = rest.partition("=")
        arguments[key.strip()] = value.strip().strip('"')
    (base,) = of_instruction("FROM")
    image = re.sub(r"\$\{?(\w+)\}?", lambda match: arguments[match.group(1)], base.split()[0])
    found = {"image": image, "ray": None, "python": None}
    ray = re.fullmatch(r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)-py(\d)(\d+)\b.*", image)
    if ray:
        found.update(ray=ray.group(1), python=f"{ray.group(2)}.{ray.group(3)}")
    python = re.fullmatch(r"(?:docker\.io/)?(?:library/)?python:(\d+\.\d+)\b.*", image) or re.search(
        r"\bpython(\d+\.\d+)\b", " ".join(of_instruction("RUN")))
    if python and not found["python"]:
        found["python"] = python.group(1)
    return found


def pip_installs() -> list[list[str]]:
    commands = []
    for rest in of_instruction("RUN"):
        lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = []
        for token in [*lexer, "&&"]:
            if token not in ("&&", "||", ";", "|"):
                words.append(token)
                continue
            if words[:2] in (["pip", "install"], ["pip3", "install"]) or words[:4] == ["python", "-m", "pip",
                                                                                        "install"]:
                commands.append(words[words.index("install") + 1:])
            words = []
    return commands


def test_dockerfile_base_has_the_pinned_ray_and_python():
    base = dockerfile_base()
    assert base["python"], f"{base['image']}: no Python version in the base tag or the RUN lines"
    assert Version(f"{base['python']}.0") in SpecifierSet(pyproject()["project"]["requires-python"]), base
    if base["ray"]:
        assert Version(base["ray"]) in pinned("ray"), base
    assert re.search(r"-gpu\b|-cu\d+|nvidia/cuda|cudnn", base["image"]), f"{base['image']}: not CUDA-capable"


def test_dockerfile_installs_the_project_and_cuda_tensorflow_at_the_pinned_versions():
    installs = pip_installs()
    assert any("." in words or "-e" in words and words[words.index("-e") + 1] == "." for words in installs), (
        "the project must be installed from pyproject.toml (pip install . or -e .)")
    pins = {}
    for words in installs:
        for word in words:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?([<>=!~].*)", word)
            if match:
                pins[match.group(1).lower()] = (match.group(2) or "", SpecifierSet(match.group(3)))
    assert pins.get("tensorflow", ("", None))[0] == "[and-cuda]", f"tensorflow[and-cuda] not installed: {pins}"
    for package, (_, specifier) in pins.items():
        assert specifier == pinned(package), f"the Dockerfile pins {package}{specifier}, pyproject {pinned(package)}"


def test_dockerfile_copies_only_what_the_image_needs():
    copies = [rest.split() for rest in of_instruction("COPY")]
    sources = {word.rstrip("/") for words in copies for word in words[:-1] if not word.startswith("--")}
    assert "." not in sources and "*" not in sources, "COPY . would bring .venv/, out/ (keys) and .git/ along"
    packages = {pattern.rstrip("*") for pattern in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert sources >= packages | {"pyproject.toml", pyproject()["project"]["readme"], "models"}, sources
    assert of_instruction("WORKDIR")[-1] == "/opt/mri-screen"


def test_dockerfile_runs_as_a_non_root_user_and_holds_no_secrets():
    users = of_instruction("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert users[-1].split(":")[0] in ("1000", "ray"), "the manifests run the pods as uid 1000"
    environment = " ".join(of_instruction("ENV"))
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", environment), environment
    for rest in of_instruction("ENV") + of_instruction("ARG"):
        for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest):
            assert not SECRET_LIKE_NAME.search(name), f"{name} in the image: secrets come from Kubernetes"


def test_the_infra_readme_covers_every_manifest():
    readme = (INFRA / "README.md").read_text()
    for name in sorted(MANIFEST_FILES) + ["infra/Dockerfile", TOKEN_SECRET, KEY_SECRET, "RayCronJob"]:
        assert name in readme, f"infra/README.md does not mention {name}"
