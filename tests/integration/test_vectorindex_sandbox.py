"""VectorIndex through the whole chain in the sandbox: the operator runs the build RayJob, the index becomes Ready
on version 1, and a sync after documents changed re-embeds only those, while the resource stays Ready on its
current version."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import yaml

from kubeforge.dev.sandbox import BUCKET
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

EXAMPLE = yaml.safe_load((REPO_ROOT / "examples" / "rag-index.yaml").read_text())
SOURCE = "tests/vectorindex-sync/docs/"


def ready(obj: dict) -> str:
    return next((c["status"] for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), "")


def test_the_index_builds_then_resyncs_only_what_changed_while_staying_ready(sandbox):
    s3 = sandbox.s3()
    seeded = s3.list_objects_v2(Bucket=BUCKET, Prefix="seed/docs/")["Contents"]
    for item in seeded:
        s3.copy_object(Bucket=BUCKET, Key=SOURCE + item["Key"].rsplit("/", 1)[-1],
                       CopySource={"Bucket": BUCKET, "Key": item["Key"]})
    index = copy.deepcopy(EXAMPLE)
    index["metadata"] = {"name": "synced"}
    index["spec"]["source"]["uri"] = f"s3://{BUCKET}/{SOURCE}"
    sandbox.kubectl("apply", "-f", "-", input=yaml.safe_dump(index))
    sandbox.kubectl("wait", "--for=condition=Ready", "vectorindex/synced", "--timeout=600s", timeout=660)
    status = sandbox.get("vectorindex", "synced")["status"]
    assert (status["phase"], status["currentVersion"], status["documents"]) == ("Ready", 1, len(seeded)), \
        json.dumps(status, indent=1)
    assert status["chunks"] >= len(seeded) and status["progress"]["summary"].endswith("documents (100%)")

    s3.put_object(Bucket=BUCKET, Key=SOURCE + "operators.md",
                  Body=b"# Operators\n\nAn operator reconciles custom resources into the workloads they describe.\n")
    s3.delete_object(Bucket=BUCKET, Key=SOURCE + "serving.md")
    sandbox.kubectl("patch", "vectorindex", "synced", "--type", "merge", "-p", '{"spec":{"syncGeneration":1}}')

    seen_while_syncing = []

    def synced():
        obj = sandbox.get("vectorindex", "synced")
        run = (obj.get("status") or {}).get("run") or {}
        if run.get("number") == 2 and "endTime" not in run:
            seen_while_syncing.append(ready(obj))
        return run.get("number") == 2 and run.get("outcome") == "Succeeded" and obj

    obj = sandbox.wait_for(synced, "sync 2 to succeed", timeout=600)
    status = obj["status"]
    assert seen_while_syncing and set(seen_while_syncing) == {"True"}  # Ready on version 1 all along
    assert (status["currentVersion"], status["documents"]) == (2, len(seeded))
    sync = status["output"]["sync"]
    assert (sync["embeddedDocuments"], sync["reusedDocuments"]) == (1, len(seeded) - 1), json.dumps(sync)
    assert status["run"]["reason"] == "SpecChanged" and ready(obj) == "True"

    found = subprocess.run([sys.executable, "-m", "kubeforge", "query", "vi/synced",
                            "what does an operator reconcile into workloads", "-k", "1"],
                           env=sandbox.env, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr
    (hit,) = [json.loads(line) for line in found.stdout.splitlines() if line.strip()]
    assert hit["version"] == 2 and hit["documentId"].endswith("operators.md"), hit
