"""Classification, retry policy and hang detection on plain objects."""

from datetime import datetime, timedelta, timezone

import pytest

from kubeforge.api.shared import FailurePolicy, FailureReason
from kubeforge.resilience import (Activity, ObservedFailure, Stuck, Watch, activity_of, classify, decide,
                                  parse_duration, watch)
from kubeforge.resilience.policy import backoff_delay, count_restarts


@pytest.mark.parametrize("failure,reason", [
    (ObservedFailure(hang=True, message="anything"), FailureReason.HANG),
    (ObservedFailure(report_reason="UserError", exit_code=1), FailureReason.USER_ERROR),
    (ObservedFailure(exit_code=64), FailureReason.USER_ERROR),
    (ObservedFailure(exit_code=65), FailureReason.USER_ERROR),
    (ObservedFailure(exit_code=69), FailureReason.NODE_CHECK_FAILED),
    (ObservedFailure(exit_code=137), FailureReason.OUT_OF_MEMORY),
    (ObservedFailure(message="Job entrypoint command failed with exit code 69, last available logs"),
     FailureReason.NODE_CHECK_FAILED),
    (ObservedFailure(message="ray head pod lost: NodeLost"), FailureReason.INFRASTRUCTURE),
    (ObservedFailure(message="worker pod was Evicted"), FailureReason.INFRASTRUCTURE),
    (ObservedFailure(message="container OOMKilled"), FailureReason.OUT_OF_MEMORY),
    (ObservedFailure(message="torch.OutOfMemoryError: CUDA out of memory"), FailureReason.OUT_OF_MEMORY),
    (ObservedFailure(log_tail="ModuleNotFoundError: No module named 'foo'"), FailureReason.USER_ERROR),
    (ObservedFailure(message="something odd"), FailureReason.UNKNOWN),
    (ObservedFailure(exit_code=71), FailureReason.OUT_OF_MEMORY),
    (ObservedFailure(exit_code=75), FailureReason.INFRASTRUCTURE),
    (ObservedFailure(message="raylet: memory pressure, killing a worker"), FailureReason.OUT_OF_MEMORY),
    (ObservedFailure(message="ray.exceptions.WorkerCrashedError: the worker died"), FailureReason.INFRASTRUCTURE),
    (ObservedFailure(message="Pod kubeforge-head-x failed"), FailureReason.INFRASTRUCTURE),
    (ObservedFailure(message="KeyError: 'instruction'"), FailureReason.USER_ERROR),
    (ObservedFailure(message="pydantic_core.ValidationError: 1 validation error"), FailureReason.USER_ERROR),
    (ObservedFailure(report_reason="NotAReason", message="NodeLost"), FailureReason.INFRASTRUCTURE),
])
def test_classify(failure, reason):
    assert classify(failure) == reason


def policy(**kwargs):
    return FailurePolicy.model_validate(kwargs)


def test_user_errors_are_never_retried():
    decision = decide(policy(), FailureReason.USER_ERROR, ObservedFailure(exit_code=64), 0, 0)
    assert not decision.retry


def test_retries_until_max_restarts_then_fails():
    p = policy(maxRestarts=2)
    failure = ObservedFailure(message="NodeLost")
    assert decide(p, FailureReason.INFRASTRUCTURE, failure, 0, 0).retry
    assert decide(p, FailureReason.INFRASTRUCTURE, failure, 1, 1).retry
    final = decide(p, FailureReason.INFRASTRUCTURE, failure, 2, 2)
    assert not final.retry and "exhausted" in final.summary


def test_backoff_doubles_and_caps():
    p = policy(backoff={"initialSeconds": 10, "maxSeconds": 35})
    assert [backoff_delay(p, n) for n in (1, 2, 3, 4)] == [10, 20, 35, 35]


def test_user_rules_come_first():
    p = policy(maxRestarts=0, rules=[
        {"onExitCodes": [3], "action": "Ignore"},
        {"onLogPattern": "flaky storage", "action": "Retry"},
        {"onReason": "OutOfMemory", "action": "Fail"},
    ])
    ignored = decide(p, FailureReason.UNKNOWN, ObservedFailure(exit_code=3), 0, 0)
    assert ignored.retry and not ignored.counted and ignored.rule == 0
    retried = decide(p, FailureReason.UNKNOWN, ObservedFailure(message="flaky storage here"), 0, 0)
    assert not retried.retry  # Retry still counts, and maxRestarts is 0
    oom = decide(policy(rules=[{"onReason": "OutOfMemory", "action": "Fail"}]), FailureReason.OUT_OF_MEMORY,
                 ObservedFailure(message="OOMKilled"), 0, 0)
    assert not oom.retry and oom.rule == 0


def test_rule_with_invalid_regex_does_not_match():
    p = policy(rules=[{"onLogPattern": "([", "action": "Fail"}])
    assert decide(p, FailureReason.INFRASTRUCTURE, ObservedFailure(message="(["), 0, 0).retry


def test_count_restarts_skips_first_and_ignored():
    assert count_restarts([None, True, False, None]) == 2


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("10m", 600), ("1h30m", 5400), ("500ms", 0.5)])
def test_parse_duration(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


# "0" and "1d" are Go durations the CRD pattern refuses: the operator must refuse them too.
@pytest.mark.parametrize("text", ["", "10", "5x", "m10", "0", "1d", "-5s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match=f"^invalid duration {text!r}: use forms like 90s, 10m or 1h30m$"):
        parse_duration(text)


@pytest.mark.parametrize("rayjob_status,activity", [
    ({}, Activity.STARTING),
    ({"jobDeploymentStatus": "Initializing"}, Activity.STARTING),
    ({"jobDeploymentStatus": "Running", "jobStatus": "PENDING"}, Activity.STARTING),
    ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, Activity.RUNNING),
    ({"jobDeploymentStatus": "Suspended"}, Activity.SUSPENDED),
    ({"jobDeploymentStatus": "Suspending", "jobStatus": "RUNNING"}, Activity.SUSPENDED),
])
def test_only_a_running_ray_job_counts_as_running(rayjob_status, activity):
    assert activity_of(rayjob_status) == activity


def test_watchdog_counts_progress_not_heartbeats():
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    minute, attempt = timedelta(minutes=1), {}
    assert watch(attempt, Activity.RUNNING, "Training step 1", start, minute, minute).stuck is None
    assert watch(attempt, Activity.RUNNING, "Training step 1", start + timedelta(seconds=60), minute,
                 minute).stuck is None
    hung = watch(attempt, Activity.RUNNING, "Training step 1", start + timedelta(seconds=61), minute, minute)
    assert hung.stuck == Stuck.HANG and hung.since == "2026-01-01T00:00:00Z"
    assert watch(attempt, Activity.RUNNING, "Training step 2", start + timedelta(seconds=62), minute,
                 minute).stuck is None


def test_watchdog_start_clock():
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    attempt, hang, limit = {}, timedelta(seconds=10), timedelta(minutes=5)
    assert watch(attempt, Activity.STARTING, None, start, hang, limit).recheck_after == 300
    assert watch(attempt, Activity.STARTING, None, start + timedelta(seconds=300), hang, limit).stuck is None
    assert watch(attempt, Activity.STARTING, None, start + timedelta(seconds=301), hang, limit).stuck == \
        Stuck.START_TIMEOUT
    assert watch(attempt, Activity.SUSPENDED, None, start + timedelta(seconds=302), hang, limit).stuck is None
    assert watch(attempt, Activity.STARTING, None, start + timedelta(seconds=900), hang, limit).stuck is None


@pytest.mark.parametrize("message", [
    # A lost node often surfaces as a secondary Python error in the driver: the infrastructure cause must win,
    # or the failure would never be retried.
    "ray.exceptions.ActorDiedError: the actor died because its node died\nKeyError: 'loss'",
    "NodeLost: worker node removed; FileNotFoundError: /tmp/ray/session/checkpoint",
    "RayletDied while running; ImportError: cannot import name 'x' in a worker",
])
def test_infrastructure_signs_win_over_user_error_patterns(message):
    assert classify(ObservedFailure(message=message)) == FailureReason.INFRASTRUCTURE


def test_out_of_memory_signs_win_over_infrastructure_and_user_error_patterns():
    assert classify(ObservedFailure(message="worker OOMKilled; node was lost; KeyError")) == FailureReason.OUT_OF_MEMORY


def test_the_exit_code_decides_before_any_message_pattern():
    assert classify(ObservedFailure(exit_code=64, message="NodeLost")) == FailureReason.USER_ERROR
    assert classify(ObservedFailure(message="failed with exit code 75: KeyError")) == FailureReason.INFRASTRUCTURE
    assert classify(ObservedFailure(exit_code=1, message="NodeLost")) == FailureReason.INFRASTRUCTURE


def test_the_workload_report_decides_before_the_exit_code():
    assert classify(ObservedFailure(report_reason="OutOfMemory", exit_code=64)) == FailureReason.OUT_OF_MEMORY
    assert classify(ObservedFailure(hang=True, report_reason="UserError", exit_code=64)) == FailureReason.HANG


@pytest.mark.parametrize("failure,code", [
    (ObservedFailure(exit_code=3, message="exit code 7"), 3),
    (ObservedFailure(message="Job entrypoint command failed with exit code 7, last available logs"), 7),
    (ObservedFailure(message="process exited with code: 9"), 9),
    (ObservedFailure(message="worker stopped, exit_code=-9"), -9),
    (ObservedFailure(message="worker stopped, exit_code: 12"), 12),
    (ObservedFailure(message="no code here", log_tail="exit code 5"), None),
    (ObservedFailure(), None),
])
def test_effective_exit_code_prefers_the_raw_code_then_reads_the_message(failure, code):
    assert failure.effective_exit_code() == code


def test_failure_text_joins_message_and_log_tail():
    assert ObservedFailure(message="a", log_tail="b").text == "a\nb"
    assert ObservedFailure(log_tail="b").text == "b"
    assert ObservedFailure(message="a").text == "a"


def test_log_tail_alone_is_classified():
    assert classify(ObservedFailure(log_tail="NCCL error: unhandled system error")) == FailureReason.INFRASTRUCTURE


def test_missing_workload_module_is_a_user_error():
    message = ("Job entrypoint command failed with exit code 1, last available logs:\n"
               "/venv/bin/python: No module named kubeforge_workloads.nope")
    assert classify(ObservedFailure(message=message)) == FailureReason.USER_ERROR


def test_summarize_keeps_first_and_last_lines():
    from kubeforge.controllers.batch import summarize

    text = "failed with exit code 1, logs:\n" + "\n".join(f"line {i}" for i in range(50))
    assert summarize(text) == "failed with exit code 1, logs: | ... | line 47 | line 48 | line 49"


def test_watchdog_memory_in_the_attempt_record_follows_what_the_job_does():
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    hang, limit, attempt = timedelta(seconds=30), timedelta(minutes=5), {"number": 1}
    waiting = watch(attempt, Activity.STARTING, None, start, hang, limit)
    assert attempt == {"number": 1, "waitingSince": "2026-01-01T00:00:00Z"}
    assert waiting.since == "2026-01-01T00:00:00Z" and waiting.recheck_after == 300

    running = watch(attempt, Activity.RUNNING, None, start + timedelta(seconds=10), hang, limit)
    assert attempt == {"number": 1, "progressMark": "none", "progressTime": "2026-01-01T00:00:10Z"}
    assert running.since == "2026-01-01T00:00:10Z" and running.recheck_after == 30
    hung = watch(attempt, Activity.RUNNING, None, start + timedelta(seconds=41), hang, limit)
    assert hung.stuck == Stuck.HANG and hung.recheck_after == 0

    watch(attempt, Activity.STARTING, None, start + timedelta(seconds=50), hang, limit)  # e.g. the job restarted
    assert attempt == {"number": 1, "waitingSince": "2026-01-01T00:00:50Z"}
    late = watch(attempt, Activity.STARTING, None, start + timedelta(seconds=351), hang, limit)
    assert late.stuck == Stuck.START_TIMEOUT and late.since == "2026-01-01T00:00:50Z" and late.recheck_after == 0

    watch(attempt, Activity.RUNNING, "Training step 3", start + timedelta(seconds=360), hang, limit)
    assert watch(attempt, Activity.SUSPENDED, None, start + timedelta(seconds=999), hang, limit) == \
        Watch(None, None, None)
    assert attempt == {"number": 1}
