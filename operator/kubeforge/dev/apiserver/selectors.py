"""Label and field selectors as kube-apiserver parses them."""

from __future__ import annotations

import re
from typing import Callable, Optional

_SET_EXPR = re.compile(r"^\s*(!?)([\w./-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ_EXPR = re.compile(r"^\s*([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)\s*$")


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


def field_value(obj: dict, path: str) -> Optional[str]:
    current = obj
    for part in path.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return None if isinstance(current, (dict, list)) else str(current)


def field_matcher(selector: Optional[str]) -> Callable[[dict], bool]:
    if not selector:
        return lambda obj: True
    tests = []
    for part in _split(selector):
        eq = _EQ_EXPR.match(part)
        if not eq:
            raise SelectorError(f"invalid field selector: {part.strip()!r}")
        path, op, value = eq.groups()
        if op in ("=", "=="):
            tests.append((lambda p, v: lambda o: (field_value(o, p) or "") == v)(path, value))
        else:
            tests.append((lambda p, v: lambda o: (field_value(o, p) or "") != v)(path, value))
    return lambda obj: all(test(obj) for test in tests)
