"""The review app's RayService (infra/k8s/rayservice-review.yaml), checked offline beyond its strict CRD schema
(tests/code/test_manifests.py): its Serve config names the app's real application builder with arguments it
accepts, the deployments the app defines, a token on every pod (the app listens off loopback), and the standing
cluster's spec otherwise."""

from __future__ import annotations

import copy
import importlib

import yaml

from pipeline.review.serving import ReviewSettings
from tests.code.test_manifests import K8S, containers, of_kind

TOKEN_SECRET = "mri-screen-review-token"


def service() -> dict:
    (found,) = of_kind("RayService")
    return found.doc


def serve_config() -> dict:
    return yaml.safe_load(service()["spec"]["serveConfigV2"])


def test_the_serve_config_builds_the_review_app_with_arguments_it_accepts():
    (application,) = serve_config()["applications"]
    module, _, name = application["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), name)
    settings = ReviewSettings(**application["args"])
    assert callable(builder) and settings.results.startswith("s3://") and settings.model.startswith("s3://")
    defined = {"ReviewApp", "ScoringModel", "HeatMapModel"}
    assert {deployment["name"] for deployment in application["deployments"]} == defined
    for deployment in application["deployments"]:
        assert hasattr(importlib.import_module(module), deployment["name"])
    scoring = next(d for d in application["deployments"] if d["name"] == "ScoringModel")
    assert scoring["autoscaling_config"]["max_replicas"] > scoring["autoscaling_config"]["min_replicas"] >= 1


def test_off_loopback_the_app_reads_its_token_from_a_secret_on_every_pod():
    config = serve_config()
    assert config["http_options"]["host"] == "0.0.0.0"
    token_file = config["applications"][0]["args"]["token_file"]
    folder, _, name = token_file.rpartition("/")
    cluster = service()["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster["workerGroupSpecs"]]
    for pod in pods:
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        (mount,) = [m for m in containers(pod)[0]["volumeMounts"] if m["mountPath"] == folder]
        secret = volumes[mount["name"]]["secret"]
        assert mount["readOnly"] and secret["secretName"] == TOKEN_SECRET
        assert secret["items"] == [{"key": name, "path": name}] and secret["defaultMode"] & 0o007 == 0


def test_the_cluster_is_the_standing_clusters_with_the_token_mounted():
    (reference,) = [m.doc["spec"] for m in of_kind("RayCluster")]
    cluster = copy.deepcopy(service()["spec"]["rayClusterConfig"])
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster["workerGroupSpecs"]]
    for pod in pods:
        pod["volumes"] = [volume for volume in pod["volumes"] if volume.get("secret", {}).get(
            "secretName") != TOKEN_SECRET]
        containers(pod)[0]["volumeMounts"] = [mount for mount in containers(pod)[0]["volumeMounts"]
                                              if "review" not in mount["mountPath"]]
    assert cluster == reference
    assert (K8S / "rayservice-review.yaml").read_text().count("Authorization: Bearer") >= 1
