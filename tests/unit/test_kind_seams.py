"""The seams a kind plugs into the batch reconcile: inputs from dependencies, a verdict on the result, progress
units, and runs again for re-runnable kinds (VectorIndex syncs) while staying Ready on the previous result."""

import copy
import dataclasses
from datetime import datetime, timedelta, timezone

import pytest

from kubeforge.api.kinds import kind_info
from kubeforge.api.workload import CONTEXT_ENV, WorkloadContext
from kubeforge.controllers.batch import DependencyUnusable, KindBase, Observed, Verdict, reconcile
from kubeforge.settings import Settings
from kubeforge.storage.progress import Progress
from tests.unit.test_batch_reconcile import OBJ

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
SETTINGS = Settings(bucket="kubeforge", reconcile_period_seconds=2)
DEP = ("FineTune", "base")
SUCCEEDED_JOB = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
FAILED_JOB = {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "message": "NodeLost"}


class Consumer(KindBase):
    """A kind that needs a FineTune's merged model."""

    info = kind_info("FineTune")

    def dependencies(self, spec):
        return [DEP]

    def inputs(self, spec, dependencies):
        output = (dependencies[DEP].get("status") or {}).get("output") or {}
        if "mergedUri" not in output:
            raise DependencyUnusable("FineTune base has no merged model: set its spec.output.merge")
        return {"modelUri": output["mergedUri"]}


class Gated(KindBase):
    info = kind_info("FineTune")
    progress_unit = "rows"

    def verdict(self, spec, result):
        if result["score"] >= 0.8:
            return Verdict(passed=True)
        return Verdict(passed=False, reason="GateFailed", message=f"score {result['score']} < 0.8")


class Resyncing(KindBase):
    info = dataclasses.replace(kind_info("FineTune"), one_shot=False)
    progress_unit = "documents"

    def output(self, result):
        return {"version": result["version"]}

    def next_run_at(self, spec, last_run_end):
        return last_run_end + timedelta(hours=1) if last_run_end else None


def dependency(phase, ready, stalled="False", output=None):
    return {"status": {"phase": phase, "output": output or {}, "conditions": [
        {"type": "Ready", "status": ready}, {"type": "Stalled", "status": stalled}]}}


def step(kind, obj, observed=None, now=NOW):
    plan = reconcile(kind, obj, observed or Observed(), now, SETTINGS)
    updated = copy.deepcopy(obj)
    updated["status"] = plan.status
    return plan, updated


def conditions(status):
    return {c["type"]: c["status"] for c in status["conditions"]}


def finish(kind, obj, job, result=None, now=NOW):
    """Take the current attempt's RayJob to `job` status and reconcile."""
    name = obj["status"]["attempts"][-1]["rayJob"]
    return step(kind, obj, Observed(rayjobs={name: {"status": job}}, result=result), now)


def test_inputs_are_resolved_from_a_ready_dependency_recorded_and_handed_to_the_workload():
    ready = dependency("Succeeded", "True", output={"mergedUri": "models:/base-merged/3"})
    plan, obj = step(Consumer(), OBJ, Observed(dependencies={DEP: ready}))
    assert obj["status"]["inputs"] == {"modelUri": "models:/base-merged/3"}
    plan, obj = step(Consumer(), obj, Observed(dependencies={DEP: ready}))
    env = plan.create[0]["spec"]["runtimeEnvYAML"]
    context = WorkloadContext.model_validate_json(
        __import__("yaml").safe_load(env)["env_vars"][CONTEXT_ENV])
    assert context.inputs == {"modelUri": "models:/base-merged/3"}


@pytest.mark.parametrize("failed", [dependency("Failed", "False", stalled="True"),
                                    dependency("Succeeded", "True", output={"adapterUri": "models:/a/1"})])
def test_a_failed_or_unusable_dependency_stalls_with_dependency_failed_and_recovers_when_fixed(failed):
    plan, obj = step(Consumer(), OBJ, Observed(dependencies={DEP: failed}))
    assert conditions(obj["status"]) == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}
    assert obj["status"]["conditions"][0]["reason"] == "DependencyFailed" and plan.create == []
    assert "attempts" not in obj["status"] and obj["status"]["phase"] == "Waiting"  # not terminal
    fixed = dependency("Succeeded", "True", output={"mergedUri": "models:/base-merged/4"})
    plan, obj = step(Consumer(), obj, Observed(dependencies={DEP: fixed}))
    assert obj["status"]["attempts"][0]["number"] == 1


def test_waiting_for_a_dependency_consumes_no_restart():
    plan, obj = step(Consumer(), OBJ, Observed(dependencies={DEP: None}))
    assert obj["status"]["message"] == "waiting for FineTune base (not found) to become Ready"
    for minutes in range(1, 30):
        plan, obj = step(Consumer(), obj, Observed(dependencies={DEP: dependency("Running", "False")}),
                         NOW + timedelta(minutes=minutes))
    assert "attempts" not in obj["status"] and "restarts" not in obj["status"]
    ready = dependency("Succeeded", "True", output={"mergedUri": "models:/m/1"})
    plan, obj = step(Consumer(), obj, Observed(dependencies={DEP: ready}))
    assert obj["status"]["attempts"][0].get("counted") is None and "restarts" not in obj["status"]


def test_a_verdict_can_end_a_successful_job_failed_without_a_retry():
    plan, obj = step(Gated(), OBJ)
    plan, obj = finish(Gated(), obj, SUCCEEDED_JOB, result={"score": 0.5})
    status = obj["status"]
    assert status["phase"] == "Failed" and conditions(status)["Stalled"] == "True"
    assert status["conditions"][0]["reason"] == "GateFailed" and status["message"] == "score 0.5 < 0.8"
    assert status["output"] == {"score": 0.5}  # the numbers stay visible
    assert len(status["attempts"]) == 1 and "nextAttemptAt" not in status
    plan, again = step(Gated(), obj, now=NOW + timedelta(hours=1))
    assert plan.create == [] and len(again["status"]["attempts"]) == 1  # terminal: never retried

    plan, obj = step(Gated(), OBJ)
    plan, obj = finish(Gated(), obj, SUCCEEDED_JOB, result={"score": 0.9})
    assert obj["status"]["phase"] == "Succeeded"


def test_progress_is_rendered_in_the_kinds_unit():
    plan, obj = step(Gated(), OBJ)
    heartbeat = Progress(attempt=1, phase="Evaluating", step=30, total_steps=120, updated_at="2026-11-24T12:00:30Z")
    plan, obj = step(Gated(), obj, Observed(rayjobs={"ft-1": {"status": {"jobStatus": "RUNNING",
                                                                         "jobDeploymentStatus": "Running"}}},
                                            progress=heartbeat))
    assert obj["status"]["progress"]["summary"] == "30/120 rows (25%)"


def test_a_rerunnable_kind_stays_ready_on_its_previous_result_while_a_new_run_works():
    kind = Resyncing()
    plan, obj = step(kind, OBJ)
    assert obj["status"]["run"]["number"] == 1 and obj["status"]["attempts"][0]["run"] == 1
    plan, obj = finish(kind, obj, SUCCEEDED_JOB, result={"version": 1})
    assert obj["status"]["phase"] == "Ready" and obj["status"]["output"] == {"version": 1}
    assert plan.requeue_after == 3600  # the schedule: next sync in an hour
    plan, obj = step(kind, obj, now=NOW + timedelta(minutes=30))
    assert plan.create == [] and "endTime" in obj["status"]["run"]  # not due yet

    obj["metadata"]["generation"] = 2  # the spec changed: a new run at once
    plan, obj = step(kind, obj, now=NOW + timedelta(minutes=31))
    run = obj["status"]["run"]
    assert (run["number"], run["reason"], run["generation"]) == (2, "SpecChanged", 2)
    assert obj["status"]["attempts"][-1]["rayJob"] == "ft-2"  # attempt names never repeat across runs
    assert conditions(obj["status"]) == {"Ready": "True", "Reconciling": "True", "Stalled": "False"}

    plan, obj = finish(kind, obj, FAILED_JOB, now=NOW + timedelta(minutes=32))
    assert conditions(obj["status"])["Ready"] == "True" and obj["status"]["phase"] == "Retrying"
    assert obj["status"]["restarts"] == 1 and obj["status"]["output"] == {"version": 1}


def test_restarts_are_counted_per_run_and_a_failed_rerun_keeps_serving_the_previous_result():
    kind = Resyncing()
    plan, obj = step(kind, OBJ)
    plan, obj = finish(kind, obj, FAILED_JOB)  # run 1, attempt 1 fails: restart 1 of 2
    plan, obj = step(kind, obj, now=NOW + timedelta(seconds=10))
    plan, obj = finish(kind, obj, SUCCEEDED_JOB, result={"version": 1}, now=NOW + timedelta(seconds=20))
    assert obj["status"]["restarts"] == 1

    obj["metadata"]["generation"] = 2
    when = NOW + timedelta(minutes=1)
    plan, obj = step(kind, obj, now=when)
    assert "restarts" not in obj["status"]  # a new run starts with its own budget
    for retry in range(3):  # maxRestarts 2: attempts 3, 4 and 5 of run 2 all fail
        plan, obj = finish(kind, obj, FAILED_JOB, now=when)
        when += timedelta(minutes=2)
        if retry < 2:
            plan, obj = step(kind, obj, now=when)
    status = obj["status"]
    assert [a.get("run") for a in status["attempts"]] == [1, 1, 2, 2, 2]
    assert status["run"]["outcome"] == "Failed" and conditions(status) == {
        "Ready": "True", "Reconciling": "False", "Stalled": "True"}
    assert status["phase"] == "Ready" and status["output"] == {"version": 1}
    assert status["message"].endswith("; the previous result is still served")
    plan, later = step(kind, obj, now=when + timedelta(minutes=5))
    assert plan.create == [] and later["status"]["attempts"] == status["attempts"]  # waits for a change


def test_an_unmet_prerequisite_stalls_before_anything_starts_and_the_run_starts_once_it_is_met():
    from kubeforge.prerequisites import MISSING_SECRET, Unmet

    missing = Unmet(MISSING_SECRET, "Secret team/kubeforge-workload-env does not exist: create it")
    plan, obj = step(Gated(), OBJ, Observed(unmet=[missing]))
    status = obj["status"]
    assert (status["phase"], status["conditions"][0]["reason"]) == ("Pending", "MissingSecret")
    assert conditions(status)["Stalled"] == "True" and status["message"] == missing.message
    assert "attempts" not in status and plan.create == [] and plan.requeue_after == 2
    plan, obj = step(Gated(), obj, Observed())
    assert obj["status"]["attempts"][0]["number"] == 1


def test_a_finetune_reference_resolves_to_what_it_published_or_says_what_to_change():
    from kubeforge.controllers.finetune import finetune_model_uri

    def published(**output):
        return {"metadata": {"name": "ft"}, "status": {"phase": "Succeeded", "output": output}}

    lora = published(adapterUri="s3://b/a", modelUri="models:/m/2")
    merged = published(adapterUri="s3://b/a", modelUri="models:/m/2", mergedUri="s3://b/mm",
                       mergedModelName="m-merged", mergedModelVersion="2")
    full = published(fullModelUri="s3://b/f", modelUri="models:/f/1")
    assert finetune_model_uri(lora, adapter=True) == "models:/m/2"
    assert finetune_model_uri(merged, adapter=False) == "models:/m-merged/2"
    assert finetune_model_uri(full, adapter=False) == "models:/f/1"
    with pytest.raises(DependencyUnusable, match="no merged model: set its spec.output.merge: true"):
        finetune_model_uri(lora, adapter=False)
    with pytest.raises(DependencyUnusable, match="has no LoRA adapter"):
        finetune_model_uri(full, adapter=True)
