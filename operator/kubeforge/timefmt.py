"""RFC 3339 times as Kubernetes writes them in status (seconds, UTC, `Z`)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Optional[str]) -> Optional[datetime]:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
