"""`kubeforge dev demo` as scripts/demo.sh runs it, in the sandbox, on the shipped quickstart and a FineTune that
cannot load its model: it shows each resource's phase and progress while it trains, ends when every one is final,
and exits non-zero naming the one that Failed. The quickstart went through the whole chain (kopf operator, RayJob,
local KubeRay, Ray, S3, MLflow registry) as `kubectl` shows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(sandbox, tmp_path_factory) -> subprocess.CompletedProcess:
    trains = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
    fails = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
    fails["metadata"]["name"] = "demo-fails"
    fails["spec"]["baseModel"]["uri"] = "s3://kubeforge/seed/models/no-such-model"
    fails["spec"]["failurePolicy"]["maxRestarts"] = 0
    manifest = tmp_path_factory.mktemp("demo") / "demo.yaml"
    manifest.write_text(yaml.safe_dump_all([trains, fails]))
    return subprocess.run([sys.executable, "-m", "kubeforge", "dev", "demo", "--state-dir", sandbox.state.state_dir,
                           "-f", str(manifest), "--timeout", "600"], capture_output=True, text=True,
                          env={**os.environ, **sandbox.state.client_env()}, timeout=700)


def test_demo_shows_progress_and_exits_non_zero_for_a_failed_resource(demo):
    shown = demo.stdout + demo.stderr
    assert "you may only specify a single resource type" not in shown
    assert "finetune.kubeforge.dev/quickstart created" in shown
    rows = [line.split() for line in demo.stdout.splitlines()
            if "FineTune/" in line and line.split()[0][-1:] == "s"]
    trained = [r for r in rows if r[1] == "FineTune/quickstart"]
    assert any(r[2] == "Running" and "/20" in r[3] for r in trained), shown  # progress while it trains
    assert trained[-1][2:4] == ["Succeeded", "20/20"], shown
    assert [r for r in rows if r[1] == "FineTune/demo-fails"][-1][2] == "Failed", shown
    assert demo.returncode != 0, shown
    assert "FineTune/demo-fails failed" in demo.stderr.strip().splitlines()[-1], shown
    assert "quickstart" not in demo.stderr.strip().splitlines()[-1], shown


def test_the_quickstart_went_through_the_whole_chain(sandbox, demo):
    waited = sandbox.kubectl("wait", "--for=condition=Ready", "finetune/quickstart", "--timeout=60s",
                             check=False, timeout=90)
    obj = sandbox.get("finetune", "quickstart")
    assert waited.returncode == 0, json.dumps(obj.get("status"), indent=1) + sandbox.log_tail("operator")
    status = obj["status"]
    assert status["phase"] == "Succeeded"
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert len(status["attempts"]) == 1 and status["attempts"][0]["outcome"] == "Succeeded"
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == 20
    assert status["output"]["registeredModelName"] == "kubeforge-docs-assistant"
    rayjobs = json.loads(sandbox.kubectl("get", "rayjobs", "-l", "kubeforge.dev/name=quickstart", "-o",
                                         "json").stdout)["items"]
    assert [item["metadata"]["name"] for item in rayjobs] == ["quickstart-1"]

    table = sandbox.kubectl("get", "ft", "quickstart").stdout
    assert "Succeeded" in table and "20/20 (100%)" in table
    described = sandbox.kubectl("describe", "finetune", "quickstart").stdout
    assert "AttemptStarted" in described and "Succeeded" in described
    assert "quickstart" in sandbox.kubectl("get", "genai").stdout
