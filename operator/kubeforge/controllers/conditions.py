"""kstatus conditions: set one, keeping lastTransitionTime unless the status flips."""

from __future__ import annotations

from typing import Optional

from kubeforge.api.status import ConditionType


def set_condition(conditions: list[dict], type_: str, status: bool | str, reason: str, message: str,
                  generation: Optional[int], now: str) -> list[dict]:
    value = status if isinstance(status, str) else ("True" if status else "False")
    previous = next((c for c in conditions if c.get("type") == type_), None)
    transition = now if previous is None or previous.get("status") != value else previous.get("lastTransitionTime", now)
    condition = {"type": type_, "status": value, "reason": reason, "message": message,
                 "lastTransitionTime": transition, "observedGeneration": generation}
    others = [c for c in conditions if c.get("type") != type_]
    return sorted([*others, condition], key=lambda c: _ORDER.get(c["type"], 99))


_ORDER = {ConditionType.READY.value: 0, ConditionType.RECONCILING.value: 1, ConditionType.STALLED.value: 2}


def set_kstatus(conditions: list[dict], *, ready: bool, reconciling: bool, stalled: bool, reason: str,
                message: str, generation: Optional[int], now: str) -> list[dict]:
    """Set Ready/Reconciling/Stalled together, as kstatus readers expect them consistent."""
    for type_, value in ((ConditionType.READY, ready), (ConditionType.RECONCILING, reconciling),
                         (ConditionType.STALLED, stalled)):
        conditions = set_condition(conditions, type_.value, value, reason, message if value or type_ == ConditionType.READY else "",
                                   generation, now)
    return conditions


def condition_status(obj: Optional[dict], type_: str) -> Optional[str]:
    for condition in ((obj or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return condition.get("status")
    return None
