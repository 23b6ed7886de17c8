"""The whole chain in the sandbox: kubectl → emulator → real kopf operator process → RayJob → local KubeRay →
real Ray → workload → progress/checkpoints in S3 (moto) → MLflow → status."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

QUICKSTART = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())


def finetune(name: str, **training) -> dict:
    obj = copy.deepcopy(QUICKSTART)
    obj["metadata"] = {"name": name}
    obj["spec"]["training"].update(training)
    return obj


def apply(sandbox, obj) -> subprocess.CompletedProcess:
    return sandbox.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj), check=False)


def condition(obj: dict, type_: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def rayjobs_of(sandbox, name: str) -> list[str]:
    out = sandbox.kubectl("get", "rayjobs", "-l", f"kubeforge.dev/name={name}", "-o", "json").stdout
    return sorted(item["metadata"]["name"] for item in json.loads(out)["items"])


@pytest.mark.parametrize("mutate,fragment", [
    (lambda s: s.update(method="dora"), 'Unsupported value: "dora"'),
    (lambda s: s["failurePolicy"].update(maxRestarts=-1), "greater than or equal to 0"),
    (lambda s: s.pop("dataset"), "Required value"),
    (lambda s: s.update(method="qlora"), "qlora needs GPUs"),
])
def test_schema_violations_are_refused_with_422(sandbox, mutate, fragment):
    obj = finetune("refused")
    mutate(obj["spec"])
    result = apply(sandbox, obj)
    assert result.returncode != 0
    assert fragment in result.stderr, result.stderr
    assert sandbox.kubectl("get", "ft", "refused", check=False).returncode != 0


def test_fifty_operator_only_invalid_specs_stall_and_the_operator_stays_up(sandbox):
    docs = []
    for index in range(50):
        obj = finetune(f"bad-template-{index}")
        obj["spec"]["dataset"]["promptTemplate"] = "{instruction"  # only the operator can parse a format string
        docs.append(yaml.safe_dump(obj))
    sandbox.kubectl("apply", "-f", "-", input="---\n".join(docs))

    def all_stalled():
        items = json.loads(sandbox.kubectl("get", "ft", "-o", "json").stdout)["items"]
        bad = [i for i in items if i["metadata"]["name"].startswith("bad-template-")]
        return len(bad) == 50 and all(condition(i, "Stalled").get("reason") == "InvalidSpec" for i in bad) and bad

    stalled = sandbox.wait_for(all_stalled, "50 InvalidSpec resources", timeout=240)
    assert "spec.dataset.promptTemplate" in condition(stalled[0], "Stalled")["message"]
    assert sandbox.operator_alive()
    rayjobs = json.loads(sandbox.kubectl("get", "rayjobs", "-o", "json").stdout)["items"]
    assert not any(r["metadata"]["name"].startswith("bad-template") for r in rayjobs)
    sandbox.kubectl("delete", "ft", *(f"bad-template-{i}" for i in range(50)), "--wait=false")


def rayjob_status(sandbox, name: str) -> dict:
    return sandbox.get("rayjob", name).get("status") or {}


STEPS_TO_ADOPT = 36


def test_operator_restart_adopts_the_running_rayjob(sandbox):
    # Slow steps keep the job running well past the new operator's start (about half a minute of training left;
    # the operator is back in a few seconds).
    obj = finetune("adopt", maxSteps=STEPS_TO_ADOPT, checkpointEverySteps=10)
    obj["spec"]["ray"] = {"runtimeEnv": {"env_vars": {"KUBEFORGE_STEP_DELAY_SECONDS": "1.0"}}}
    assert apply(sandbox, obj).returncode == 0

    def training():
        progress = ((sandbox.get("ft", "adopt").get("status") or {}).get("progress") or {})
        return progress.get("step", 0) >= 2

    sandbox.wait_for(training, "adopt to report training steps", timeout=300)
    (child,) = rayjobs_of(sandbox, "adopt")
    sandbox.restart_operator()
    # The old operator is dead and the new one is still starting: whatever status changes now, the new one wrote.
    step_at_restart = sandbox.get("ft", "adopt")["status"]["progress"]["step"]
    assert rayjob_status(sandbox, child).get("jobStatus") == "RUNNING"

    def new_operator_observed_progress():
        status = sandbox.get("ft", "adopt")["status"]
        return status["progress"]["step"] > step_at_restart and status

    seen = sandbox.wait_for(new_operator_observed_progress, "the restarted operator to observe progress", timeout=120)
    assert seen["phase"] == "Running" and seen["progress"]["step"] < STEPS_TO_ADOPT
    assert rayjob_status(sandbox, child).get("jobStatus") == "RUNNING"  # adopted while running, not after
    assert rayjobs_of(sandbox, "adopt") == [child]

    sandbox.kubectl("wait", "--for=condition=Ready", "finetune/adopt", "--timeout=600s", timeout=660)
    current = sandbox.get("ft", "adopt")
    assert current["status"]["phase"] == "Succeeded"
    assert [a["rayJob"] for a in current["status"]["attempts"]] == [child]
    assert rayjobs_of(sandbox, "adopt") == [child]
