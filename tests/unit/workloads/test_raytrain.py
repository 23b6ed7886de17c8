"""The shared Ray Train driver's decisions that need no cluster: how many in-job restarts, which failures a
restarted worker group replays at once instead of re-running, how a restarted group says so, and the driver's
heartbeat hand-over."""

from __future__ import annotations

import pytest

from kubeforge.storage.progress import Progress
from kubeforge_workloads.common import raytrain
from kubeforge_workloads.common.errors import DataError, NodeCheckError, UserError
from kubeforge_workloads.common.storage import WorkloadStorage, utcnow
from tests.unit.workloads.conftest import finetune_context


@pytest.fixture
def storage(object_store):
    return WorkloadStorage(finetune_context(attempt=3), object_store)


def test_worker_restarts_default_and_override(monkeypatch):
    monkeypatch.delenv(raytrain.WORKER_RESTARTS_ENV, raising=False)
    assert raytrain.worker_restarts() == raytrain.DEFAULT_WORKER_RESTARTS >= 1
    monkeypatch.setenv(raytrain.WORKER_RESTARTS_ENV, "0")
    assert raytrain.worker_restarts() == 0
    for bad in ("-1", "two"):
        monkeypatch.setenv(raytrain.WORKER_RESTARTS_ENV, bad)
        with pytest.raises(UserError, match=r"KUBEFORGE_WORKER_RESTARTS=.* must be a whole number >= 0"):
            raytrain.worker_restarts()


@pytest.mark.parametrize("error", [UserError("spec.x is wrong"), DataError("train.jsonl: line 3"),
                                   NodeCheckError("no GPU visible")])
def test_a_failure_a_restart_would_repeat_is_recorded_and_replayed_at_once(storage, error):
    with pytest.raises(type(error)):
        with raytrain.unrecoverable_failures_end_the_attempt(storage):
            raise error
    report = storage.read_failure()
    assert (report.attempt, report.exit_code, report.message) == (3, int(error.exit_code), str(error))
    ran = []
    with pytest.raises(type(error), match=str(error)):  # the restarted group: raised before the body runs
        with raytrain.unrecoverable_failures_end_the_attempt(storage):
            ran.append(True)
    assert ran == []


def test_a_worker_crash_is_left_to_the_in_job_restart(storage):
    with pytest.raises(RuntimeError):
        with raytrain.unrecoverable_failures_end_the_attempt(storage):
            raise RuntimeError("Connection closed by peer: a remote worker crashed")
    assert storage.read_failure() is None
    ran = []
    with raytrain.unrecoverable_failures_end_the_attempt(storage):
        ran.append(True)
    assert ran == [True]


def test_another_attempts_failure_is_not_replayed(object_store):
    earlier = WorkloadStorage(finetune_context(attempt=1), object_store)
    earlier.write_failure(64, "UserError", "bad", "")
    with raytrain.unrecoverable_failures_end_the_attempt(WorkloadStorage(finetune_context(attempt=2), object_store)):
        pass


def beat(storage, attempt, phase, step=0):
    storage.write_progress(Progress(attempt=attempt, phase=phase, step=step, updated_at=utcnow()))


def test_a_restarted_worker_group_says_so(storage):
    assert raytrain.resumed_inside_attempt(storage) is None  # nothing yet
    beat(storage, 2, "Training", 9)
    assert raytrain.resumed_inside_attempt(storage) is None  # an earlier attempt's progress
    beat(storage, 3, "Starting")
    assert raytrain.resumed_inside_attempt(storage) is None  # only the driver beat so far
    beat(storage, 3, "Training", 6)
    message = raytrain.resumed_inside_attempt(storage)
    assert message == "worker group restarted inside attempt 3 after a worker failure (was at step 6, phase Training)"


def test_the_driver_stops_beating_once_a_worker_took_over(storage):
    heartbeat = raytrain.driver_heartbeat(storage)
    heartbeat.stop()  # the thread is not needed: the hand-over decision is its keep_going
    assert storage.read_progress().phase == "Starting"
    assert heartbeat.keep_going()
    beat(storage, 3, "NodeCheck")
    assert not heartbeat.keep_going()
    beat(storage, 3, "Starting")  # e.g. a stale write: once handed over, the driver never beats again
    assert not heartbeat.keep_going()
