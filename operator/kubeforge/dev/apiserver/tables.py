"""Server-side printing: meta.k8s.io/v1 Table responses from additionalPrinterColumns."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from kubeforge.dev.apiserver.types import ResourceType

_FILTER = re.compile(r'^\[\?\(@\.([\w.]+)\s*==\s*["\']([^"\']*)["\']\)\]')
_INDEX = re.compile(r"^\[(\d+)\]")
_FIELD = re.compile(r"^\.([\w-]+)")


def jsonpath(obj: Any, path: str) -> Any:
    """The subset of JSONPath printer columns use: .a.b, .a[0].b, .a[?(@.type=="Ready")].status."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    current = [obj]
    while path:
        if match := _FIELD.match(path):
            current = [c.get(match.group(1)) for c in current if isinstance(c, dict)]
        elif match := _INDEX.match(path):
            i = int(match.group(1))
            current = [c[i] for c in current if isinstance(c, list) and len(c) > i]
        elif match := _FILTER.match(path):
            key, value = match.groups()
            current = [item for c in current if isinstance(c, list) for item in c
                       if isinstance(item, dict) and str(_dig(item, key)) == value]
        else:
            return None
        path = path[match.end():]
        current = [c for c in current if c is not None]
    return current[0] if len(current) == 1 else (current or None)


def _dig(obj: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def age(timestamp: str | None) -> str:
    """apimachinery's duration.HumanDuration of the time since `timestamp`, as the real server prints Age."""
    if not timestamp:
        return "<unknown>"
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return human_duration(max(int((datetime.now(timezone.utc) - then).total_seconds()), 0))


def human_duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        years = hours // (24 * 365)
        days = (hours % (24 * 365)) // 24
        return f"{years}y{days}d" if days else f"{years}y"
    return f"{hours // (24 * 365)}y"


def _cell(value: Any, column_type: str) -> Any:
    if value is None:
        return None
    if column_type == "date":
        return age(value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, (dict,)):
        return str(value)
    return value


def _event_object(obj: dict) -> str:
    ref = obj.get("involvedObject") or obj.get("regarding") or {}
    return f"{(ref.get('kind') or '').lower()}/{ref.get('name', '')}"


def _last_seen(obj: dict) -> Any:
    when = obj.get("lastTimestamp") or obj.get("deprecatedLastTimestamp") or obj.get("eventTime") \
        or obj["metadata"].get("creationTimestamp")
    return age(when[:19] + "Z") if when else None


def _ready_containers(obj: dict) -> str:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    total = len((obj.get("spec") or {}).get("containers") or [])
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


def _ports(obj: dict) -> str:
    ports = (obj.get("spec") or {}).get("ports") or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


# Built-in columns as kube-apiserver's printers show them (a "fn" computes a cell from the whole object).
_BUILTIN_COLUMNS = {
    ("", "namespaces"): [{"name": "Status", "type": "string", "jsonPath": ".status.phase"}],
    ("", "events"): [{"name": "Last Seen", "type": "string", "fn": _last_seen, "first": True},
                     {"name": "Type", "type": "string", "jsonPath": ".type"},
                     {"name": "Reason", "type": "string", "jsonPath": ".reason"},
                     {"name": "Object", "type": "string", "fn": _event_object},
                     {"name": "Message", "type": "string", "jsonPath": ".message"}],
    ("events.k8s.io", "events"): [{"name": "Last Seen", "type": "string", "fn": _last_seen, "first": True},
                                  {"name": "Type", "type": "string", "jsonPath": ".type"},
                                  {"name": "Reason", "type": "string", "jsonPath": ".reason"},
                                  {"name": "Object", "type": "string", "fn": _event_object},
                                  {"name": "Message", "type": "string", "jsonPath": ".note"}],

    ("", "configmaps"): [{"name": "Data", "type": "integer", "fn": lambda o: len(o.get("data") or {})
                          + len(o.get("binaryData") or {})}],
    ("", "secrets"): [{"name": "Type", "type": "string", "jsonPath": ".type"},
                      {"name": "Data", "type": "integer", "fn": lambda o: len(o.get("data") or {})}],
    ("", "serviceaccounts"): [{"name": "Secrets", "type": "integer", "fn": lambda o: len(o.get("secrets") or [])}],
    ("", "pods"): [{"name": "Ready", "type": "string", "fn": _ready_containers},
                   {"name": "Status", "type": "string", "fn": lambda o: (o.get("status") or {}).get("phase", "Pending")},
                   {"name": "Restarts", "type": "integer", "fn": lambda o: sum(
                       s.get("restartCount", 0) for s in (o.get("status") or {}).get("containerStatuses") or [])}],
    ("", "services"): [{"name": "Type", "type": "string", "fn": lambda o: (o.get("spec") or {}).get("type", "ClusterIP")},
                       {"name": "Cluster-IP", "type": "string",
                        "fn": lambda o: (o.get("spec") or {}).get("clusterIP") or "<none>"},
                       {"name": "External-IP", "type": "string", "fn": lambda o: "<none>"},
                       {"name": "Port(s)", "type": "string", "fn": _ports}],
    ("coordination.k8s.io", "leases"): [{"name": "Holder", "type": "string", "jsonPath": ".spec.holderIdentity"}],
    ("apiextensions.k8s.io", "customresourcedefinitions"): [
        {"name": "Created At", "type": "date", "jsonPath": ".metadata.creationTimestamp", "raw": True}],
}


def columns_for(rtype: ResourceType) -> list[dict]:
    custom = rtype.printer_columns or _BUILTIN_COLUMNS.get(rtype.key, [])
    has_age = any(c["name"].lower() == "age" for c in custom)
    name = {"name": "Name", "type": "string", "format": "name", "jsonPath": ".metadata.name",
            "description": "Name must be unique within a namespace."}
    first = [c for c in custom if c.get("first")]
    columns = [*first, name, *[c for c in custom if not c.get("first")]]
    if rtype.plural == "events":  # the real event printer: Name only with -o wide, and no Age
        name.update(priority=1)
        columns.remove(name)
        columns.append(name)
        return columns
    if not has_age and rtype.plural != "customresourcedefinitions":
        columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return columns


def table(rtype: ResourceType, items: list[dict], resource_version: str, include_object: str = "Metadata") -> dict:
    columns = columns_for(rtype)
    rows = []
    for item in items:
        row = {"cells": [c["fn"](item) if "fn" in c else
                         jsonpath(item, c["jsonPath"]) if c.get("raw") else
                         _cell(jsonpath(item, c["jsonPath"]), c.get("type", "string")) for c in columns]}
        if include_object == "Object":
            row["object"] = item
        elif include_object != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": item["metadata"]}
        rows.append(row)
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [{"name": c["name"], "type": c.get("type", "string"),
                               "format": c.get("format", ""), "description": c.get("description", ""),
                               "priority": c.get("priority", 0)} for c in columns],
        "rows": rows,
    }
