"""cluster.yaml passes the Ray cluster launcher's own validation, and says what the README promises: one image on
every node, token authentication from a secret on every node, a head that runs no work, decoding on CPU nodes,
GPUs on the GPU group, S3 through an instance profile."""

import copy
import re

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def check(config: dict) -> None:
    """What ``ray up`` does before starting a node: fill in the provider's defaults, then validate."""
    validate_config(prepare_config(copy.deepcopy(config)))


def test_ray_accepts_the_cluster_definition(cluster):
    check(cluster)


def test_a_node_type_without_resources_is_rejected(cluster):
    broken = copy.deepcopy(cluster)
    del broken["available_node_types"]["cpu_decode"]["resources"]
    with pytest.raises(Exception, match="'resources' is a required property"):
        check(broken)


def test_every_node_runs_the_same_pinned_image(cluster):
    image = cluster["docker"]["image"]
    assert re.fullmatch(r"[\w./-]+/mri-screen:\d+\.\d+\.\d+", image), image
    assert not {"head_image", "worker_image"} & set(cluster["docker"])
    assert all("worker_image" not in node.get("docker", {}) for node in cluster["available_node_types"].values())


def test_work_lands_on_the_groups_meant_for_it(cluster):
    nodes = cluster["available_node_types"]
    head = nodes[cluster["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and head["max_workers"] == 0
    assert "--num-cpus=0" in " ".join(cluster["head_start_ray_commands"])
    assert nodes["cpu_decode"]["resources"]["decode"] == nodes["cpu_decode"]["resources"]["CPU"] > 0
    assert nodes["gpu_infer"]["resources"]["GPU"] >= 1 and "decode" not in nodes["gpu_infer"]["resources"]
    assert "--gpus all" in nodes["gpu_infer"]["docker"]["worker_run_options"]
    assert all(node["node_config"]["IamInstanceProfile"] == {"Name": "mri-screen-node"} for node in nodes.values())


def test_every_node_starts_ray_with_token_auth_and_no_secret_in_the_file(cluster):
    text = (ROOT / "cluster.yaml").read_text()
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        start = " ".join(commands)
        assert "RAY_AUTH_MODE=token" in start and "RAY_AUTH_TOKEN=$(aws ssm get-parameter" in start
    assert "--dashboard-host=127.0.0.1" in " ".join(cluster["head_start_ray_commands"])
    assert not re.search(r"RAY_AUTH_TOKEN=[0-9a-fA-F]{16,}|aws_secret_access_key|AKIA[0-9A-Z]{16}", text)
