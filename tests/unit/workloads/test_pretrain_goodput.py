"""Goodput: productive step seconds over wall seconds since the first attempt, where a step trained again after a
resume counts once (its lost first run not at all), and each resume records the steps it lost and how long it
took to get back to training."""

from __future__ import annotations

import pytest

from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext
from kubeforge_workloads.common.storage import WorkloadStorage
from kubeforge_workloads.pretrain.goodput import LEDGER_FILE, GoodputMeter, record_first_start
from tests.unit.workloads.conftest import BUCKET


class FakeClock:
    def __init__(self, start: float = 1000.0, tick: float = 0.0):
        self.now, self.tick = start, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def storage_of(store, attempt: int, uid: str = "uid-tj") -> WorkloadStorage:
    context = WorkloadContext(kind="TrainingJob", namespace="ns", name="tj", uid=uid, generation=1, attempt=attempt,
                              spec={}, storage=StorageContext(bucket=BUCKET, prefix="ns/TrainingJob/tj"),
                              mlflow=MlflowContext(experiment="e", run_name="tj"))
    return WorkloadStorage(context, store)


def train(meter: GoodputMeter, clock: FakeClock, steps: range, seconds: float = 10.0) -> None:
    for step in steps:
        clock.now += seconds
        meter.step_finished(step, seconds)


def test_steps_trained_again_after_a_resume_count_once(object_store):
    clock = FakeClock()
    first = GoodputMeter(storage_of(object_store, 1), now=clock)  # the resource starts at t=1000
    train(first, clock, range(1, 5))
    at_checkpoint_4 = first.state()
    train(first, clock, range(5, 7))  # steps 5 and 6 are lost with the worker group
    first.close()
    assert first.report().productive_seconds == 60.0

    clock.now += 30.0  # failure detected, backoff, new attempt, restore
    second = GoodputMeter(storage_of(object_store, 2), now=clock)
    second.resumed(4, at_checkpoint_4["productiveSeconds"])
    train(second, clock, range(5, 9))
    second.close()
    report = second.report()
    assert report.productive_seconds == 80.0  # 8 steps of 10 s: the lost runs of steps 5 and 6 do not count
    assert report.wall_seconds == 6 * 10 + 30 + 4 * 10
    assert report.ratio == round(80 / 130, 4)
    [recovery] = report.recoveries
    assert (recovery.attempt, recovery.resumed_at_step, recovery.steps_lost) == (2, 4, 2)
    assert recovery.recovery_seconds == 30 + 10  # from the last recorded step to the first step after resume
    # the ledger a later attempt starts from holds the recovery too
    ledger = storage_of(object_store, 3).get_json(LEDGER_FILE)
    assert ledger["recoveries"] == [recovery.model_dump(by_alias=True)] and ledger["lastStep"] == 8


def test_a_killed_group_loses_exactly_the_steps_it_trained_past_the_checkpoint(object_store):
    """No close(): the worker group is killed. Every step's ledger update goes up (in the background; flush()
    stands for the milliseconds a write takes against a step's seconds), so the next attempt sees the exact last
    step and its time, not a sample taken seconds earlier."""
    clock = FakeClock()
    first = GoodputMeter(storage_of(object_store, 1), now=clock)
    train(first, clock, range(1, 8), seconds=0.5)  # checkpoint at step 4; steps 5, 6 and 7 are lost
    first.flush()
    killed_after_step_7 = clock.now
    clock.now += 12.0
    second = GoodputMeter(storage_of(object_store, 2), now=clock)
    second.resumed(4, 2.0)
    train(second, clock, range(5, 6), seconds=0.5)
    second.close()
    [recovery] = second.report().recoveries
    assert (recovery.resumed_at_step, recovery.steps_lost) == (4, 3)
    assert recovery.recovery_seconds == round(clock.now - killed_after_step_7, 3) == 12.5


def test_a_resume_with_no_step_left_still_records_its_recovery(object_store):
    clock = FakeClock()
    first = GoodputMeter(storage_of(object_store, 1), now=clock)
    train(first, clock, range(1, 5))
    first.close()  # killed after its last checkpoint (step 4 of 4), before it published
    clock.now += 20.0
    second = GoodputMeter(storage_of(object_store, 2), now=clock)
    second.resumed(4, 40.0)
    second.close()
    [recovery] = second.report().recoveries
    assert (recovery.steps_lost, recovery.recovery_seconds) == (0, 20.0)


def test_a_new_resource_of_the_same_name_starts_its_own_clock(object_store):
    clock = FakeClock()
    assert record_first_start(storage_of(object_store, 1), clock)["startedAt"] == 1000.0
    clock.now = 2000.0
    assert record_first_start(storage_of(object_store, 2), clock)["startedAt"] == 1000.0  # a later attempt
    assert record_first_start(storage_of(object_store, 1, uid="other"), clock)["startedAt"] == 2000.0


def test_the_heartbeat_carries_goodput_and_older_heartbeats_still_parse(object_store):
    from kubeforge.storage.progress import Progress
    from kubeforge_workloads.common.heartbeat import Heartbeat

    storage = storage_of(object_store, 1)
    meter = GoodputMeter(storage, now=FakeClock(tick=1.0))
    meter.step_finished(1, 0.5)
    heartbeat = Heartbeat(storage.write_progress, attempt=1)
    heartbeat.update(phase="Training", step=1, goodput=meter.report())
    heartbeat.beat()
    written = storage.read_progress()
    assert written.goodput == meter.report().model_copy(update={"wall_seconds": written.goodput.wall_seconds,
                                                                "ratio": written.goodput.ratio})
    assert written.goodput.productive_seconds == 0.5
    old = Progress.model_validate_json('{"attempt": 1, "phase": "Training", "step": 3, "updatedAt": "t"}')
    assert old.goodput is None and "goodput" not in old.to_json()


pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.unit.workloads.test_pretrain_loop import Killed, run, seeded  # noqa: E402,F401
from kubeforge_workloads.pretrain.train import Pretraining  # noqa: E402


class TimedByTicks(Pretraining):
    """Every clock reading advances one second: each step measures exactly 1 s, whatever the machine does."""
    clock = staticmethod(FakeClock(tick=1.0))
    kill_after = 0

    def step_finished(self, done: int, seconds: float, tokens: int) -> None:
        super().step_finished(done, seconds, tokens)
        if done == self.kill_after:  # killed between checkpoints: the steps since the last one are lost
            self.checkpointer.wait()
            self.goodput.close()
            raise Killed()


def test_the_training_loop_counts_only_the_steps_the_model_is_built_from(seeded, tracking_uri):
    # 8 steps, checkpoints every 2; killed after step 5, so attempt 2 resumes from step 4 and trains 5 again
    with pytest.raises(Killed):
        run("goodput", 1, seeded, tracking_uri, TimedByTicks, kill_after=5)
    resumed = run("goodput", 2, seeded, tracking_uri, TimedByTicks, kill_after=0)
    goodput = resumed.storage.get_json("result.json")["goodput"]
    assert goodput["productiveSeconds"] == 8.0  # 9 steps trained, step 5 twice: its lost run is not productive
    assert goodput["recoveries"] == [{"attempt": 2, "resumedAtStep": 4, "stepsLost": 1,
                                      "recoverySeconds": goodput["recoveries"][0]["recoverySeconds"]}]
    assert 0 < goodput["ratio"] == round(8.0 / goodput["wallSeconds"], 4) < 1
