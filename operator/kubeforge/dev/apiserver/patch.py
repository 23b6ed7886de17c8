"""Patch formats (JSON merge patch, JSON patch, strategic merge patch) and server-side apply with
metadata.managedFields (FieldsV1) bookkeeping and conflict detection between field managers."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any, Iterable, Optional

Path = tuple[str, ...]
_MISSING = object()
# Server-owned metadata that no manager owns.
_UNOWNED_META = {"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                 "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink", "generateName"}
# Strategic merge patch: merge keys of the built-in lists the emulator serves (others are replaced).
_MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
               "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, key: str = "") -> Any:
    """A subset of strategic merge patch for built-in types: maps merge, `null` deletes, lists named in
    _MERGE_KEYS merge by their key (with `$patch: delete` items), other lists are replaced; `$retainKeys`,
    `$setElementOrder` and `$deleteFromPrimitiveList` directives are accepted and ignored."""
    if isinstance(patch, list) and isinstance(target, list) and key in _MERGE_KEYS:
        merge_key = _MERGE_KEYS[key]
        result = copy.deepcopy(target)
        for item in patch:
            if not isinstance(item, dict) or merge_key not in item:
                result.append(copy.deepcopy(item))
                continue
            index = next((i for i, cur in enumerate(result) if isinstance(cur, dict)
                          and cur.get(merge_key) == item[merge_key]), None)
            if item.get("$patch") == "delete":
                if index is not None:
                    result.pop(index)
            elif index is None:
                result.append(strategic_merge_patch({}, item))
            else:
                result[index] = strategic_merge_patch(result[index], item)
        return result
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if name.startswith("$"):
            continue
        if value is None:
            result.pop(name, None)
        else:
            result[name] = strategic_merge_patch(result.get(name), value, name)
    return result


def apply_merge(target: Any, applied: Any) -> Any:
    """Merge an applied configuration into the live object: maps merge, lists and scalars are replaced."""
    if not isinstance(applied, dict) or not isinstance(target, dict):
        return copy.deepcopy(applied)
    result = copy.deepcopy(target)
    for key, value in applied.items():
        if value is not None:
            result[key] = apply_merge(result.get(key), value)
    return result


# ---- field sets ------------------------------------------------------------------------------------------------
def field_paths(obj: dict, subresource: Optional[str] = None, has_status: bool = False) -> set[Path]:
    """The leaf fields of an object as FieldsV1 tracks them (lists atomic), scoped to the main resource
    (no status when the type has a status subresource) or to the status subresource."""
    paths: set[Path] = set()
    for key, value in obj.items():
        if key in ("apiVersion", "kind"):
            continue
        if subresource == "status" and key != "status":
            continue
        if subresource != "status" and key == "status" and has_status:
            continue
        if key == "metadata":
            for mkey, mvalue in (value or {}).items():
                if mkey not in _UNOWNED_META:
                    _walk(mvalue, ("metadata", mkey), paths)
            continue
        _walk(value, (key,), paths)
    return paths


def _walk(value: Any, prefix: Path, out: set[Path]) -> None:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            _walk(child, prefix + (key,), out)
    else:
        out.add(prefix)


def value_at(obj: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def remove_at(obj: dict, path: Path) -> None:
    parents = []
    for key in path[:-1]:
        if not isinstance(obj.get(key), dict):
            return
        parents.append((obj, key))
        obj = obj[key]
    obj.pop(path[-1], None)
    for parent, key in reversed(parents):  # drop maps the removal emptied
        if parent[key] == {}:
            del parent[key]
        else:
            break


def to_fields_v1(paths: Iterable[Path]) -> dict:
    """{("spec", "a")} -> {"f:spec": {"f:a": {}}}; a map owned as a whole is marked with ".": {}."""
    tree: dict = {}
    for path in sorted(paths):
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


def from_fields_v1(tree: Optional[dict], prefix: Path = ()) -> set[Path]:
    paths: set[Path] = set()
    for key, child in (tree or {}).items():
        if key == "." or not key.startswith("f:"):
            continue
        path = prefix + (key[2:],)
        inner = {k: v for k, v in (child or {}).items() if k != "."}
        if inner:
            paths |= from_fields_v1(inner, path)
        else:
            paths.add(path)
    return paths


def _overlaps(a: Path, b: Path) -> bool:
    return a[:len(b)] == b or b[:len(a)] == a


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApplyConflict(Exception):
    def __init__(self, conflicts: list[tuple[str, str, Path]]):
        self.conflicts = conflicts
        super().__init__(self.message())

    def message(self) -> str:
        lines = [(manager, api_version, "." + ".".join(path)) for manager, api_version, path in self.conflicts]
        if len(lines) == 1:
            manager, api_version, field = lines[0]
            return f'Apply failed with 1 conflict: conflict with "{manager}" using {api_version}: {field}'
        text = f"Apply failed with {len(lines)} conflicts: "
        return text + "\n".join(f'conflict with "{m}" using {v}: {f}' for m, v, f in lines)

    def causes(self) -> list[dict]:
        return [{"reason": "FieldManagerConflict", "message": f'conflict with "{m}" using {v}',
                 "field": "." + ".".join(p)} for m, v, p in self.conflicts]


def _entries(obj: dict) -> list[dict]:
    return list((obj.get("metadata") or {}).get("managedFields") or [])


def _entry_key(entry: dict) -> tuple:
    return (entry.get("manager"), entry.get("operation"), entry.get("subresource", ""))


def server_side_apply(current: Optional[dict], applied: dict, manager: str, api_version: str, force: bool,
                      has_status: bool, subresource: Optional[str] = None) -> dict:
    """Merge `applied` into `current` for `manager`: fields it applied before and dropped now are removed
    (unless another manager owns them too), other managers' fields with different values conflict unless
    `force` (which takes them over). Returns the new object with managedFields updated."""
    current = copy.deepcopy(current) if current is not None else {}
    applied_paths = field_paths(applied, subresource, has_status)
    entries = _entries(current)
    mine_key = (manager, "Apply", subresource or "")
    previous = set()
    conflicts: list[tuple[str, str, Path]] = []
    for entry in entries:
        owned = from_fields_v1(entry.get("fieldsV1"))
        if _entry_key(entry) == mine_key:
            previous = owned
            continue
        if (entry.get("subresource") or "") != (subresource or ""):
            continue
        for path in applied_paths:
            for theirs in owned:
                if _overlaps(path, theirs) and value_at(applied, theirs if len(theirs) > len(path) else path) != \
                        value_at(current, theirs if len(theirs) > len(path) else path):
                    conflicts.append((entry.get("manager", ""), entry.get("apiVersion", api_version), theirs))
    if conflicts and not force:
        raise ApplyConflict(sorted(set(conflicts)))
    others = [e for e in entries if _entry_key(e) != mine_key]
    other_paths = set().union(*(from_fields_v1(e.get("fieldsV1")) for e in others)) if others else set()
    new = current
    for path in previous - applied_paths:
        if not any(_overlaps(path, p) for p in other_paths) and not any(_overlaps(path, p) for p in applied_paths):
            remove_at(new, path)
    new = apply_merge(new, {k: v for k, v in applied.items() if k != "metadata"})
    meta = new.setdefault("metadata", {})
    for key, value in (applied.get("metadata") or {}).items():
        if key not in _UNOWNED_META and value is not None:
            meta[key] = apply_merge(meta.get(key), value)
        elif key in ("name", "namespace", "generateName") and key not in meta:
            meta[key] = value
    if force and conflicts:
        taken = {path for _, _, path in conflicts}
        for entry in others:
            owned = from_fields_v1(entry.get("fieldsV1")) - taken
            entry["fieldsV1"] = to_fields_v1(owned)
    meta["managedFields"] = _tidy(others + [_entry(manager, "Apply", api_version, applied_paths, subresource)], new,
                                  has_status)
    return new


def record_update(old: Optional[dict], new: dict, manager: str, api_version: str, has_status: bool,
                  subresource: Optional[str] = None) -> None:
    """Record a non-apply write (create, update, patch) by `manager`: it owns the fields it changed, which
    no other manager owns any more."""
    after = field_paths(new, subresource, has_status)
    changed = {p for p in after if old is None or value_at(old, p) != value_at(new, p)}
    entries = _entries(old) if old else []
    entries = [copy.deepcopy(e) for e in entries]
    mine_key = (manager, "Update", subresource or "")
    mine = next((e for e in entries if _entry_key(e) == mine_key), None)
    for entry in entries:
        if entry is mine or (entry.get("subresource") or "") != (subresource or ""):
            continue
        owned = from_fields_v1(entry.get("fieldsV1"))
        kept = {p for p in owned if not any(_overlaps(p, c) for c in changed)}
        if kept != owned:
            entry["fieldsV1"] = to_fields_v1(kept)
    if changed or mine is not None:
        owned = (from_fields_v1(mine.get("fieldsV1")) if mine else set()) | changed
        if mine is not None:
            entries.remove(mine)
        entries.append(_entry(manager, "Update", api_version, owned, subresource))
    new.setdefault("metadata", {})["managedFields"] = _tidy(entries, new, has_status)


def _entry(manager: str, operation: str, api_version: str, paths: set[Path], subresource: Optional[str]) -> dict:
    entry = {"manager": manager, "operation": operation, "apiVersion": api_version, "time": _now(),
             "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(paths)}
    if subresource:
        entry["subresource"] = subresource
    return entry


def _tidy(entries: list[dict], obj: dict, has_status: bool) -> list[dict]:
    """Drop ownership of fields that no longer exist and managers that own nothing."""
    result = []
    for entry in entries:
        present = field_paths(obj, entry.get("subresource"), has_status)
        owned = {p for p in from_fields_v1(entry.get("fieldsV1"))
                 if any(_overlaps(p, q) for q in present)}
        if owned:
            entry["fieldsV1"] = to_fields_v1(owned)
            result.append(entry)
    return result
