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
    if not timestamp:
        return "<unknown>"
    seconds = int((datetime.now(timezone.utc) - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds())
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    return f"{hours}h" if hours < 48 else f"{hours // 24}d"


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


_BUILTIN_COLUMNS = {
    "namespaces": [{"name": "Status", "type": "string", "jsonPath": ".status.phase"}],
    "events": [{"name": "Type", "type": "string", "jsonPath": ".type"},
               {"name": "Reason", "type": "string", "jsonPath": ".reason"},
               {"name": "Object", "type": "string", "jsonPath": ".involvedObject.name"},
               {"name": "Message", "type": "string", "jsonPath": ".message"}],
    "customresourcedefinitions": [{"name": "Created At", "type": "string", "jsonPath": ".metadata.creationTimestamp"}],
}


def columns_for(rtype: ResourceType) -> list[dict]:
    custom = rtype.printer_columns or _BUILTIN_COLUMNS.get(rtype.plural, [])
    has_age = any(c["name"].lower() == "age" for c in custom)
    columns = [{"name": "Name", "type": "string", "format": "name", "jsonPath": ".metadata.name",
                "description": "Name must be unique within a namespace."}, *custom]
    if not has_age and rtype.plural != "customresourcedefinitions":
        columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return columns


def table(rtype: ResourceType, items: list[dict], resource_version: str, include_object: str = "Metadata") -> dict:
    columns = columns_for(rtype)
    rows = []
    for item in items:
        row = {"cells": [_cell(jsonpath(item, c["jsonPath"]), c.get("type", "string")) for c in columns]}
        if include_object == "Object":
            row["object"] = item
        elif include_object != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": item["metadata"]}
        rows.append(row)
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [{"name": c["name"], "type": "string" if c.get("type") == "date" else c.get("type", "string"),
                               "format": c.get("format", ""), "description": c.get("description", ""),
                               "priority": c.get("priority", 0)} for c in columns],
        "rows": rows,
    }
