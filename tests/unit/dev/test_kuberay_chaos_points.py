"""The workload's chaos point: a stalled training loop keeps its process and heartbeat thread alive (the GIL is
free while it waits), and only the step stops advancing; the memory point allocates towards the named size."""

import threading
import time

from kubeforge_workloads.common import chaos
from kubeforge_workloads.common.heartbeat import Heartbeat


def test_no_env_is_a_no_op(monkeypatch):
    monkeypatch.delenv(chaos.STALL_FILE_ENV, raising=False)
    monkeypatch.delenv(chaos.MEMORY_FILE_ENV, raising=False)
    started = time.monotonic()
    for _ in range(10000):
        chaos.stall_point()
    assert time.monotonic() - started < 0.5


def test_stalled_loop_keeps_beating_with_the_same_step(tmp_path, monkeypatch):
    stall = tmp_path / "job.stall"
    monkeypatch.setenv(chaos.STALL_FILE_ENV, str(stall))
    beats = []
    heartbeat = Heartbeat(lambda progress: beats.append(progress), attempt=1, interval=0.05).start()
    steps = []

    def training_loop():
        for step in range(1, 1000):
            chaos.stall_point(poll_seconds=0.02)
            steps.append(step)
            heartbeat.update(step=step)
            time.sleep(0.005)

    loop = threading.Thread(target=training_loop, daemon=True)
    try:
        loop.start()
        time.sleep(0.1)
        stall.touch()
        time.sleep(0.1)  # the loop reaches its next chaos point
        stalled_at, beats_before = len(steps), len(beats)
        time.sleep(0.5)
        assert len(steps) == stalled_at and loop.is_alive()
        recent = beats[beats_before:]
        assert len(recent) >= 5  # the heartbeat thread keeps writing ...
        assert {b.step for b in recent} == {stalled_at}  # ... the same step
        assert recent[-1].updated_at > recent[0].updated_at
        stall.unlink()
        time.sleep(0.2)
        assert len(steps) > stalled_at  # resumed
    finally:
        heartbeat.stop()
        stall.unlink(missing_ok=True)
        loop.join(timeout=10)


def test_memory_point_allocates_towards_the_named_size(tmp_path, monkeypatch):
    memory = tmp_path / "job.memory"
    memory.write_text(str(3 * chaos.ALLOCATION_CHUNK_BYTES))
    monkeypatch.setenv(chaos.MEMORY_FILE_ENV, str(memory))
    monkeypatch.setattr(chaos, "_held", [])
    chaos.stall_point()
    assert sum(len(c) for c in chaos._held) == 3 * chaos.ALLOCATION_CHUNK_BYTES


def test_the_manifest_delay_holds_back_only_the_listed_steps(monkeypatch):
    monkeypatch.setenv(chaos.MANIFEST_DELAY_ENV, "10")
    monkeypatch.delenv(chaos.MANIFEST_DELAY_STEPS_ENV, raising=False)
    assert [chaos.manifest_delay_seconds(step) for step in (4, 8, 12)] == [10.0, 10.0, 10.0]  # every step
    monkeypatch.setenv(chaos.MANIFEST_DELAY_STEPS_ENV, "12, 20")
    assert [chaos.manifest_delay_seconds(step) for step in (4, 8, 12, 16, 20)] == [0.0, 0.0, 10.0, 0.0, 10.0]
    monkeypatch.delenv(chaos.MANIFEST_DELAY_ENV)
    assert chaos.manifest_delay_seconds(12) == 0.0  # no delay set: none, whatever the steps
