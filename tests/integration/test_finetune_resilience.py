"""Issue 4's acceptance in the sandbox: failures are detected, classified, retried and resumed
bit-exactly from the last committed checkpoint, with no human."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time

import pytest
import yaml

from kubeforge.storage.layout import ResourcePrefix, checkpoint_step_of
from kubeforge.storage.objectstore import S3ObjectStore
from kubeforge.storage.progress import Progress
from tests.conftest import REPO_ROOT
from tests.integration.background import scenarios_for_selected_tests

pytestmark = pytest.mark.slow

BASE = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
STEPS, EVERY = 24, 4


def finetune(name: str, step_delay: float = 0.0, env: dict | None = None, **spec) -> dict:
    obj = copy.deepcopy(BASE)
    obj["metadata"] = {"name": name}
    obj["spec"]["training"].update(maxSteps=STEPS, checkpointEverySteps=EVERY)
    obj["spec"]["failurePolicy"]["backoff"] = {"initialSeconds": 1, "maxSeconds": 2}
    env_vars = dict(env or {})
    if step_delay:
        env_vars["KUBEFORGE_STEP_DELAY_SECONDS"] = str(step_delay)
    if env_vars:
        obj["spec"]["ray"] = {"runtimeEnv": {"env_vars": env_vars}}
    for key, value in spec.items():
        obj["spec"][key] = value if not isinstance(value, dict) else {**obj["spec"].get(key, {}), **value}
    return obj


def apply(sandbox, obj):
    sandbox.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))


def status(sandbox, name) -> dict:
    return sandbox.get("ft", name).get("status") or {}


def chaos(sandbox, *args):
    result = subprocess.run([sys.executable, "-m", "kubeforge", "dev", "chaos", *args], env=sandbox.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def checkpoint_step(st: dict) -> int:
    return checkpoint_step_of((st.get("progress") or {}).get("lastCheckpoint")) or 0


def wait_final(sandbox, name, timeout=600) -> dict:
    return sandbox.wait_for(lambda: (s := status(sandbox, name)).get("phase") in ("Succeeded", "Failed") and s,
                            f"{name} to finish", timeout=timeout, interval=1)


def step_losses(sandbox, name) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    run_id = status(sandbox, name)["output"]["mlflowRunId"]
    history = MlflowClient(sandbox.state.mlflow_url).get_metric_history(run_id, "loss")
    latest: dict[int, tuple[int, float]] = {}
    for metric in history:  # a resumed attempt re-logs steps after its checkpoint: keep the last write
        if metric.step not in latest or metric.timestamp >= latest[metric.step][0]:
            latest[metric.step] = (metric.timestamp, metric.value)
    return {step: value for step, (_, value) in sorted(latest.items())}


class ResourceObjects:
    """Reads a FineTune's objects straight from the sandbox's S3 (no operator lag), through the layout module."""

    def __init__(self, sandbox, name: str, namespace: str = "default"):
        from kubeforge.dev.sandbox import BUCKET

        self.prefix = ResourcePrefix.for_resource(BUCKET, namespace, "FineTune", name)
        self.store = S3ObjectStore(sandbox.s3())

    def checkpoint_files(self, step: int) -> set[str]:
        base = self.prefix.checkpoint_key(step)
        return {key[len(base):] for key in self.store.list(self.prefix.bucket, base)}

    def progress(self) -> Progress | None:
        body = self.store.get(self.prefix.bucket, self.prefix.progress_key)
        return Progress.model_validate_json(body) if body else None

    def adapter_weights(self) -> dict:
        from safetensors.torch import load

        return load(self.store.get(self.prefix.bucket, self.prefix.output_key("adapter", "adapter_model.safetensors")))


def test_killed_twice_resumes_bit_exactly(sandbox):
    """Killed after its second checkpoint, then again while its third is being uploaded (files up, manifest not):
    the torn third checkpoint is never used, and the losses match an uninterrupted run exactly."""
    apply(sandbox, finetune("steady"))
    second, third = 2 * EVERY, 3 * EVERY
    # only the third checkpoint's manifest is held back: the window the second kill lands in
    apply(sandbox, finetune("chaotic", step_delay=0.5, env={"KUBEFORGE_CHAOS_MANIFEST_DELAY_SECONDS": "10",
                                                            "KUBEFORGE_CHAOS_MANIFEST_DELAY_STEPS": str(third)}))
    objects = ResourceObjects(sandbox, "chaotic")

    sandbox.wait_for(lambda: checkpoint_step(status(sandbox, "chaotic")) >= second,
                     "chaotic's second checkpoint", timeout=300, interval=0.5)
    chaos(sandbox, "kill", "chaotic-1", "--reason", "NodeLost")

    def attempt_2_uploading_its_first_checkpoint() -> bool:
        # Past step 12, attempt 2 has cleared what attempt 1 left there and is committing its own step-12 in
        # the background; until the manifest lands, that checkpoint is torn.
        progress = objects.progress()
        if not (progress and progress.attempt == 2 and progress.step > third):
            return False
        files = objects.checkpoint_files(third)
        return "adapter_model.safetensors" in files and "MANIFEST.json" not in files

    sandbox.wait_for(attempt_2_uploading_its_first_checkpoint, "attempt 2 to be uploading checkpoint step-12",
                     timeout=300, interval=0.2)
    chaos(sandbox, "kill", "chaotic-2", "--reason", "NodeLost")
    sandbox.wait_for(lambda: [a.get("outcome") for a in status(sandbox, "chaotic").get("attempts") or []][:2]
                     == ["Failed", "Failed"], "attempt 2 to be recorded failed", timeout=60, interval=0.3)
    torn = objects.checkpoint_files(third)
    assert torn and "MANIFEST.json" not in torn, f"the kill did not leave a torn checkpoint: {torn}"

    final = wait_final(sandbox, "chaotic")
    steady = wait_final(sandbox, "steady")
    assert final["phase"] == "Succeeded", json.dumps(final, indent=1)
    attempts = final["attempts"]
    assert [a["outcome"] for a in attempts] == ["Failed", "Failed", "Succeeded"]
    assert [a.get("reason") for a in attempts[:2]] == ["Infrastructure", "Infrastructure"]
    assert [checkpoint_step_of(a.get("resumedFrom")) for a in attempts[1:]] == [second, second], \
        json.dumps(attempts, indent=1)  # the torn step-12 was skipped
    assert final["restarts"] == 2

    losses, reference = step_losses(sandbox, "chaotic"), step_losses(sandbox, "steady")
    assert sorted(losses) == sorted(reference) == list(range(1, STEPS + 1))
    assert losses == reference  # exact equality, not a tolerance
    assert final["output"]["evalLossAfter"] == steady["output"]["evalLossAfter"]
    got, expected = objects.adapter_weights(), ResourceObjects(sandbox, "steady").adapter_weights()
    assert got.keys() == expected.keys()
    assert all((got[key] == expected[key]).all() for key in got)  # the final adapter, to the bit
    resumed = json.loads(objects.store.get(objects.prefix.bucket, objects.prefix.manifest_key(third)))
    assert resumed["attempt"] == 3  # the torn step-12 was written again, whole, by the attempt that resumed


HANG_TIMEOUT = 40


def others_past_start_up(sandbox) -> bool:
    """No FineTune is about to start or starting an attempt (importing, starting Ray, loading a model): each is
    training, ended, or held back (stalled on its spec, waiting for a dependency)."""
    for item in json.loads(sandbox.kubectl("get", "ft", "-o", "json").stdout)["items"]:
        current = item.get("status") or {}
        held = any(c["type"] == "Stalled" and c["status"] == "True" for c in current.get("conditions") or [])
        starting = current.get("phase") in ("Pending", "Retrying") or (
            current.get("phase") == "Running" and not (current.get("progress") or {}).get("step"))
        if starting and not held:
            return False
    return True


def stalled_then_frozen(sandbox) -> None:
    """Attempt 1's training loop stalls while its heartbeat thread keeps beating (only progress reveals it);
    attempt 2's processes are frozen whole (SIGSTOP: the heartbeat stops too). Each is a Hang, each attempt
    resumes from the last checkpoint, and the run succeeds."""
    # It runs beside the kill-twice scenario: it starts once no other FineTune is starting up, so two start-ups
    # never share the 2 cores with a hang timeout running.
    time.sleep(5)  # the kill-twice test applies its resources at once
    sandbox.wait_for(lambda: others_past_start_up(sandbox), "the other FineTunes to be past their start-up",
                     timeout=600, interval=1)
    # hangTimeout counts from the last progress, start-up phases included: leave them room on a loaded machine
    # 40 steps: attempt 2 must still be training when the second fault lands, wherever attempt 1 stalled
    apply(sandbox, finetune("hangs", step_delay=0.5, failurePolicy={"hangTimeout": f"{HANG_TIMEOUT}s"},
                            training={"maxSteps": 40}))
    objects = ResourceObjects(sandbox, "hangs")
    sandbox.wait_for(lambda: checkpoint_step(status(sandbox, "hangs")) >= EVERY, "a first checkpoint", timeout=300)
    chaos(sandbox, "stall", "hangs-1")
    stalled_at = time.monotonic()
    time.sleep(3)  # the step in flight when the stall began may still complete and be reported
    before = objects.progress()
    time.sleep(5)
    during = objects.progress()
    assert during.updated_at > before.updated_at and during.step == before.step, (before, during)
    sandbox.wait_for(lambda: (status(sandbox, "hangs").get("attempts") or [{}])[0].get("reason") == "Hang",
                     "the stall to be detected as a hang", timeout=60, interval=0.5)
    # hangTimeout + the heartbeat interval (the last step seen) + one reconcile period and tick, plus slack
    # for a loaded 2-core machine
    assert time.monotonic() - stalled_at < HANG_TIMEOUT + 2 + 1 + 1 + 6

    def attempt_2_training_past_its_resume() -> bool:
        progress = objects.progress()
        return bool(progress and progress.attempt == 2 and progress.phase == "Training" and progress.resumed_from
                    and progress.step >= (checkpoint_step_of(progress.resumed_from) or 0) + 2)

    sandbox.wait_for(attempt_2_training_past_its_resume, "attempt 2 to train past its resume", timeout=300,
                     interval=0.3)
    hung_at = time.monotonic()
    chaos(sandbox, "hang", "hangs-2")
    sandbox.wait_for(lambda: [a.get("reason") for a in status(sandbox, "hangs").get("attempts") or []][:2]
                     == ["Hang", "Hang"], "the frozen job to be detected as a hang", timeout=60, interval=0.5)
    assert time.monotonic() - hung_at < HANG_TIMEOUT + 2 + 10  # + a reconcile period + heartbeat interval
    final = wait_final(sandbox, "hangs")
    assert final["phase"] == "Succeeded", json.dumps(final, indent=1)
    attempts = final["attempts"]
    assert [a["outcome"] for a in attempts] == ["Failed", "Failed", "Succeeded"]
    resumed = [checkpoint_step_of(a.get("resumedFrom")) or 0 for a in attempts[1:]]
    assert EVERY <= resumed[0] <= resumed[1], json.dumps(attempts, indent=1)  # each from the newest checkpoint


@pytest.fixture(scope="module", autouse=True)
def started_with_the_module(sandbox, request):
    """What runs beside the kill-twice scenario, started when the module starts: the fast-failing resources (their
    tests only read the outcome) and the hang scenario, driven on its own thread (its two hang timeouts are
    waiting, not work)."""
    apply(sandbox, finetune("always-broken", env={"KUBEFORGE_FAIL_NODE_CHECK": "1"},
                            failurePolicy={"maxRestarts": 1}))
    apply(sandbox, finetune("missing-data", dataset={"trainUri": "s3://kubeforge/seed/datasets/nope.jsonl"}))
    with scenarios_for_selected_tests(request, {HANG_TEST: lambda: stalled_then_frozen(sandbox)}) as scenarios:
        yield scenarios


HANG_TEST = "test_a_stalled_loop_and_a_frozen_job_are_each_detected_as_hang_and_resumed"


def test_a_stalled_loop_and_a_frozen_job_are_each_detected_as_hang_and_resumed(started_with_the_module):
    started_with_the_module[HANG_TEST].result(timeout=800)


def test_exhausted_restarts_fail_with_a_readable_summary(sandbox):
    final = wait_final(sandbox, "always-broken")
    assert final["phase"] == "Failed"
    assert [a["reason"] for a in final["attempts"]] == ["NodeCheckFailed", "NodeCheckFailed"]
    stalled = next(c for c in final["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "RetriesExhausted"
    assert "maxRestarts (1) exhausted" in stalled["message"]


def test_user_error_fails_after_one_attempt(sandbox):
    final = wait_final(sandbox, "missing-data")
    assert final["phase"] == "Failed"
    assert len(final["attempts"]) == 1 and final["attempts"][0]["reason"] == "UserError"
    assert "nope.jsonl" in final["message"]
