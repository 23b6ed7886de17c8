"""The attempt loop's watchdog, KubeRay refusals, job states and retry bookkeeping, through the pure reconcile."""

import copy
from datetime import timedelta

import pytest

from kubeforge.controllers.batch import Observed
from kubeforge.storage.progress import Progress
from tests.unit.test_batch_reconcile import NOW, OBJ, conditions, launched, rayjob, run, with_status


def spec_with(**failure_policy):
    obj = copy.deepcopy(OBJ)
    obj["spec"]["failurePolicy"].update(failure_policy)
    return obj


def passes(state, observed, seconds, start=NOW):
    """Reconcile `state` at each of `seconds` after `start`, feeding each status into the next pass."""
    plan = None
    for second in seconds:
        plan = run(state, observed(second) if callable(observed) else observed, start + timedelta(seconds=second))
        state = with_status(plan, state)
        if plan.delete:
            break
    return plan, state


INITIALIZING = {"ft-1": rayjob("ft-1", jobDeploymentStatus="Initializing", message="0/1 nodes are available")}
RUNNING = {"ft-1": rayjob("ft-1", jobDeploymentStatus="Running", jobStatus="RUNNING")}


def test_a_job_still_starting_past_hang_timeout_is_not_a_hang():
    state = launched(spec_with(hangTimeout="60s", startTimeout="5m"))
    plan, _ = passes(state, Observed(rayjobs=INITIALIZING), range(0, 291, 10))
    assert plan.delete == [] and plan.status["phase"] == "Running"
    assert conditions(plan.status)["Reconciling"] == ("True", "Starting")
    assert "Initializing" in plan.status["message"]


def test_a_job_that_never_starts_fails_with_start_timeout_and_is_retried():
    state = launched(spec_with(hangTimeout="60s", startTimeout="5m"))
    plan, state = passes(state, Observed(rayjobs=INITIALIZING), range(0, 400, 10))
    assert plan.delete == ["ft-1"]
    attempt = plan.status["attempts"][0]
    assert attempt["reason"] == "StartTimeout" and attempt["outcome"] == "Failed"
    assert attempt["endTime"] == "2026-11-24T12:05:10Z"  # the first pass more than 5m after the wait began
    assert "did not start running within 5m" in attempt["message"] and "0/1 nodes" in attempt["message"]
    assert plan.status["phase"] == "Retrying" and plan.status["restarts"] == 1


def test_a_suspended_job_waits_without_limit_and_the_start_clock_restarts_on_resume():
    state = launched(spec_with(hangTimeout="60s", startTimeout="5m"))
    suspended = {"ft-1": rayjob("ft-1", jobDeploymentStatus="Suspended")}
    plan, state = passes(state, Observed(rayjobs=suspended), range(0, 3600, 60))
    assert plan.delete == [] and plan.status["phase"] == "Pending"
    assert conditions(plan.status)["Ready"] == ("False", "Suspended")
    assert "waitingSince" not in plan.status["attempts"][0]
    plan, state = passes(state, Observed(rayjobs=INITIALIZING), range(3600, 3900, 10))
    assert plan.delete == []  # 4m50s of starting after the resume
    plan, _ = passes(state, Observed(rayjobs=INITIALIZING), range(3900, 4000, 10))
    assert plan.status["attempts"][0]["reason"] == "StartTimeout"


def test_a_running_job_whose_heartbeat_beats_but_whose_step_stands_still_is_a_hang():
    state = launched(spec_with(hangTimeout="60s"))

    def beating(second):  # a live heartbeat thread: updatedAt fresh on every pass, step stuck at 7
        stamp = (NOW + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Observed(rayjobs=RUNNING, progress=Progress(attempt=1, phase="Training", step=7, updated_at=stamp))

    plan, _ = passes(state, beating, range(0, 120, 5))
    assert plan.delete == ["ft-1"]
    assert plan.status["attempts"][0]["reason"] == "Hang"
    assert plan.status["attempts"][0]["endTime"] == "2026-11-24T12:01:05Z"


def test_progress_that_advances_keeps_a_long_run_alive():
    state = launched(spec_with(hangTimeout="60s"))

    def training(second):
        return Observed(rayjobs=RUNNING, progress=Progress(attempt=1, phase="Training", step=second // 50,
                                                           updated_at="2026-11-24T12:00:00Z"))

    plan, _ = passes(state, training, range(0, 600, 5))
    assert plan.delete == [] and plan.status["phase"] == "Running"


def test_a_phase_change_without_a_step_counts_as_progress():
    state = launched(spec_with(hangTimeout="60s"))
    phases = ["Starting", "NodeCheck", "Loading", "Training"]

    def starting_up(second):
        return Observed(rayjobs=RUNNING, progress=Progress(attempt=1, phase=phases[min(second // 50, 3)], step=0,
                                                           updated_at="2026-11-24T12:00:00Z"))

    plan, _ = passes(state, starting_up, range(0, 200, 5))
    assert plan.delete == []


BEAT = Progress(attempt=1, phase="Starting", step=0, updated_at="2026-11-24T12:05:00Z")
RUNNING_BEATING = Observed(rayjobs=RUNNING, progress=BEAT)


def test_the_hang_clock_starts_at_the_first_heartbeat_of_a_running_job_not_when_the_attempt_was_recorded():
    state = launched(spec_with(hangTimeout="60s", startTimeout="10m"))
    _, state = passes(state, Observed(rayjobs=INITIALIZING), range(0, 300, 10))
    _, state = passes(state, Observed(rayjobs=RUNNING), range(300, 400, 10))  # imports: no heartbeat yet
    plan, state = passes(state, RUNNING_BEATING, range(400, 461, 10))
    assert plan.delete == []
    plan, _ = passes(state, RUNNING_BEATING, range(461, 480, 10))
    assert plan.status["attempts"][0]["reason"] == "Hang"


def test_a_running_job_whose_workload_never_reports_is_stopped_by_the_start_timeout_not_as_a_hang():
    state = launched(spec_with(hangTimeout="60s", startTimeout="5m"))
    plan, state = passes(state, Observed(rayjobs=RUNNING), range(0, 300, 10))
    assert plan.delete == []  # far beyond hangTimeout: still starting
    plan, _ = passes(state, Observed(rayjobs=RUNNING), range(300, 320, 10))
    attempt = plan.status["attempts"][0]
    assert attempt["reason"] == "StartTimeout" and plan.delete == ["ft-1"]
    assert attempt["message"].startswith("the workload sent no progress report within 5m")


def test_watchdog_state_survives_an_operator_restart():
    """The clocks live in status: a fresh pass over the stored object continues them."""
    state = launched(spec_with(hangTimeout="60s"))
    beat = Progress(attempt=1, phase="Training", step=3, updated_at="2026-11-24T12:00:00Z")
    _, state = passes(state, Observed(rayjobs=RUNNING, progress=beat), [0])
    assert state["status"]["attempts"][0]["progressMark"] == "Training step 3"
    assert state["status"]["attempts"][0]["progressTime"] == "2026-11-24T12:00:00Z"
    plan = run(copy.deepcopy(state), Observed(rayjobs=RUNNING, progress=beat), NOW + timedelta(seconds=61))
    assert plan.status["attempts"][0]["reason"] == "Hang"


def test_requeue_is_due_at_the_watchdog_deadline_when_that_is_sooner_than_the_period():
    state = launched(spec_with(hangTimeout="60s"))
    plan, state = passes(state, RUNNING_BEATING, [0])
    assert plan.requeue_after == 2  # the reconcile period (2 s in these tests)
    plan = run(state, RUNNING_BEATING, NOW + timedelta(seconds=59.5))
    assert plan.requeue_after == pytest.approx(1.5)


def test_kuberay_validation_failed_is_a_user_error_without_retry():
    state = launched()
    refused = {"ft-1": rayjob("ft-1", jobDeploymentStatus="ValidationFailed", reason="ValidationFailed",
                              message="The RayJob metadata is invalid: RayJob name should be no more than 47 "
                                      "characters")}
    plan = run(state, Observed(rayjobs=refused))
    attempt = plan.status["attempts"][0]
    assert attempt["reason"] == "UserError" and plan.status["phase"] == "Failed"
    assert "KubeRay refused RayJob ft-1" in attempt["message"] and "47 characters" in attempt["message"]
    assert conditions(plan.status)["Stalled"][0] == "True"
    assert plan.create == [] and "restarts" not in plan.status


@pytest.mark.parametrize("status", [
    {"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"},
    {"jobDeploymentStatus": "Running", "jobStatus": "STOPPED"},
    {"jobDeploymentStatus": "Failed", "jobStatus": "RUNNING"},
])
def test_a_stopped_or_failed_job_is_a_failed_attempt(status):
    plan = run(launched(), Observed(rayjobs={"ft-1": rayjob("ft-1", message="Job was stopped", **status)}))
    assert plan.status["attempts"][0]["outcome"] == "Failed"
    assert plan.status["phase"] == "Retrying"


def test_complete_without_a_succeeded_ray_job_is_not_success():
    plan = run(launched(), Observed(rayjobs={"ft-1": rayjob("ft-1", jobDeploymentStatus="Complete")}))
    assert plan.status["phase"] != "Succeeded"


def test_backoff_doubles_with_each_retry_up_to_its_cap():
    obj = spec_with(maxRestarts=5, backoff={"initialSeconds": 10, "maxSeconds": 60})
    state, now, delays = launched(obj), NOW, []
    for number in range(1, 6):
        failed = run(state, Observed(rayjobs={f"ft-{number}": rayjob(f"ft-{number}", jobDeploymentStatus="Failed",
                                                                     jobStatus="FAILED", message="NodeLost")}), now)
        delays.append(failed.requeue_after)
        now += timedelta(seconds=failed.requeue_after)
        state = with_status(run(with_status(failed, obj), now=now), obj)  # records the next attempt
    assert delays == [10, 20, 40, 60, 60]
    assert state["status"]["restarts"] == 5


def test_ignored_failures_are_retried_without_counting_against_max_restarts():
    obj = spec_with(maxRestarts=1, rules=[{"onLogPattern": "preempted", "action": "Ignore"}])
    state, now = launched(obj), NOW
    for number in range(1, 4):
        failed = run(state, Observed(rayjobs={f"ft-{number}": rayjob(
            f"ft-{number}", jobDeploymentStatus="Failed", jobStatus="FAILED", message="spot node preempted")}), now)
        assert failed.status["phase"] == "Retrying" and failed.status["restarts"] == 0
        now += timedelta(seconds=failed.requeue_after)
        state = with_status(run(with_status(failed, obj), now=now), obj)
    assert [a.get("counted") for a in state["status"]["attempts"]] == [None, False, False, False]


def test_every_condition_carries_the_generation_it_describes():
    obj = copy.deepcopy(OBJ)
    obj["metadata"]["generation"] = 4
    plan = run(obj)
    assert {c["observedGeneration"] for c in plan.status["conditions"]} == {4}


def test_an_edited_finished_resource_has_its_new_generation_observed():
    done = run(launched(), Observed(rayjobs={"ft-1": rayjob("ft-1", jobDeploymentStatus="Complete",
                                                            jobStatus="SUCCEEDED")}, result={}))
    edited = with_status(done)
    edited["metadata"]["generation"] = 2
    edited["spec"]["deletionPolicy"] = "Delete"
    plan = run(edited)
    assert plan.status["observedGeneration"] == 2
    assert {c["observedGeneration"] for c in plan.status["conditions"]} == {2}
    assert plan.status["phase"] == "Succeeded" and plan.create == [] and plan.events == []
    assert plan.status["attempts"][0]["generation"] == 1


def test_an_ended_attempt_keeps_no_watchdog_clocks():
    state = launched(spec_with(hangTimeout="60s"))
    plan, _ = passes(state, RUNNING_BEATING, range(0, 70, 5))
    assert plan.status["attempts"][0]["reason"] == "Hang"
    assert not {"waitingSince", "progressMark", "progressTime"} & set(plan.status["attempts"][0])
