"""Kinds whose controller has not landed yet: say so in status instead of silently ignoring them."""

from __future__ import annotations

from datetime import datetime

from kubeforge.api.status import Phase
from kubeforge.timefmt import rfc3339
from kubeforge.controllers.conditions import set_kstatus

REASON = "ControllerNotAvailable"


def unsupported_status(obj: dict, now: datetime) -> dict:
    status = {k: v for k, v in (obj.get("status") or {}).items() if k != "kopf"}
    generation = obj["metadata"].get("generation")
    message = (f"this Kubeforge version has no controller for {obj['kind']} yet; "
               "the resource is stored unchanged and nothing was started")
    status.update(phase=Phase.PENDING.value, observedGeneration=generation, message=message)
    status["conditions"] = set_kstatus(status.get("conditions") or [], ready=False, reconciling=False, stalled=True,
                                       reason=REASON, message=message, generation=generation, now=rfc3339(now))
    return status
