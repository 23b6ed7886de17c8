"""Issue 9's acceptance in the sandbox: a job waiting to start is not a hang, child names KubeRay accepts for every
valid resource name, and a re-created resource that never adopts its predecessor's RayJob. (A stalled training loop
with a live heartbeat is in test_finetune_resilience.py, with the frozen job, on one resource.)"""

from __future__ import annotations

import json
import time

import pytest

from kubeforge.launch.names import LABEL_OWNER_UID
from tests.integration.test_finetune_resilience import apply, finetune, status, wait_final

pytestmark = pytest.mark.slow
UNSCHEDULABLE = {"gpusPerWorker": 1}  # the sandbox's node has no GPU: the worker pod would stay Pending


def rayjobs(sandbox, selector: str) -> list[dict]:
    return json.loads(sandbox.kubectl("get", "rayjobs", "-l", selector, "-o", "json").stdout)["items"]


def test_a_job_queued_for_gpus_is_not_a_hang_and_fails_with_start_timeout(sandbox):
    apply(sandbox, finetune("queued", resources=UNSCHEDULABLE,
                            failurePolicy={"hangTimeout": "5s", "startTimeout": "25s", "maxRestarts": 0}))
    sandbox.wait_for(lambda: sandbox.kubectl("get", "rayjob", "queued-1", "-o", "json", check=False)
                     .returncode == 0, "the RayJob to be created", timeout=60)
    time.sleep(15)  # three hang timeouts, spent waiting for a GPU
    st = status(sandbox, "queued")
    assert st["phase"] == "Running" and st["attempts"][0]["outcome"] == "Running", json.dumps(st, indent=1)
    assert next(c for c in st["conditions"] if c["type"] == "Reconciling")["reason"] == "Starting"
    assert sandbox.get("rayjob", "queued-1")["status"]["jobDeploymentStatus"] == "Initializing"

    final = wait_final(sandbox, "queued", timeout=90)
    attempt = final["attempts"][0]
    assert final["phase"] == "Failed" and attempt["reason"] == "StartTimeout", json.dumps(final, indent=1)
    assert "did not start running within 25s" in attempt["message"]
    assert "RayJob queued-1 Initializing" in attempt["message"]
    sandbox.wait_for(lambda: sandbox.kubectl("get", "rayjob", "queued-1", check=False).returncode != 0,
                     "the never-started RayJob to be deleted", timeout=60)


NAMES = ["n" * 46, "m" * 63, "l" * 120, "7th-run", "team.docs.assistant"]


def test_every_valid_resource_name_gets_a_rayjob_kuberay_accepts(sandbox):
    for name in NAMES:
        apply(sandbox, finetune(name, resources=UNSCHEDULABLE))  # accepted RayJobs wait for a GPU: no Ray work
    try:
        for name in NAMES:
            def accepted():
                st = status(sandbox, name)
                attempts = st.get("attempts") or []
                if not attempts:
                    return None
                found = sandbox.kubectl("get", "rayjob", attempts[0]["rayJob"], "-o", "json", check=False)
                if found.returncode != 0:
                    return None
                child = json.loads(found.stdout)
                return child if (child.get("status") or {}).get("jobDeploymentStatus") else None

            child = sandbox.wait_for(accepted, f"the RayJob of {name!r}", timeout=60)
            assert child["status"]["jobDeploymentStatus"] == "Initializing", json.dumps(child["status"])
            assert child["metadata"]["annotations"]["kubeforge.dev/owner-name"] == name
            assert len(child["metadata"]["name"]) <= 47
    finally:
        for name in NAMES:
            sandbox.kubectl("delete", "finetune", name, "--wait=false", check=False)


def test_a_resource_recreated_at_once_gets_its_own_rayjob_never_its_predecessors(sandbox):
    apply(sandbox, finetune("phoenix", step_delay=0.5))
    sandbox.wait_for(lambda: (sandbox.get("rayjob", "phoenix-1").get("status") or {}).get("jobStatus") == "RUNNING"
                     if sandbox.kubectl("get", "rayjob", "phoenix-1", check=False).returncode == 0 else False,
                     "phoenix-1 to run", timeout=120)
    old_uid = sandbox.get("ft", "phoenix")["metadata"]["uid"]
    sandbox.kubectl("delete", "finetune", "phoenix", "--wait=false")
    sandbox.wait_for(lambda: sandbox.kubectl("get", "ft", "phoenix", check=False).returncode != 0,
                     "the old FineTune to be gone", timeout=60, interval=0.2)
    apply(sandbox, finetune("phoenix"))
    new_uid = sandbox.get("ft", "phoenix")["metadata"]["uid"]
    assert new_uid != old_uid

    def owned_by_new():
        found = sandbox.kubectl("get", "rayjob", "phoenix-1", "-o", "json", check=False)
        if found.returncode != 0:
            return None
        child = json.loads(found.stdout)
        return child if child["metadata"]["ownerReferences"][0]["uid"] == new_uid else None

    sandbox.wait_for(owned_by_new, "phoenix-1 to be re-created for the new FineTune", timeout=120)
    final = wait_final(sandbox, "phoenix")
    assert final["phase"] == "Succeeded" and len(final["attempts"]) == 1, json.dumps(final, indent=1)
    assert rayjobs(sandbox, f"{LABEL_OWNER_UID}={old_uid}") == []
    assert [j["metadata"]["ownerReferences"][0]["uid"] for j in rayjobs(sandbox, "kubeforge.dev/name=phoenix")] \
        == [new_uid]
