"""Hang detection: a heartbeat older than the hang timeout means the attempt is stuck."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Optional

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> timedelta:
    """Parse Go-style durations as the CRD pattern admits them: 90s, 10m, 1h30m, 500ms."""
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r}: use forms like 90s, 10m or 1h30m")
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def heartbeat_is_stale(now: datetime, attempt_started: datetime, last_heartbeat: Optional[datetime],
                       timeout: timedelta) -> bool:
    """True when neither the attempt start nor its latest heartbeat is within `timeout` of now."""
    latest = max(t for t in (attempt_started, last_heartbeat) if t is not None)
    return now - latest > timeout
