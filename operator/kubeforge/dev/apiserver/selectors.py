"""Label and field selectors as kube-apiserver parses them."""

from __future__ import annotations

import re
from typing import Callable, Optional

_SET_EXPR = re.compile(r"^\s*(!?)([\w./-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ_EXPR = re.compile(r"^\s*([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)\s*$")
_FIELD_EXPR = re.compile(r"^\s*([\w./-]+)\s*(==|=|!=)\s*([^,]*?)\s*$")

# Field labels each built-in resource supports (besides metadata.name and metadata.namespace), as registered by
# kube-apiserver's field label conversion functions.
BUILTIN_FIELDS = {
    ("", "events"): {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                     "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
                     "reason", "reportingComponent", "source", "type"},
    ("events.k8s.io", "events"): {"regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid",
                                  "regarding.apiVersion", "regarding.resourceVersion", "regarding.fieldPath",
                                  "reason", "reportingController", "type"},
    ("", "namespaces"): {"status.phase"},
    ("", "secrets"): {"type"},
    ("", "pods"): {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
                   "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"},
}


class SelectorError(ValueError):
    pass


def _split(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def label_matcher(selector: Optional[str]) -> Callable[[dict], bool]:
    if not selector:
        return lambda labels: True
    tests = []
    for part in _split(selector):
        eq = _EQ_EXPR.match(part)
        if eq:
            key, op, value = eq.groups()
            tests.append((lambda k, v: lambda l: l.get(k) == v)(key, value) if op in ("=", "==")
                         else (lambda k, v: lambda l: l.get(k) != v)(key, value))
            continue
        setx = _SET_EXPR.match(part)
        if not setx:
            raise SelectorError(f"unable to parse requirement: {part.strip()!r}")
        negate, key, op, values = setx.groups()
        if op:
            options = {v.strip() for v in values.split(",") if v.strip()}
            tests.append((lambda k, o: lambda l: l.get(k) in o)(key, options) if op == "in"
                         else (lambda k, o: lambda l: l.get(k) not in o)(key, options))
        else:
            tests.append((lambda k: lambda l: k not in l)(key) if negate else (lambda k: lambda l: k in l)(key))
    return lambda labels: all(test(labels) for test in tests)


# Field labels whose Go field is a plain bool: an unset field reads as its zero value, "false".
_BOOLEAN_FIELDS = {("", "pods"): {"spec.hostNetwork"}}


def field_value(obj: dict, path: str) -> Optional[str]:
    """The field's value as the real server's field sets hold it: strconv.FormatBool for booleans
    ("true", not Python's "True"), FormatInt for integers."""
    current = obj
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    if isinstance(current, bool):
        return "true" if current else "false"
    return None if isinstance(current, (dict, list)) else str(current)


def field_matcher(selector: Optional[str], allowed: Optional[set[str]] = None,
                  custom: bool = False, resource: tuple[str, str] = ("", "")) -> Callable[[dict], bool]:
    """`allowed`: the field labels the resource supports besides metadata.name/namespace (None: anything);
    `resource`: (group, plural) of a built-in, for fields that read as a zero value when unset."""
    if not selector:
        return lambda obj: True
    tests = []
    for part in _split(selector):
        eq = _FIELD_EXPR.match(part)
        if not eq:
            raise SelectorError(f"invalid selector: '{selector}'; can't understand '{part.strip()}'")
        path, op, value = eq.groups()
        if allowed is not None and path not in allowed | {"metadata.name", "metadata.namespace"}:
            if custom:
                known = ", ".join(f'"{f}"' for f in ["metadata.name", "metadata.namespace", *sorted(allowed)])
                raise SelectorError(f'"{path}" is not a known field selector: only {known}')
            raise SelectorError(f'field label not supported: {path}')
        unset = "false" if path in _BOOLEAN_FIELDS.get(resource, ()) else ""
        if op in ("=", "=="):
            tests.append((lambda p, v, u: lambda o: (field_value(o, p) or u) == v)(path, value, unset))
        else:
            tests.append((lambda p, v, u: lambda o: (field_value(o, p) or u) != v)(path, value, unset))
    return lambda obj: all(test(obj) for test in tests)
