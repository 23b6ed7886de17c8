"""Goodput: productive training seconds / wall seconds since the resource's first attempt started.

Productive seconds are the step times of the steps the final model is built from. They travel inside every
checkpoint (GOODPUT_STATE_FILE, rank 0's), so a resumed run starts from the checkpoint's sum: the steps a failed
worker group trained past its last checkpoint are trained again and only their second run counts. Checkpoint
stalls and everything outside the step loop (start-up, restore, retries) are wall time only.

The ledger (LEDGER_FILE under the resource's prefix, written by rank 0) survives the attempts: when the resource
was first started, the last step trained and when it finished, and one Recovery per resume: the steps lost and
the seconds from the failed group's last step to the first step finished after the resume. Every step's update
goes up in the background (the step loop never waits on the object store for it), coalesced: while a write is
in flight the newest state waits for it, so a kill loses at most the step of the write in flight, not the
seconds of a sampling interval (which would under-count the steps lost and over-count the recovery).
"""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional

from kubeforge.api.goodput import Goodput, Recovery
from kubeforge_workloads.common.storage import WorkloadStorage

LEDGER_FILE = "goodput.json"
GOODPUT_STATE_FILE = "goodput_state.json"


def record_first_start(storage: WorkloadStorage, now: Callable[[], float] = time.time) -> dict:
    """The resource's ledger, created with startedAt = now if this resource (uid) has none yet."""
    ledger = storage.get_json(LEDGER_FILE)
    if not ledger or ledger.get("uid") != storage.context.uid:
        ledger = {"uid": storage.context.uid, "startedAt": now(), "recoveries": []}
        storage.put_json(ledger, LEDGER_FILE)
    return ledger


class GoodputMeter:
    """On rank 0: step_finished() after every optimizer step, resumed() after a restore, report() any time."""

    def __init__(self, storage: WorkloadStorage, now: Callable[[], float] = time.time):
        self.storage, self.now = storage, now
        self.ledger = record_first_start(storage, now)
        self.productive_seconds = 0.0
        self._open_recovery: Optional[tuple[Recovery, float]] = None
        self._lock = threading.Lock()
        self._pending: Optional[dict] = None  # the newest ledger not yet handed to a write
        self._writing = False
        self._writer: Optional[ThreadPoolExecutor] = None
        self._in_flight: Optional[Future] = None

    def resumed(self, step: int, productive_seconds: float) -> None:
        """Restored a checkpoint of `step` whose steps took productive_seconds. If an earlier worker group trained
        past it, that is a failure to account for; its recovery ends with the next finished step."""
        self.productive_seconds = productive_seconds
        last_step, last_at = self.ledger.get("lastStep"), self.ledger.get("lastStepAt")
        if last_step is None or last_at is None:
            return
        recovery = Recovery(attempt=self.storage.context.attempt, resumed_at_step=step,
                            steps_lost=max(0, int(last_step) - step))
        self._open_recovery = (recovery, float(last_at))

    def step_finished(self, step: int, seconds: float) -> None:
        self.productive_seconds += seconds
        now = self.now()
        self.ledger.update(lastStep=step, lastStepAt=now)
        if self._open_recovery is not None:
            self._close_recovery(*self._open_recovery, now)
        self._write()

    def _close_recovery(self, recovery: Recovery, failed_at: float, now: float) -> None:
        recovery.recovery_seconds = round(now - failed_at, 3)
        self.ledger["recoveries"] = [*self.ledger.get("recoveries", []), recovery.model_dump(by_alias=True)]
        self._open_recovery = None

    def state(self) -> dict:
        """What a checkpoint of the current step keeps."""
        return {"productiveSeconds": self.productive_seconds}

    def report(self) -> Goodput:
        wall = max(self.now() - float(self.ledger["startedAt"]), 1e-9)
        return Goodput(ratio=round(min(self.productive_seconds / wall, 1.0), 4),
                       productive_seconds=round(self.productive_seconds, 3), wall_seconds=round(wall, 3),
                       recoveries=[Recovery.model_validate(r) for r in self.ledger.get("recoveries", [])])

    def close(self) -> None:
        """At the end of the run: a resume that had no step left to train ends its recovery here."""
        if self._open_recovery is not None:
            recovery, failed_at = self._open_recovery
            self._close_recovery(recovery, failed_at, self.now())
        self._write()
        self.flush()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None

    def flush(self) -> None:
        """Wait until the newest state is in the object store (a failed write is printed: it costs accuracy,
        never the training)."""
        in_flight = self._in_flight
        if in_flight is not None:
            in_flight.result()

    def _write(self) -> None:
        """Hand the ledger as it is now to the background writer: written next, or right after the write in
        flight (only the newest state waiting is kept)."""
        with self._lock:
            self._pending = copy.deepcopy(self.ledger)
            if self._writing:
                return
            self._writing = True
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubeforge-goodput")
        self._in_flight = self._writer.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                snapshot, self._pending = self._pending, None
                if snapshot is None:
                    self._writing = False
                    return
            try:
                self.storage.put_json(snapshot, LEDGER_FILE)
            except Exception as error:  # a missed ledger write costs accuracy, not the training
                print(f"kubeforge: goodput ledger write failed: {error}", flush=True)
