"""Chaos points in the training loop, driven by files the local KubeRay names in the job's env (kubeforge dev chaos).

`stall_point()` is called once per optimizer step. While the stall file exists it blocks in `time.sleep`, which
releases the GIL as a rank blocked in an NCCL/gloo collective does: the process and its heartbeat thread keep
running, only the step stops advancing. While the memory file names a number of bytes, it allocates (and touches)
memory towards that size, so the container's memory limit, enforced outside the process, decides what happens.
Without the env vars (any real cluster) both checks are a dictionary lookup.
"""

from __future__ import annotations

import os
import time

STALL_FILE_ENV = "KUBEFORGE_CHAOS_STALL_FILE"
MEMORY_FILE_ENV = "KUBEFORGE_CHAOS_MEMORY_FILE"
MANIFEST_DELAY_ENV = "KUBEFORGE_CHAOS_MANIFEST_DELAY_SECONDS"
MANIFEST_DELAY_STEPS_ENV = "KUBEFORGE_CHAOS_MANIFEST_DELAY_STEPS"
POLL_SECONDS = 0.2
ALLOCATION_CHUNK_BYTES = 64 * 2**20

_held: list[bytearray] = []


def stall_point(poll_seconds: float = POLL_SECONDS) -> None:
    stall_file = os.environ.get(STALL_FILE_ENV)
    if stall_file:
        while os.path.exists(stall_file):
            time.sleep(poll_seconds)
    memory_file = os.environ.get(MEMORY_FILE_ENV)
    if memory_file and os.path.exists(memory_file):
        _grow_to(memory_file)


def manifest_delay_seconds(step: int) -> float:
    """How long a checkpoint's manifest is held back once its files are up (the torn window a kill can land in):
    KUBEFORGE_CHAOS_MANIFEST_DELAY_SECONDS, for the steps KUBEFORGE_CHAOS_MANIFEST_DELAY_STEPS lists (comma-separated;
    every step when it is unset)."""
    delay = float(os.environ.get(MANIFEST_DELAY_ENV) or 0)
    steps = os.environ.get(MANIFEST_DELAY_STEPS_ENV)
    if delay and steps and step not in {int(listed) for listed in steps.split(",") if listed.strip()}:
        return 0.0
    return delay


def _grow_to(memory_file: str) -> None:
    try:
        target = int(open(memory_file).read().strip() or 0)
    except (OSError, ValueError):
        return
    # Grow gradually, as a leaking loop does, so a memory monitor sampling every second sees the limit crossed.
    while sum(len(chunk) for chunk in _held) < target and os.path.exists(memory_file):
        _held.append(bytearray(b"\x01" * ALLOCATION_CHUNK_BYTES))
        time.sleep(0.1)
