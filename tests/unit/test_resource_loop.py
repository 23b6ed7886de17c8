"""The event-driven loop around the pure reconcile: no API reads per pass, status written only on change
(progress at most every progress_write_seconds), the heartbeat read on its own cadence, stale objects refused."""

import asyncio
import copy
import json
from datetime import datetime, timedelta, timezone

import pytest

from kubeforge.controllers.errors import ChildNameTaken, Conflict
from kubeforge.controllers.finetune import FineTuneKind
from kubeforge.controllers.loop import Cache, Clock, ResourceLoop
from kubeforge.settings import Settings
from kubeforge.storage.layout import ResourcePrefix
from tests.unit.test_batch_reconcile import OBJ

START = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
SETTINGS = Settings(bucket="kubeforge", reconcile_period_seconds=60, heartbeat_poll_seconds=30,
                    progress_write_seconds=30, startup_jitter_seconds=0)
LAYOUT = ResourcePrefix.for_resource("kubeforge", "team", "FineTune", "ft", None)
RUNNING = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}


class Server:
    """The API server as the loop sees it: status writes with a resourceVersion precondition, children."""

    def __init__(self, obj):
        self.obj = copy.deepcopy(obj)
        self.obj["metadata"]["resourceVersion"] = "1"
        self.status_writes, self.created, self.deleted = [], [], []
        self.reads = 0
        self.taken = False

    def patch_status(self, plural, namespace, name, patch, resource_version):
        if resource_version != self.obj["metadata"]["resourceVersion"]:
            raise Conflict(f"{name} changed")
        self.status_writes.append(patch)
        self.obj["status"] = _apply(self.obj.get("status") or {}, patch)
        self.bump()
        return copy.deepcopy(self.obj)

    def bump(self):
        self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)

    def create_rayjob(self, body):
        if self.taken:
            raise ChildNameTaken("RayJob team/ft-1 belongs to another owner")
        self.created.append(body["metadata"]["name"])

    def delete_rayjob(self, namespace, name):
        self.deleted.append(name)

    def get_object(self, plural, namespace, name):
        self.reads += 1
        return copy.deepcopy(self.obj)


def _apply(target, patch):
    """RFC 7386, as the API server applies a merge patch."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            result[key] = _apply(result.get(key) if isinstance(result.get(key), dict) else {}, value)
        else:
            result[key] = value
    return result


class Store:
    def __init__(self):
        self.objects, self.reads = {}, []

    def get(self, bucket, key):
        self.reads.append(key)
        return self.objects.get(key)


class Harness:
    def __init__(self, obj=OBJ):
        self.server, self.store, self.events, self.clock = Server(obj), Store(), [], {"t": 1000.0}
        self.children: dict[str, dict] = {}
        self.loop = ResourceLoop(
            kind=FineTuneKind(), settings=SETTINGS, writer=self.server, store=self.store,
            cache=Cache(children=lambda uid: dict(self.children), resource=lambda ns, kind, name: None),
            clock=Clock(now=lambda: START + timedelta(seconds=self.clock["t"] - 1000.0),
                        monotonic=lambda: self.clock["t"]),
            post_event=lambda event: self.events.append(event.reason))
        self.watched = copy.deepcopy(self.server.obj)
        """What the watch has delivered so far (lags behind the server until `deliver`)."""

    def deliver(self):
        self.watched = copy.deepcopy(self.server.obj)

    def step(self, advance: float = 0):
        self.clock["t"] += advance
        return asyncio.run(self.loop.step(copy.deepcopy(self.watched)))

    def child(self, status, name="ft-1"):
        self.children[name] = {"metadata": {"name": name}, "status": status}

    def heartbeat(self, step, attempt=1):
        self.store.objects[LAYOUT.progress_key] = json.dumps({
            "attempt": attempt, "phase": "Training", "step": step, "totalSteps": 100,
            "updatedAt": (START + timedelta(seconds=self.clock["t"] - 1000.0)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }).encode()


def test_the_attempt_is_recorded_then_its_child_created_once_before_the_watch_catches_up():
    h = Harness()
    assert h.step() == 0  # recorded; the next pass is due at once
    assert h.server.status_writes[0]["attempts"][0]["rayJob"] == "ft-1" and h.server.created == []
    h.step()  # the watch has not delivered the write yet: the loop works on what it wrote
    assert h.server.created == ["ft-1"]
    h.step()  # nor the child yet: it is not created twice
    assert h.server.created == ["ft-1"]


def test_a_pass_on_an_object_changed_meanwhile_is_refused_and_redone_on_a_fresh_read():
    h = Harness()
    h.step()  # attempt recorded
    h.child(RUNNING)
    h.server.bump()  # someone else wrote (a label, kopf's finalizer) after our write; the watch lags behind
    delay = asyncio.run(h.loop.step_safely(copy.deepcopy(h.watched)))  # Launching -> Running, on a stale object
    assert delay == 0 and h.server.reads == 1 and len(h.server.status_writes) == 1  # refused, re-read once
    h.step()  # the watch still shows the stale object: the pass works on what it read
    assert h.server.obj["status"]["phase"] == "Running" and h.server.created == []


def test_while_nothing_changes_a_pass_writes_nothing_and_reads_the_heartbeat_only_when_due():
    h = Harness()
    h.step(), h.step()
    h.child(RUNNING)
    h.heartbeat(5)
    h.step(1)
    writes, reads = len(h.server.status_writes), len(h.store.reads)
    for _ in range(14):
        h.step(1)  # woken 14 times in 14 s (say, by other events): same heartbeat, nothing to write
    assert len(h.server.status_writes) == writes
    assert len(h.store.reads) == reads  # hangTimeout 60 s: the heartbeat is read every 15 s
    h.step(1)
    assert len(h.store.reads) == reads + 1


def test_progress_alone_is_written_at_most_every_progress_write_seconds_and_a_phase_change_at_once():
    h = Harness()
    h.step(), h.step()
    h.child(RUNNING)
    h.heartbeat(1)
    h.step(1)
    assert h.server.obj["status"]["progress"]["step"] == 1
    writes = len(h.server.status_writes)
    h.heartbeat(2)
    h.step(30)  # the heartbeat moved and the last write was 30 s ago: due
    assert len(h.server.status_writes) == writes + 1 and h.server.obj["status"]["progress"]["step"] == 2
    h.heartbeat(3)
    h.step(30)
    assert h.server.obj["status"]["progress"]["step"] == 3
    writes = len(h.server.status_writes)
    h.heartbeat(4)
    h.loop.heartbeat.read_at = -1e9  # force a read 1 s after the last write
    assert h.step(1) <= 29 and len(h.server.status_writes) == writes  # deferred...
    h.step(29)
    assert len(h.server.status_writes) == writes + 1  # ...not dropped: written when the interval ends
    assert h.server.obj["status"]["progress"]["step"] == 4
    h.heartbeat(5)
    h.loop.heartbeat.read_at = -1e9
    h.step(1)
    h.child({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "message": "NodeLost"})
    h.step(1)  # a phase change goes out at once, with the deferred progress
    assert h.server.obj["status"]["phase"] == "Retrying" and h.server.obj["status"]["progress"]["step"] == 5


@pytest.mark.parametrize("job_status", [{"jobDeploymentStatus": "Failed", "jobStatus": "FAILED"},
                                        {"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}])
def test_the_failure_report_read_is_the_current_attempts(job_status):
    obj = copy.deepcopy(OBJ)
    obj["status"] = {"phase": "Running", "attempts": [
        {"number": n, "rayJob": f"ft-{n}", "outcome": "Failed" if n < 3 else "Running"} for n in (1, 2, 3)]}
    h = Harness(obj)
    for n, message in ((1, "first"), (3, "third")):
        h.store.objects[LAYOUT.failure_key(n)] = json.dumps(
            {"attempt": n, "exitCode": 69, "reason": "NodeCheckFailed", "message": message}).encode()
    h.child(job_status, name="ft-3")
    h.step()
    assert h.server.obj["status"]["attempts"][2]["message"] == "third"
    assert LAYOUT.failure_key(3) in h.store.reads and LAYOUT.failure_key(1) not in h.store.reads


def test_a_running_attempt_reads_no_failure_report_or_result():
    h = Harness()
    h.step(), h.step()
    h.child(RUNNING)
    h.step(1)
    assert h.store.reads == [LAYOUT.progress_key]


def test_a_name_held_by_another_owner_is_retried_soon_with_a_warning():
    h = Harness()
    h.step()
    h.server.taken = True
    assert h.step() == 2.0
    assert h.server.created == [] and "ChildNameTaken" in h.events
    h.server.taken = False
    h.step(2)
    assert h.server.created == ["ft-1"]


def test_a_backoff_is_the_next_due_pass():
    h = Harness()
    h.step(), h.step()
    h.child({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "message": "NodeLost"})
    assert h.step(5) == 10  # OBJ's backoff starts at 10 s
    assert h.step(4) == pytest.approx(6)
    h.step(6)
    assert h.server.obj["status"]["attempts"][1]["rayJob"] == "ft-2"


def test_a_finished_resource_sleeps_until_changed():
    obj = copy.deepcopy(OBJ)
    obj["status"] = {"phase": "Succeeded", "observedGeneration": 1, "conditions": []}
    h = Harness(obj)
    assert h.step(100) is None and h.server.status_writes == [] and h.store.reads == []
    h.server.obj["metadata"]["generation"] = 2  # edited: the new generation is acknowledged once
    h.deliver()
    h.step()
    assert h.server.obj["status"]["observedGeneration"] == 2
    h.deliver()
    assert h.step(100) is None and len(h.server.status_writes) == 1


def test_a_stop_signalled_by_the_passs_own_status_write_lets_the_pass_finish_its_deletes():
    # kopf signals `stopped` when the written status no longer needs observing; the RayJob this pass stops
    # must still be deleted, not left queued for a GPU
    h = Harness()
    h.step()
    h.deliver()
    h.step()
    h.child({"jobDeploymentStatus": "Initializing"})
    h.deliver()
    h.step()  # waiting for resources since now
    h.clock["t"] += 24 * 3600  # far past startTimeout

    async def scenario():
        stopped = asyncio.Event()
        write = h.server.patch_status

        def write_then_signal(*args):
            stored = write(*args)
            stopped.set()
            return stored

        h.server.patch_status = write_then_signal
        await asyncio.wait_for(h.loop.run(copy.deepcopy(h.server.obj), stopped, asyncio.Event()), timeout=5)

    asyncio.run(scenario())
    assert h.server.deleted == ["ft-1"]
    assert h.server.obj["status"]["attempts"][0]["reason"] == "StartTimeout"
