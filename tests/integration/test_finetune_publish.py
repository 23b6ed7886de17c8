"""Issue 9, defect 9, in the sandbox: a FineTune killed while it is publishing (its adapter registered, its merged
model not yet) is retried and ends Succeeded with exactly one registered version per model."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_finetune_resilience import ResourceObjects, apply, chaos, finetune, status, wait_final

pytestmark = pytest.mark.slow

NAME = "publish-killed"
MODEL = "publish-once"
PUBLISH_DELAY = 15  # seconds between the adapter's registration and the merged model's: the window for the kill


def versions(client, name: str) -> list:
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def test_a_kill_while_publishing_leaves_one_version_per_model(sandbox):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sandbox.state.mlflow_url)
    apply(sandbox, finetune(NAME, env={"KUBEFORGE_CHAOS_PUBLISH_DELAY_SECONDS": str(PUBLISH_DELAY)},
                            training={"maxSteps": 8, "checkpointEverySteps": 4},
                            output={"registeredModelName": MODEL, "merge": True}))
    objects = ResourceObjects(sandbox, NAME)

    def attempt_1_between_the_registrations() -> bool:
        progress = objects.progress()
        return bool(progress and progress.attempt == 1 and progress.phase == "Registering"
                    and versions(client, MODEL) and not versions(client, f"{MODEL}-merged"))

    sandbox.wait_for(attempt_1_between_the_registrations, "attempt 1 to have registered its adapter only",
                     timeout=300, interval=0.3)
    chaos(sandbox, "kill", status(sandbox, NAME)["attempts"][0]["rayJob"], "--reason", "NodeLost")
    sandbox.wait_for(lambda: (status(sandbox, NAME).get("attempts") or [{}])[0].get("outcome") == "Failed",
                     "attempt 1 to be recorded failed", timeout=60, interval=0.3)
    assert not versions(client, f"{MODEL}-merged"), "the kill landed after the merged model was registered"

    final = wait_final(sandbox, NAME)
    assert final["phase"] == "Succeeded", json.dumps(final, indent=1)
    assert [a["outcome"] for a in final["attempts"]] == ["Failed", "Succeeded"], json.dumps(final["attempts"])
    uid = sandbox.get("ft", NAME)["metadata"]["uid"]
    adapter, merged = versions(client, MODEL), versions(client, f"{MODEL}-merged")
    assert [(str(v.version), v.tags.get("kubeforge.attempt")) for v in adapter] == [("1", "1")]  # attempt 2 reused it
    assert [(str(v.version), v.tags.get("kubeforge.attempt")) for v in merged] == [("1", "2")]
    for version in adapter + merged:
        assert version.tags["kubeforge.uid"] == uid and version.tags["kubeforge.generation"] == "1"
        assert version.run_id == final["output"]["mlflowRunId"] and version.status == "READY"
    output = final["output"]
    assert (output["registeredModelVersion"], output["mergedModelVersion"]) == ("1", "1")
    assert output["modelUri"] == f"models:/{MODEL}/1"
