"""The whole status contract of each path through the batch reconcile: kstatus conditions (status, reason and a
message), phase, events and requeue, asserted in full so that no flag, reason or message can drift unnoticed;
and the RayJob an attempt builds, against golden output."""

import copy
import json
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from kubeforge.controllers.batch import Observed, reconcile, summarize, workload_context
from kubeforge.controllers.finetune import FineTuneKind
from kubeforge.launch.rayjob import build_rayjob
from kubeforge.storage.progress import FailureReport, Progress
from tests.unit.test_attempt_loop import spec_with
from tests.unit.test_batch_reconcile import KIND, NOW, OBJ, SETTINGS, launched, rayjob, run, with_status

GOLDEN = Path(__file__).parent / "golden"


def contract(plan):
    """(phase, {condition: (status, reason, has message)}, [(event type, reason)], requeue_after)."""
    conditions = {c["type"]: (c["status"], c["reason"], bool(c["message"])) for c in plan.status["conditions"]}
    return plan.status["phase"], conditions, [(e.type, e.reason) for e in plan.events], plan.requeue_after


def kstatus(ready, reconciling, stalled, reason):
    return {"Ready": (ready, reason, True), "Reconciling": (reconciling, reason, reconciling == "True"),
            "Stalled": (stalled, reason, stalled == "True")}


def reconcile_with(kind, obj, observed):
    return reconcile(kind, obj, observed, NOW, SETTINGS)


class WithDependency(FineTuneKind):
    def dependencies(self, spec):
        return [("VectorIndex", "docs")]


def test_waiting_for_a_dependency():
    index = {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    plan = reconcile_with(WithDependency(), OBJ, Observed(dependencies={("VectorIndex", "docs"): index}))
    assert contract(plan) == ("Waiting", kstatus("False", "True", "False", "WaitingForDependency"),
                              [("Normal", "WaitingForDependency")], 2)
    assert plan.status["message"] == "waiting for VectorIndex docs to become Ready"
    assert "attempts" not in plan.status and plan.create == []


def test_a_ready_dependency_lets_the_attempt_start_and_a_later_unready_one_does_not_stop_it():
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    plan = reconcile_with(WithDependency(), OBJ, Observed(dependencies={("VectorIndex", "docs"): ready}))
    assert plan.status["attempts"][0]["number"] == 1
    unready = {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    plan = reconcile_with(WithDependency(), with_status(plan),
                          Observed(dependencies={("VectorIndex", "docs"): unready}))
    assert plan.status["phase"] == "Running" and len(plan.create) == 1


def test_recording_an_attempt():
    assert contract(run(OBJ)) == ("Running", kstatus("False", "True", "False", "Launching"),
                                  [("Normal", "AttemptStarted")], 0)
    assert run(OBJ).events[0].message == "attempt 1 started as RayJob ft-1"


def test_starting_running_and_suspended():
    starting = run(launched(), Observed(rayjobs={"ft-1": rayjob("ft-1", jobDeploymentStatus="Initializing")}))
    assert contract(starting) == ("Running", kstatus("False", "True", "False", "Starting"), [], 2)
    assert starting.status["message"] == "attempt 1 starting (RayJob ft-1 Initializing)"
    assert run(launched(), Observed(rayjobs={"ft-1": rayjob("ft-1")})).status["message"] == \
        "attempt 1 starting (RayJob ft-1 New)"
    beat = Progress(attempt=1, phase="Training", step=3, updated_at="2026-11-24T12:00:00Z")
    running = run(with_status(starting), Observed(rayjobs={"ft-1": rayjob("ft-1", jobDeploymentStatus="Running",
                                                                          jobStatus="RUNNING")}, progress=beat))
    assert contract(running) == ("Running", kstatus("False", "True", "False", "Running"), [], 2)
    assert running.status["message"] == "attempt 1 running (RayJob ft-1)"
    assert running.status["progress"]["step"] == 3
    suspended = run(launched(), Observed(rayjobs={"ft-1": rayjob("ft-1", jobDeploymentStatus="Suspended")}))
    assert contract(suspended) == ("Pending", kstatus("False", "False", "False", "Suspended"),
                                   [("Normal", "Suspended")], 2)
    assert suspended.status["message"] == "attempt 1 is suspended (RayJob ft-1); it resumes when unsuspended"


def test_hang_and_start_timeout_messages_name_what_was_seen():
    state = launched(spec_with(hangTimeout="60s"))
    running = {"ft-1": rayjob("ft-1", jobDeploymentStatus="Running", jobStatus="RUNNING")}
    beat = Progress(attempt=1, phase="Loading", step=0, updated_at="2026-11-24T12:00:00Z")
    state = with_status(run(state, Observed(rayjobs=running, progress=beat), NOW), state)
    hung = run(state, Observed(rayjobs=running, progress=beat), NOW + timedelta(seconds=61))
    assert hung.status["attempts"][0]["message"] == (
        "no progress for 60s while the Ray job was running (Loading step 0 since 2026-11-24T12:00:00Z); "
        "attempt stopped")
    state = launched(spec_with(startTimeout="60s"))
    state = with_status(run(state, Observed(rayjobs={"ft-1": rayjob("ft-1")}), NOW), state)
    late = run(state, Observed(rayjobs={"ft-1": rayjob("ft-1")}), NOW + timedelta(seconds=61))
    assert late.status["attempts"][0]["message"] == (
        "the Ray job did not start running within 60s (RayJob ft-1 not yet reported since 2026-11-24T12:00:00Z: "
        "no message from KubeRay); attempt stopped")


def failed(state, number=1, message="ray head pod lost: NodeLost", report=None, **status):
    job = rayjob(f"ft-{number}", jobDeploymentStatus="Failed", jobStatus="FAILED", message=message, **status)
    return run(state, Observed(rayjobs={f"ft-{number}": job}, failure_report=report))


def test_retrying_then_exhausted():
    retrying = failed(launched())
    assert contract(retrying) == ("Retrying", kstatus("False", "True", "False", "BackingOff"),
                                  [("Warning", "AttemptFailed"), ("Normal", "BackingOff")], 10)
    assert retrying.events[0].message == "attempt 1 failed (Infrastructure): ray head pod lost: NodeLost"
    assert retrying.status["attempts"][0]["endTime"] == "2026-11-24T12:00:00Z"
    state = with_status(retrying)
    assert run(state, now=NOW + timedelta(seconds=4)).requeue_after == 6  # the rest of the backoff
    missing_due = copy.deepcopy(state)
    del missing_due["status"]["nextAttemptAt"]
    assert run(missing_due).status["attempts"][1]["number"] == 2  # no recorded due time: start now
    obj = spec_with(maxRestarts=0)
    exhausted = failed(launched(obj))
    assert contract(exhausted) == ("Failed", kstatus("False", "False", "True", "RetriesExhausted"),
                                   [("Warning", "AttemptFailed"), ("Warning", "RetriesExhausted")], None)
    assert exhausted.status["message"].startswith("failed after 1 attempt(s): Infrastructure: ray head pod lost")


def test_the_retry_after_an_ignored_failure_is_not_counted_and_a_normal_one_is():
    obj = spec_with(rules=[{"onLogPattern": "preempted", "action": "Ignore"}])
    state = with_status(failed(launched(obj), message="preempted"), obj)
    assert run(state, now=NOW + timedelta(seconds=10)).status["attempts"][1]["counted"] is False
    state = with_status(failed(launched()))
    assert run(state, now=NOW + timedelta(seconds=10)).status["attempts"][1]["counted"] is True
    assert run(state, now=NOW + timedelta(seconds=10)).events[0].message == \
        "attempt 2 started as RayJob ft-2 (resumes from the latest committed checkpoint)"


def test_invalid_spec_and_success():
    obj = copy.deepcopy(OBJ)
    obj["spec"]["dataset"]["promptTemplate"] = "{instruction"
    assert contract(run(obj)) == ("Failed", kstatus("False", "False", "True", "InvalidSpec"),
                                  [("Warning", "InvalidSpec")], None)
    done = run(launched(), Observed(rayjobs={"ft-1": rayjob("ft-1", jobDeploymentStatus="Complete",
                                                            jobStatus="SUCCEEDED")}))
    assert contract(done) == ("Succeeded", kstatus("True", "False", "False", "Succeeded"),
                              [("Normal", "Succeeded")], None)
    assert done.status["message"] == "succeeded after 1 attempt(s)" and "output" not in done.status
    assert done.status["attempts"][0]["endTime"] == "2026-11-24T12:00:00Z"


@pytest.mark.parametrize("deployment,result,succeeded", [
    ("Running", {"modelUri": "m"}, True),   # the result is written: KubeRay has not caught up yet
    ("Running", None, False),
    ("Complete", None, True),
])
def test_success_needs_a_succeeded_ray_job_and_either_kuberay_or_the_result(deployment, result, succeeded):
    plan = run(launched(), Observed(rayjobs={"ft-1": rayjob("ft-1", jobDeploymentStatus=deployment,
                                                            jobStatus="SUCCEEDED")}, result=result))
    assert (plan.status["phase"] == "Succeeded") == succeeded


def test_progress_is_copied_field_by_field():
    progress = Progress(attempt=1, phase="Training", step=10, total_steps=40, epoch=0.25, loss=1.5,
                        throughput=100.0, last_checkpoint="s3://b/c/step-8/", resumed_from="s3://b/c/step-4/",
                        updated_at="2026-11-24T12:00:20Z")
    plan = run(launched(), Observed(rayjobs={"ft-1": rayjob("ft-1", jobStatus="RUNNING")}, progress=progress),
               NOW + timedelta(seconds=25))
    assert plan.status["progress"] == {
        "attempt": 1, "phase": "Training", "step": 10, "totalSteps": 40, "epoch": 0.25, "loss": 1.5,
        "tokensPerSecond": 100.0, "lastCheckpoint": "s3://b/c/step-8/", "updatedAt": "2026-11-24T12:00:20Z",
        "etaSeconds": 100, "summary": "10/40 (25%)"}  # 6 steps in 20 s, 30 to go
    assert plan.status["attempts"][0]["resumedFrom"] == "s3://b/c/step-4/"


@pytest.mark.parametrize("step,total,summary", [(7, None, "7"), (1, 3, "1/3 (33%)"), (3, 3, "3/3 (100%)")])
def test_progress_summary(step, total, summary):
    progress = Progress(attempt=1, phase="Training", step=step, total_steps=total, updated_at="2026-11-24T12:00:00Z")
    plan = run(launched(), Observed(rayjobs={"ft-1": rayjob("ft-1", jobStatus="RUNNING")}, progress=progress))
    assert plan.status["progress"]["summary"] == summary and "etaSeconds" not in plan.status["progress"]


def test_eta_needs_time_to_have_passed_since_the_attempt_started():
    progress = Progress(attempt=1, phase="Training", step=1, total_steps=4, throughput=5.0,
                        updated_at="2026-11-24T12:00:00Z")
    plan = run(launched(), Observed(rayjobs={"ft-1": rayjob("ft-1", jobStatus="RUNNING")}, progress=progress))
    assert "etaSeconds" not in plan.status["progress"]
    progress = Progress(attempt=1, phase="Training", step=1, total_steps=4, throughput=5.0,
                        updated_at="2026-11-24T12:00:01Z")
    plan = run(launched(), Observed(rayjobs={"ft-1": rayjob("ft-1", jobStatus="RUNNING")}, progress=progress))
    assert plan.status["progress"]["etaSeconds"] == 3


def test_a_failure_report_is_preferred_and_the_rayjob_message_kept_in_the_log_tail():
    report = FailureReport(attempt=1, exit_code=71, reason="OutOfMemory", message="CUDA out of memory",
                           traceback_tail="Traceback: boom")
    plan = failed(launched(), message="Job entrypoint command failed", report=report)
    attempt = plan.status["attempts"][0]
    assert attempt["reason"] == "OutOfMemory" and attempt["message"] == "CUDA out of memory"
    assert attempt["exitCode"] == 71
    plan = failed(launched(), message="", reason="DeadlineExceeded")
    assert plan.status["attempts"][0]["message"] == "DeadlineExceeded"
    plan = failed(launched(), message="")
    assert plan.status["attempts"][0]["message"] == "RayJob failed"
    plan = failed(launched(), message="x" * 2000)
    assert len(plan.status["attempts"][0]["message"]) == 1024
    assert plan.events[0].message == "attempt 1 failed (Unknown): " + "x" * 300


def test_summarize_keeps_the_first_and_last_lines():
    assert summarize("a\nb\nc\nd") == "a | b | c | d"
    assert summarize("a\n\nb\nc\nd\ne") == "a | ... | c | d | e"
    assert summarize("a\nb", keep_lines=1) == "a | b"
    assert summarize("a\nb\nc", keep_lines=1) == "a | ... | c"


@pytest.mark.parametrize("spec,problem", [
    ({"method": "qlora", "resources": {"gpusPerWorker": 0}},
     "spec.method: qlora needs GPUs; set spec.resources.gpusPerWorker >= 1 or use lora"),
    ({"method": "full", "output": {"registeredModelName": "m", "merge": True}},
     "spec.output.merge: only lora/qlora adapters can be merged; remove merge for method full"),
    ({"training": {"evalEverySteps": 5}}, "spec.training.evalEverySteps: needs spec.dataset.evalUri to evaluate on"),
    ({"dataset": {"trainUri": "s3://b/t.jsonl", "promptTemplate": "{a.b}"}},
     "spec.dataset.promptTemplate: placeholders must be plain field names like {instruction}"),
])
def test_finetune_checks_only_the_operator_can_make(spec, problem):
    obj = copy.deepcopy(OBJ)
    for key, value in spec.items():
        obj["spec"][key] = {**obj["spec"].get(key, {}), **value} if isinstance(value, dict) else value
    parsed = KIND.info.spec_model.model_validate(obj["spec"])
    assert KIND.validate(parsed, obj) == [problem]


@pytest.mark.parametrize("spec", [{"method": "qlora", "resources": {"gpusPerWorker": 1}},
                                  {"method": "lora", "output": {"registeredModelName": "m", "merge": True}},
                                  {"training": {"evalEverySteps": 5}, "dataset": {"trainUri": "s3://b/t.jsonl",
                                                                                  "evalUri": "s3://b/e.jsonl"}}])
def test_finetune_accepts_the_valid_neighbours(spec):
    obj = copy.deepcopy(OBJ)
    for key, value in spec.items():
        obj["spec"][key] = {**obj["spec"].get(key, {}), **value} if isinstance(value, dict) else value
    assert KIND.validate(KIND.info.spec_model.model_validate(obj["spec"]), obj) == []


def test_the_rayjob_of_a_gpu_attempt_matches_its_golden_output():
    obj = copy.deepcopy(OBJ)
    obj["spec"]["resources"] = {"workers": 2, "cpusPerWorker": 3, "gpusPerWorker": 1, "memory": "16Gi",
                                "gpuType": "A100"}
    spec = KIND.info.spec_model.model_validate(obj["spec"])
    # A platform with GPU Feature Discovery: gpuType becomes a node selector on its label.
    settings = SETTINGS.model_copy(update={"gpu_node_label": "nvidia.com/gpu.product"})
    built = build_rayjob(obj, spec, workload_context(obj, spec, 2, settings), KIND.info.workload, settings)
    built["spec"].pop("runtimeEnvYAML")  # checked by the context tests
    assert built == json.loads((GOLDEN / "rayjob-finetune-gpu.json").read_text())


def test_the_workload_context_carries_generation_tracking_and_the_module():
    obj = copy.deepcopy(OBJ)
    obj["metadata"]["generation"] = 7
    settings = SETTINGS.model_copy(update={"mlflow_tracking_uri": "http://mlflow:5000"})
    spec = KIND.info.spec_model.model_validate(obj["spec"])
    context = workload_context(obj, spec, 3, settings)
    assert (context.generation, context.attempt, context.mlflow.tracking_uri) == (7, 3, "http://mlflow:5000")
    del obj["metadata"]["generation"]
    assert workload_context(obj, spec, 1, settings).generation == 1
    built = build_rayjob(obj, spec, context, KIND.info.workload, settings)
    env = yaml.safe_load(built["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["HF_HUB_OFFLINE"] == "1" and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert built["spec"]["entrypoint"] == "python -m kubeforge_workloads.finetune"
    head = built["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]


def test_schema_errors_name_each_field_and_root_errors_stand_alone():
    obj = copy.deepcopy(OBJ)
    obj["spec"]["training"] = {"epochs": -1, "learningRate": -1}
    message = run(obj).status["message"]
    assert "spec.training.epochs: " in message and "; spec.training.learningRate: " in message
    obj["spec"] = {"baseModel": {"uri": "s3://b/m"}, "dataset": {"trainUri": "s3://b/t"}, "output": {},
                   "bogus": 1, "other": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6}
    message = run(obj).status["message"]
    assert message.count("spec.") <= 5 + 1  # at most five problems, then the advice


def test_a_refusal_without_a_message_uses_the_reason_or_says_so():
    for status, text in (({"reason": "ValidationFailed"}, "ValidationFailed"), ({}, "invalid RayJob")):
        plan = run(launched(), Observed(rayjobs={"ft-1": rayjob("ft-1", jobDeploymentStatus="ValidationFailed",
                                                                **status)}))
        assert plan.status["attempts"][0]["message"] == f"KubeRay refused RayJob ft-1: {text}"


def test_only_this_attempts_heartbeat_counts_as_its_progress():
    state = launched(spec_with(hangTimeout="60s"))
    running = {"ft-1": rayjob("ft-1", jobDeploymentStatus="Running", jobStatus="RUNNING")}
    older = Progress(attempt=0, phase="Training", step=50, updated_at="2026-11-24T12:00:00Z")
    plan = run(state, Observed(rayjobs=running, progress=older))
    attempt = plan.status["attempts"][0]
    assert "progressMark" not in attempt and attempt["waitingSince"]  # still starting, as far as anyone knows
    assert plan.status["message"] == "attempt 1 running (RayJob ft-1)"


def test_a_start_timeout_names_the_rayjob_state():
    state = launched(spec_with(startTimeout="60s"))
    initializing = {"ft-1": rayjob("ft-1", jobDeploymentStatus="Initializing")}
    state = with_status(run(state, Observed(rayjobs=initializing), NOW), state)
    late = run(state, Observed(rayjobs=initializing), NOW + timedelta(seconds=61))
    assert "(RayJob ft-1 Initializing since" in late.status["attempts"][0]["message"]


def test_a_failure_report_reaches_the_classification_with_its_traceback():
    report = FailureReport(attempt=1, exit_code=1, reason="Unknown", message="worker group failed",
                           traceback_tail="Traceback: NCCL timeout")
    plan = failed(launched(), message="Job entrypoint command failed", report=report)
    assert plan.status["attempts"][0]["reason"] == "Infrastructure"  # found in the traceback tail
    report = FailureReport(attempt=1, exit_code=1, reason="NodeCheckFailed", message="no GPU visible")
    assert failed(launched(), report=report).status["attempts"][0]["reason"] == "NodeCheckFailed"


def test_a_second_attempt_without_a_pending_decision_counts():
    state = with_status(failed(launched()))
    del state["status"]["pendingRetryCounted"]
    assert run(state, now=NOW + timedelta(seconds=10)).status["attempts"][1]["counted"] is True
