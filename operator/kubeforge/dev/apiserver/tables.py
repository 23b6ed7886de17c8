"""Server-side printing: meta.k8s.io/v1 Table responses from additionalPrinterColumns."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Optional

from jsonpath_ng.ext import parse as parse_jsonpath

from kubeforge.dev.apiserver.types import ResourceType

_PLAIN_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _to_jsonpath_ng(path: str) -> str:
    """Kubernetes JSONPath (client-go: `.a.b`, `\\.`-escaped dots in field names, brackets, `..`) in
    jsonpath-ng's ext syntax: rooted at `$`, field names that are not identifiers quoted."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1].strip()
    if path.startswith("$"):
        path = path[1:]
    out, i = ["$"], 0
    while i < len(path):
        char = path[i]
        if char == "[":  # indices, slices, wildcards, filters and quoted names mean the same in both dialects
            depth, j, quote = 0, i, ""
            while j < len(path):
                c = path[j]
                if quote:
                    quote = "" if c == quote else quote
                elif c in "'\"":
                    quote = c
                elif c == "[":
                    depth += 1
                elif c == "]":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            out.append(path[i:j + 1])
            i = j + 1
        elif char == ".":
            descend = path[i + 1:i + 2] == "."
            i += 2 if descend else 1
            out.append(".." if descend else ".")
            name = ""
            while i < len(path) and path[i] not in ".[":
                if path[i] == "\\" and i + 1 < len(path):
                    i += 1
                name += path[i]
                i += 1
            if not name:
                if descend:
                    out.append("*")  # `..[0]`: jsonpath-ng needs a field after `..`
                    continue
                raise ValueError(f"empty field name in JSONPath {path!r}")
            out.append(name if name == "*" or _PLAIN_FIELD.match(name) else json.dumps(name))
        else:
            raise ValueError(f"unexpected {char!r} in JSONPath {path!r}")
    return "".join(out)


@lru_cache(maxsize=512)
def _compiled(path: str):
    return parse_jsonpath(_to_jsonpath_ng(path))


def jsonpath_results(obj: Any, path: str) -> list:
    """Every value `path` selects in `obj` (jsonpath-ng), in document order."""
    return [match.value for match in _compiled(path).find(obj)]


def jsonpath(obj: Any, path: str) -> Any:
    """The first value `path` selects, or None: a printer column shows only its first result."""
    try:
        found = jsonpath_results(obj, path)
    except Exception:  # a path the parser refuses yields an empty cell, as on the real server
        return None
    return found[0] if found else None


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


def _go_text(value: Any) -> Optional[str]:
    """What client-go's JSONPath PrintResults writes for one value: maps and lists as compact JSON, the rest
    as Go's fmt prints them (true/false, integral floats without a fraction)."""
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return str(value)


def _cell(value: Any, column_type: str) -> Any:
    """apiextensions' cellForJSONValue: a value of the wrong type for its column is an empty cell."""
    if value is None:
        return None
    if column_type == "string":
        return _go_text(value)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if column_type == "integer":
        return int(value) if numeric else None
    if column_type == "number":
        return float(value) if numeric else None
    if column_type == "boolean":
        return value if isinstance(value, bool) else None
    if column_type == "date":
        if not isinstance(value, str):
            return None
        try:
            return age(value)
        except ValueError:
            return "<invalid>"
    return None


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
