"""Training faults: a Ray Train worker killed with SIGKILL mid-run; training resumes from the last checkpoint and
the promoted model's files agree with each other. A real 2-worker run on a local Ray: marked slow."""

import concurrent.futures
import dataclasses
import json
import os
import signal
import time

import pytest

from model import registry
from model.predict import load_classifier
from model.card import CARD_FILE
from pipeline.retrain import retrain
from tests.support.training import small_retraining as config
from tests.support.processes import processes_titled

pytestmark = pytest.mark.slow

EPOCHS = 4
RUN_NAME = "fault"
WORKER_TITLE = "RayTrainWorker"


def train_workers() -> list[int]:
    """Ray Train worker processes of this test's own Ray (started by this process), found by process title."""
    return processes_titled(WORKER_TITLE, os.getpid())


def wait_for(condition, running: concurrent.futures.Future) -> None:
    while not condition():
        assert not running.done(), f"training ended before the fault was injected: {running.result()}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, ray_local):
    """Retrain in a thread; once Ray Train has registered a checkpoint, SIGKILL one of its workers."""
    output = tmp_path_factory.mktemp("fault")
    base = config(output, epochs=EPOCHS, version="survivor", workers=2)
    run_config = dataclasses.replace(base, training=dataclasses.replace(base.training, run_name=RUN_NAME))
    # Ray Train writes this file each time its controller registers a reported checkpoint
    registered = output / "ray" / RUN_NAME / "checkpoint_manager_snapshot.json"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(retrain, run_config)
        wait_for(registered.exists, running)
        workers = train_workers()
        assert len(workers) == run_config.training.num_workers, workers
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in train_workers(), running)
        outcome = running.result()
    return output, outcome


def test_killed_worker_is_replaced_and_training_resumes_from_its_checkpoint(killed_run):
    _, outcome = killed_run
    resumed_at = outcome.training_state["resumed_at"]
    assert len(resumed_at) == 1 and 1 <= resumed_at[0] < EPOCHS, resumed_at
    assert [epoch["epoch"] for epoch in outcome.training_state["history"]] == list(range(EPOCHS))


def test_the_promoted_model_after_the_fault_verifies_and_its_card_agrees(killed_run):
    output, outcome = killed_run
    folder = output / "registry" / outcome.version
    assert outcome.promoted and registry.read_registry(str(output / "registry"))["current"] == outcome.version
    info = registry.load_model_info(str(output / "registry"))
    load_classifier(info)
    metadata = json.loads((folder / registry.METADATA_FILE).read_text())
    sha256 = registry.sha256_hex((folder / registry.WEIGHTS_FILE).read_bytes())
    assert metadata["weights_sha256"] == info.weights_sha256 == sha256
    assert metadata["training"]["state"]["resumed_at"] == outcome.training_state["resumed_at"]
    card = (folder / CARD_FILE).read_text()
    assert f"# Model card: {outcome.version}\n" in card and f"sha256 `{sha256}`" in card
