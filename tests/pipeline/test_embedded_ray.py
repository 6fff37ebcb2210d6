"""The embedded Ray that ``python -m jobs.retrain`` starts: its workers' state API (which Ray Train's
placement-group cleaner polls) reaches that Ray, not the cluster a past ``ray start`` on the machine named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from infra.ports import kernel_port
from tests.conftest import ROOT

# a driver with a stale address file beside it: a worker task asks the state API without an address, as the
# cleaner does, and says which node answered
ASKS_STATE_API = """
import json, ray
from infra.ray_runtime import ensure_ray
ensure_ray(num_cpus=1, dashboard=True)

@ray.remote(num_cpus=0)
def nodes_seen():
    from ray.util.state import list_nodes
    return [node.node_id for node in list_nodes(timeout=20)]

try:
    seen = ray.get(nodes_seen.remote(), timeout=120)
except Exception as error:
    seen = repr(error)[-400:]
print(json.dumps({"own_node": ray.get_runtime_context().get_node_id(), "seen": seen}))
"""


@pytest.fixture
def stale_address_file():
    """A Ray temporary folder of the test's own whose address file names a head that is gone (as ``ray start``
    leaves it after ``ray stop``); short, since Ray's socket paths under it must fit 107 characters."""
    folder = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    os.makedirs(os.path.join(folder, "ray"))
    with open(os.path.join(folder, "ray", "ray_current_cluster"), "w") as address_file:
        address_file.write(f"127.0.0.1:{kernel_port()}")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_an_embedded_rays_workers_ask_its_own_state_api_not_a_gone_heads(stale_address_file):
    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_TMPDIR=stale_address_file, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", ASKS_STATE_API], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["seen"] == [answer["own_node"]], answer
