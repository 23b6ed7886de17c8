"""The pure batch reconcile: attempts, retries with backoff, hangs, invalid specs, success."""

import copy
import json
from datetime import datetime, timedelta, timezone

import yaml

from kubeforge.api.workload import CONTEXT_ENV
from kubeforge.controllers.batch import Observed, reconcile
from kubeforge.controllers.finetune import FineTuneKind
from kubeforge.settings import Settings
from kubeforge.storage.progress import FailureReport, Progress

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
SETTINGS = Settings(bucket="kubeforge", reconcile_period_seconds=2)
KIND = FineTuneKind()
OBJ = {
    "apiVersion": "kubeforge.dev/v1alpha1", "kind": "FineTune",
    "metadata": {"name": "ft", "namespace": "team", "uid": "1234abcd-0000", "generation": 1},
    "spec": {"baseModel": {"uri": "s3://b/m"}, "dataset": {"trainUri": "s3://b/t.jsonl"},
             "output": {"registeredModelName": "m"},
             "failurePolicy": {"maxRestarts": 2, "hangTimeout": "60s",
                               "backoff": {"initialSeconds": 10, "maxSeconds": 60}}},
}


def conditions(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def run(obj, observed=None, now=NOW):
    return reconcile(KIND, obj, observed or Observed(), now, SETTINGS)


def with_status(plan, obj=OBJ):
    updated = copy.deepcopy(obj)
    updated["status"] = plan.status
    return updated


def rayjob(name, **status):
    return {"metadata": {"name": name}, "status": status}


def launched(obj=OBJ, now=NOW):
    """The state after the first two passes: attempt 1 recorded, then its RayJob created."""
    return with_status(run(with_status(run(obj, now=now), obj), now=now), obj)


def test_first_pass_records_the_attempt_and_the_next_creates_its_rayjob():
    plan = run(OBJ)
    assert plan.status["phase"] == "Running"
    assert plan.status["attempts"] == [{"number": 1, "rayJob": "ft-1", "startTime": "2026-11-24T12:00:00Z",
                                        "outcome": "Running", "generation": 1}]
    assert plan.status["observedGeneration"] == 1
    assert plan.status["storagePrefix"] == "s3://kubeforge/team/FineTune/ft"
    # kopf writes the status after the handler returns: the child must wait for the next pass
    assert plan.create == [] and plan.requeue_after == 0
    assert conditions(plan.status) == {"Ready": ("False", "Launching"), "Reconciling": ("True", "Launching"),
                                       "Stalled": ("False", "Launching")}
    assert [e.reason for e in plan.events] == ["AttemptStarted"]  # one event per attempt start, not two

    plan = run(with_status(plan))
    (child,) = plan.create
    assert child["metadata"]["name"] == "ft-1"
    assert child["metadata"]["ownerReferences"][0]["uid"] == "1234abcd-0000"
    context = json.loads(yaml.safe_load(child["spec"]["runtimeEnvYAML"])["env_vars"][CONTEXT_ENV])
    assert context["attempt"] == 1 and context["storage"]["prefix"] == "team/FineTune/ft"
    assert len(plan.status["attempts"]) == 1 and plan.events == []


def test_recorded_attempt_without_child_is_recreated_not_duplicated():
    state = with_status(run(OBJ))
    for _ in range(2):  # e.g. the operator restarted between recording and creating
        plan = run(state)
        assert [c["metadata"]["name"] for c in plan.create] == ["ft-1"]
        assert len(plan.status["attempts"]) == 1
    plan = run(state, Observed(rayjobs={"ft-1": rayjob("ft-1", jobDeploymentStatus="Running",
                                                       jobStatus="RUNNING")}))
    assert plan.create == []


def test_progress_is_copied_with_summary_and_eta():
    state = with_status(run(OBJ))
    progress = Progress(attempt=1, phase="Training", step=10, total_steps=40, loss=1.5, throughput=100.0,
                        updated_at="2026-11-24T12:00:20Z")
    plan = run(state, Observed(rayjobs={"ft-1": rayjob("ft-1", jobDeploymentStatus="Running")},
                               progress=progress), NOW + timedelta(seconds=25))
    assert plan.status["progress"]["summary"] == "10/40 (25%)"
    assert plan.status["progress"]["etaSeconds"] == 60
    assert plan.status["attempts"][0]["stepReached"] == 10
    assert plan.status["phase"] == "Running" and plan.create == []


def test_eta_of_a_resumed_attempt_counts_only_the_steps_it_trained():
    state = with_status(run(OBJ))
    progress = Progress(attempt=1, phase="Training", step=10, total_steps=40, throughput=100.0,
                        resumed_from="s3://b/team/FineTune/ft/checkpoints/step-5/", updated_at="2026-11-24T12:00:20Z")
    plan = run(state, Observed(rayjobs={"ft-1": rayjob("ft-1", jobDeploymentStatus="Running")},
                               progress=progress), NOW + timedelta(seconds=25))
    assert plan.status["progress"]["etaSeconds"] == 120  # 5 steps in 20 s, 30 to go


def test_progress_of_an_older_attempt_is_ignored():
    state = with_status(run(OBJ))
    stale = Progress(attempt=0, phase="Training", step=99, updated_at="2026-11-24T12:00:20Z")
    plan = run(state, Observed(rayjobs={"ft-1": rayjob("ft-1", jobDeploymentStatus="Running")}, progress=stale))
    assert "progress" not in plan.status


def fail_attempt(state, name, message="ray head pod lost: NodeLost", report=None, now=NOW):
    return run(state, Observed(rayjobs={name: rayjob(name, jobDeploymentStatus="Failed", jobStatus="FAILED",
                                                     message=message)}, failure_report=report), now)


def test_infrastructure_failure_backs_off_then_resumes_as_new_attempt():
    state = launched()
    plan = fail_attempt(state, "ft-1")
    assert plan.status["phase"] == "Retrying"
    assert plan.status["attempts"][0]["reason"] == "Infrastructure"
    assert plan.status["nextAttemptAt"] == "2026-11-24T12:00:10Z"
    assert plan.requeue_after == 10 and plan.create == []
    assert plan.status["restarts"] == 1
    state = with_status(plan)
    assert run(state, now=NOW + timedelta(seconds=5)).create == []
    plan = run(state, now=NOW + timedelta(seconds=10))
    assert plan.create == [] and plan.requeue_after == 0
    assert plan.status["attempts"][1] == {"number": 2, "rayJob": "ft-2", "startTime": "2026-11-24T12:00:10Z",
                                          "outcome": "Running", "counted": True, "generation": 1}
    assert "nextAttemptAt" not in plan.status
    plan = run(with_status(plan), now=NOW + timedelta(seconds=11))
    assert [c["metadata"]["name"] for c in plan.create] == ["ft-2"]


def test_retries_exhausted_fails_with_stalled_and_summary():
    state = launched()
    now = NOW
    for number in (1, 2, 3):
        plan = fail_attempt(state, f"ft-{number}", now=now)
        state = with_status(plan)
        if number < 3:
            now += timedelta(seconds=120)
            state = with_status(run(state, now=now))
    assert plan.status["phase"] == "Failed"
    assert len(plan.status["attempts"]) == 3
    assert [a["reason"] for a in plan.status["attempts"]] == ["Infrastructure"] * 3
    assert conditions(plan.status)["Stalled"] == ("True", "RetriesExhausted")
    assert "maxRestarts (2) exhausted" in plan.status["message"]


def test_user_error_fails_after_one_attempt():
    state = with_status(run(OBJ))
    report = FailureReport(attempt=1, exit_code=64, reason="UserError",
                           message="train.jsonl line 3: missing field 'response'")
    plan = fail_attempt(state, "ft-1", message="Job entrypoint command failed with exit code 64", report=report)
    assert plan.status["phase"] == "Failed"
    assert plan.status["attempts"][0]["exitCode"] == 64
    assert conditions(plan.status)["Stalled"] == ("True", "Failed")
    assert "line 3" in plan.status["attempts"][0]["message"] or "exit code 64" in plan.status["attempts"][0]["message"]


def test_hang_is_detected_and_the_rayjob_deleted():
    state = with_status(run(OBJ))
    beat = Progress(attempt=1, phase="Training", step=4, updated_at="2026-11-24T12:00:30Z")
    running = {"ft-1": rayjob("ft-1", jobDeploymentStatus="Running", jobStatus="RUNNING")}
    state = with_status(run(state, Observed(rayjobs=running, progress=beat), NOW + timedelta(seconds=30)))
    assert run(state, Observed(rayjobs=running, progress=beat), NOW + timedelta(seconds=90)).delete == []
    plan = run(state, Observed(rayjobs=running, progress=beat), NOW + timedelta(seconds=91))
    assert plan.delete == ["ft-1"]
    assert plan.status["attempts"][0]["reason"] == "Hang"
    assert "Training step 4" in plan.status["attempts"][0]["message"]
    assert plan.status["phase"] == "Retrying"


def test_success_sets_ready_and_output():
    state = with_status(run(OBJ))
    plan = run(state, Observed(rayjobs={"ft-1": rayjob("ft-1", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")},
                               result={"modelUri": "models:/m/1", "registeredModelVersion": "1", "junk": 1}))
    assert plan.status["phase"] == "Succeeded"
    assert plan.status["output"] == {"modelUri": "models:/m/1", "registeredModelVersion": "1"}
    assert conditions(plan.status)["Ready"] == ("True", "Succeeded")
    assert plan.status["attempts"][0]["outcome"] == "Succeeded"
    # finished resources are left alone
    again = run(with_status(plan))
    assert again.create == [] and again.events == [] and again.status["phase"] == "Succeeded"


def test_invalid_spec_is_stalled_with_a_message_naming_the_field():
    obj = copy.deepcopy(OBJ)
    obj["spec"]["dataset"]["promptTemplate"] = "{instruction"
    plan = run(obj)
    assert plan.status["phase"] == "Failed" and plan.create == []
    assert conditions(plan.status)["Stalled"] == ("True", "InvalidSpec")
    assert "spec.dataset.promptTemplate" in plan.status["message"]
    # fixing the spec (new generation) starts the resource
    fixed = with_status(plan, obj)
    fixed["spec"]["dataset"]["promptTemplate"] = "{instruction}"
    fixed["metadata"]["generation"] = 2
    plan = run(fixed)
    assert plan.status["phase"] == "Running" and plan.status["attempts"][0]["generation"] == 2
    assert plan.status["observedGeneration"] == 2
    assert len(run(with_status(plan, fixed)).create) == 1


def test_schema_level_garbage_never_raises():
    obj = copy.deepcopy(OBJ)
    obj["spec"] = {"baseModel": "not-an-object", "training": {"batchSize": -3}}
    plan = run(obj)
    assert conditions(plan.status)["Stalled"] == ("True", "InvalidSpec")
    assert "spec.baseModel" in plan.status["message"]


def test_last_transition_time_is_kept_while_status_does_not_flip():
    first = run(OBJ)
    later = run(with_status(first), Observed(rayjobs={"ft-1": rayjob("ft-1", jobDeploymentStatus="Running")}),
                NOW + timedelta(seconds=30))
    before = {c["type"]: c["lastTransitionTime"] for c in first.status["conditions"]}
    after = {c["type"]: c["lastTransitionTime"] for c in later.status["conditions"]}
    assert before == after
