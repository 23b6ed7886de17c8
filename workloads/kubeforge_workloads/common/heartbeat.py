"""The progress heartbeat: a thread in the training process rewrites progress.json every few seconds.

A thread in the same process is deliberate: if the process is stuck or SIGSTOPped, the heartbeat stops
too, and the operator's hang detection sees it.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from kubeforge.storage.progress import Progress
from kubeforge_workloads.common.storage import utcnow

INTERVAL_SECONDS = 2.0


class Heartbeat:
    def __init__(self, write: Callable[[Progress], None], attempt: int, interval: float = INTERVAL_SECONDS,
                 keep_going: Optional[Callable[[], bool]] = None):
        self.write, self.interval, self.keep_going = write, interval, keep_going
        self.fields: dict = {"attempt": attempt, "phase": "Starting", "step": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubeforge-heartbeat", daemon=True)

    def update(self, **fields) -> None:
        with self._lock:
            self.fields.update({k: v for k, v in fields.items() if v is not None})

    def beat(self) -> None:
        with self._lock:
            progress = Progress(**self.fields, updated_at=utcnow())
        try:
            self.write(progress)
        except Exception as error:  # a missed heartbeat is not a training failure
            print(f"kubeforge: heartbeat write failed: {error}")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.keep_going is not None and not self.keep_going():
                return
            self.beat()

    def start(self) -> "Heartbeat":
        self.beat()
        self._thread.start()
        return self

    def stop(self, final_phase: Optional[str] = None) -> None:
        self._stop.set()
        if final_phase:
            self.update(phase=final_phase)
            self.beat()
