"""TrainingJob through the whole chain in the sandbox (issue 11): the shipped example, two Ray Train workers,
killed after its first committed checkpoint as a node loss would, resumes in attempt 2 from that checkpoint and
finishes with its model and EMA model registered."""

from __future__ import annotations

import json

import pytest
import yaml

from kubeforge.storage.layout import checkpoint_step_of
from tests.conftest import REPO_ROOT
from tests.integration.test_finetune_resilience import chaos

pytestmark = pytest.mark.slow

EXAMPLE = REPO_ROOT / "examples" / "trainingjob.yaml"


def test_the_pretraining_example_survives_a_node_loss_and_registers_model_and_ema(sandbox):
    name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
    sandbox.kubectl("apply", "-f", str(EXAMPLE))
    sandbox.wait_for(lambda: sandbox.kubectl("get", "rayjob", f"{name}-1", check=False).returncode == 0,
                     f"RayJob {name}-1", timeout=120)
    chaos(sandbox, "kill", f"{name}-1", "--reason", "NodeLost", "--after-checkpoint", "5")
    status = sandbox.wait_for(
        lambda: (s := sandbox.get("trainingjob", name).get("status") or {}).get("phase") in ("Succeeded", "Failed")
        and s, f"{name} to finish", timeout=900, interval=2)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    first, second = status["attempts"]
    assert (first["outcome"], first["reason"], second["outcome"]) == ("Failed", "Infrastructure", "Succeeded")
    assert checkpoint_step_of(second.get("resumedFrom")) >= 5  # resumed, not restarted from scratch
    output = status["output"]
    assert output["steps"] == 20 and output["registeredModelName"] == name
    assert output["registeredEmaModelName"] == f"{name}-ema" and output["emaModelUri"].startswith("s3://")
    assert status["progress"]["summary"] == "20/20 (100%)"
