"""spec.deletionPolicy in the sandbox: deleting a running FineTune deletes its RayJobs either way, and keeps
(Retain) or removes (Delete) what the workload wrote under the resource's object-store prefix."""

from __future__ import annotations

import copy
import json
import time

import pytest
import yaml

from kubeforge.dev.sandbox import BUCKET, NAMESPACE
from kubeforge.storage.layout import ResourcePrefix
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

QUICKSTART = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
HEARTBEAT_MARGIN_SECONDS = 8
"""Longer than the workload's heartbeat interval: a writer still alive would have written again by then."""


def running_finetune(name: str, deletion_policy: str) -> dict:
    """A FineTune that commits a checkpoint early, then keeps training slowly, so it is deleted mid-run."""
    obj = copy.deepcopy(QUICKSTART)
    obj["metadata"] = {"name": name}
    obj["spec"]["training"].update(maxSteps=200, checkpointEverySteps=2)
    obj["spec"]["ray"] = {"runtimeEnv": {"env_vars": {"KUBEFORGE_STEP_DELAY_SECONDS": "0.5"}}}
    obj["spec"]["deletionPolicy"] = deletion_policy
    return obj


def keys_under(sandbox, prefix: ResourcePrefix) -> set[str]:
    pages = sandbox.s3().get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=prefix.prefix + "/")
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def rayjobs_of(sandbox, name: str) -> list[str]:
    out = sandbox.kubectl("get", "rayjobs", "-l", f"kubeforge.dev/name={name}", "-o", "json").stdout
    return [item["metadata"]["name"] for item in json.loads(out)["items"]]


def test_deleting_running_finetunes_honours_each_ones_deletion_policy(sandbox):
    # Both policies run side by side: each resource's outcome is checked on its own prefix, and a Delete that
    # swept too wide would show on the Retain resource's prefix.
    names = {policy: f"deletion-{policy.lower()}" for policy in ("Retain", "Delete")}
    prefixes = {policy: ResourcePrefix.for_resource(BUCKET, NAMESPACE, "FineTune", name)
                for policy, name in names.items()}
    for policy, name in names.items():
        sandbox.kubectl("apply", "-f", "-", input=yaml.safe_dump(running_finetune(name, policy)))

    def checkpointed_and_running(name):
        status = sandbox.get("ft", name).get("status") or {}
        progress = status.get("progress") or {}
        return status.get("phase") == "Running" and progress.get("lastCheckpoint") and status

    before, children = {}, {}
    for policy, name in names.items():
        sandbox.wait_for(lambda: checkpointed_and_running(name), f"{name} to run with a committed checkpoint",
                         timeout=400)
    for policy, name in names.items():
        before[policy] = keys_under(sandbox, prefixes[policy])
        assert prefixes[policy].progress_key in before[policy], before[policy]
        assert any(key.endswith("/MANIFEST.json") for key in before[policy]), before[policy]
        children[policy] = rayjobs_of(sandbox, name)
        assert len(children[policy]) == 1

    sandbox.kubectl("delete", "ft", *names.values(), "--timeout=120s", timeout=150)
    for policy, name in names.items():
        assert sandbox.kubectl("get", "ft", name, check=False).returncode != 0
        sandbox.wait_for(lambda: not rayjobs_of(sandbox, name), f"{name}'s RayJobs to be deleted", timeout=60)
        for child in children[policy]:
            assert sandbox.kubectl("get", "rayjob", child, check=False).returncode != 0

    deleted = prefixes["Delete"]
    deadline = time.monotonic() + 60
    while (left := keys_under(sandbox, deleted)) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == set(), f"left under {deleted.uri()} a minute after the deletion: {sorted(left)}"
    time.sleep(HEARTBEAT_MARGIN_SECONDS)
    assert keys_under(sandbox, deleted) == set(), "the stopped workload wrote under the deleted prefix again"
    assert before["Retain"] <= keys_under(sandbox, prefixes["Retain"])
