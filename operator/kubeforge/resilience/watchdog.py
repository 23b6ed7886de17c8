"""Start and hang detection for a running attempt, from what its RayJob is doing and whether it progresses.

Only a job whose Ray job is RUNNING can hang, and it hangs when its *progress* (the workload's phase and step
counter) stops changing, not when its heartbeat stops: a rank blocked in a collective waiting for a dead peer
releases the GIL, so a heartbeat thread keeps beating while the step stands still. Time before the Ray job
runs (cluster initializing, pods queued for GPUs) has its own limit; a suspended job waits without one.

The watchdog's memory lives in the attempt record (status.attempts[-1]), so a restarted operator carries on:
`waitingSince` (start of the current wait to run), `progressMark` (the phase and step last seen) and
`progressTime` (when the operator first saw that mark).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Optional

import durationpy

from kubeforge.api.shared import DURATION_PATTERN
from kubeforge.timefmt import parse_time, rfc3339

SUSPENDED_DEPLOYMENTS = frozenset({"Suspended", "Suspending"})


def parse_duration(text: str) -> timedelta:
    """Parse Go-style durations as the CRD pattern admits them: 90s, 10m, 1h30m, 500ms."""
    # durationpy also takes days, weeks and a bare "0", which the CRD refuses: the pattern decides what is valid.
    try:
        if re.fullmatch(DURATION_PATTERN, text):
            return durationpy.from_str(text)
    except durationpy.DurationError:
        pass
    raise ValueError(f"invalid duration {text!r}: use forms like 90s, 10m or 1h30m")


class Activity(str, Enum):
    SUSPENDED = "Suspended"
    STARTING = "Starting"
    RUNNING = "Running"


def activity_of(rayjob_status: dict) -> Activity:
    """What the job is doing, as KubeRay reports it: only jobStatus RUNNING means the workload runs."""
    if rayjob_status.get("jobDeploymentStatus") in SUSPENDED_DEPLOYMENTS:
        return Activity.SUSPENDED
    if rayjob_status.get("jobStatus") == "RUNNING":
        return Activity.RUNNING
    return Activity.STARTING


class Stuck(str, Enum):
    START_TIMEOUT = "StartTimeout"
    HANG = "Hang"


@dataclass(frozen=True)
class Watch:
    stuck: Optional[Stuck]
    """Set when the attempt must be stopped."""
    since: Optional[str]
    """RFC 3339 time the stuck clock started (last progress, or start of the wait)."""
    recheck_after: Optional[float]
    """Seconds until the verdict could change if nothing else happens; None while suspended."""


def watch(attempt: dict, activity: Activity, progress_mark: Optional[str], now: datetime, hang_timeout: timedelta,
          start_timeout: timedelta) -> Watch:
    """Update the watchdog fields of `attempt` in place and say whether it is stuck."""
    if activity == Activity.SUSPENDED:
        for key in ("waitingSince", "progressMark", "progressTime"):
            attempt.pop(key, None)
        return Watch(None, None, None)
    if activity == Activity.STARTING:
        attempt.pop("progressMark", None)
        attempt.pop("progressTime", None)
        return _check(attempt, "waitingSince", now, start_timeout, Stuck.START_TIMEOUT)
    attempt.pop("waitingSince", None)
    mark = progress_mark or "none"
    if attempt.get("progressMark") != mark or not attempt.get("progressTime"):
        attempt["progressMark"] = mark
        attempt["progressTime"] = rfc3339(now)
    return _check(attempt, "progressTime", now, hang_timeout, Stuck.HANG)


def _check(attempt: dict, key: str, now: datetime, timeout: timedelta, stuck: Stuck) -> Watch:
    since = parse_time(attempt.get(key))
    if since is None:
        attempt[key] = rfc3339(now)
        since = parse_time(attempt[key])
    remaining = (since + timeout - now).total_seconds()
    if remaining < 0:
        return Watch(stuck, attempt[key], 0.0)
    return Watch(None, attempt[key], remaining)
