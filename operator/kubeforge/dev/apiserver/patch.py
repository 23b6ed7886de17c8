"""Patch formats (JSON merge patch, JSON patch, strategic merge patch) and server-side apply with
metadata.managedFields (FieldsV1) bookkeeping and conflict detection between field managers."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any, Iterable, Optional

Path = tuple[str, ...]
_MISSING = object()
# Server-owned metadata that no manager owns.
_UNOWNED_META = {"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                 "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink", "generateName"}
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


_DELETED = object()


def strategic_merge_patch(target: Any, patch: Any, fields: Optional[dict] = None) -> Any:
    """Strategic merge patch as apimachinery's strategicpatch applies it, with `fields` the strategy tree of
    the patched type (strategies.STRATEGIES): maps merge and `null` deletes; lists with the `merge` strategy
    merge by their merge key (`$patch: delete` items, a `$patch: replace` item), or, for lists of scalars,
    as a set union; other lists are replaced; `$patch: replace|delete` maps, `$retainKeys`,
    `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>`. (Items not named in a
    `$setElementOrder` list follow the named ones, where the real server interleaves them.)"""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    if directive == "delete":
        return _DELETED
    fields = fields or {}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if name.startswith("$"):
            continue
        node = fields.get(name) or {}
        if value is None:
            result.pop(name, None)
        elif isinstance(value, list) and "merge" in node.get("strategy", "").split(","):
            result[name] = _merge_list(result.get(name), value, node)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(name), value, node.get("fields"))
            if merged is _DELETED:
                result.pop(name, None)
            else:
                result[name] = merged
        else:
            result[name] = copy.deepcopy(value)
    for directive_name, value in patch.items():
        name = directive_name.split("/", 1)[-1]
        if directive_name.startswith("$deleteFromPrimitiveList/") and isinstance(result.get(name), list):
            result[name] = [item for item in result[name] if item not in (value or [])]
        elif directive_name.startswith("$setElementOrder/") and isinstance(result.get(name), list):
            result[name] = _ordered(result[name], value or [], (fields.get(name) or {}).get("key"))
    if isinstance(patch.get("$retainKeys"), list):
        result = {k: v for k, v in result.items() if k in patch["$retainKeys"]}
    return result


def _merge_list(current: Any, patch: list, node: dict) -> list:
    merge_key = node.get("key")
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [strategic_merge_patch({}, item, node.get("fields")) if isinstance(item, dict) else copy.deepcopy(item)
                for item in patch if not (isinstance(item, dict) and "$patch" in item)]
    result = copy.deepcopy(current) if isinstance(current, list) else []
    if merge_key is None:  # a list of scalars merges as a set: the union, each value once, in order
        for item in patch:
            if item not in result:
                result.append(copy.deepcopy(item))
        return result
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
            result.append(strategic_merge_patch({}, item, node.get("fields")))
        else:
            result[index] = strategic_merge_patch(result[index], item, node.get("fields"))
    return result


def _ordered(items: list, order: list, merge_key: Optional[str]) -> list:
    def identity(item: Any) -> Any:
        return item.get(merge_key) if merge_key and isinstance(item, dict) else item

    wanted = [identity(entry) for entry in order]
    named = sorted((item for item in items if identity(item) in wanted), key=lambda item: wanted.index(identity(item)))
    return named + [item for item in items if identity(item) not in wanted]


# Lists that server-side apply treats as sets (x-kubernetes-list-type: set): each value is owned on its own
# (FieldsV1 `v:<value>`), managers applying different values do not conflict, and applied values join the
# live ones. Other lists are atomic here.
SET_LISTS = {("metadata", "finalizers")}


def apply_merge(target: Any, applied: Any, path: Path = ()) -> Any:
    """Merge an applied configuration into the live object: maps merge, set lists (SET_LISTS) join, other
    lists and scalars are replaced."""
    if path in SET_LISTS and isinstance(applied, list) and isinstance(target, list):
        return copy.deepcopy(target) + [copy.deepcopy(v) for v in applied if v not in target]
    if not isinstance(applied, dict) or not isinstance(target, dict):
        return copy.deepcopy(applied)
    result = copy.deepcopy(target)
    for key, value in applied.items():
        if value is not None:
            result[key] = apply_merge(result.get(key), value, path + (key,))
    return result


def _set_item(value: Any) -> str:
    return "v:" + json.dumps(value, separators=(",", ":"))


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
    if prefix in SET_LISTS and isinstance(value, list):  # an empty set owns nothing, so conflicts with nothing
        out.update(prefix + (_set_item(item),) for item in value)
        return
    if isinstance(value, dict) and value:
        for key, child in value.items():
            _walk(child, prefix + (key,), out)
    else:
        out.add(prefix)


def value_at(obj: Any, path: Path) -> Any:
    if path and path[-1].startswith("v:"):
        items = value_at(obj, path[:-1])
        item = json.loads(path[-1][2:])
        return item if isinstance(items, list) and item in items else _MISSING
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def remove_at(obj: dict, path: Path) -> None:
    if path and path[-1].startswith("v:"):
        items = value_at(obj, path[:-1])
        if isinstance(items, list):
            items[:] = [item for item in items if item != json.loads(path[-1][2:])]
            if not items:
                remove_at(obj, path[:-1])
        return
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
    """{("spec", "a")} -> {"f:spec": {"f:a": {}}}; a set list's items are `v:<value>` keys beside a ".": {}
    that marks the list itself."""
    tree: dict = {}
    for path in sorted(paths):
        node = tree
        for key in path:
            if key.startswith("v:"):
                node.setdefault(".", {})
                node = node.setdefault(key, {})
            else:
                node = node.setdefault(f"f:{key}", {})
    return tree


def from_fields_v1(tree: Optional[dict], prefix: Path = ()) -> set[Path]:
    paths: set[Path] = set()
    for key, child in (tree or {}).items():
        if key.startswith("v:"):
            paths.add(prefix + (key,))
            continue
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
            meta[key] = apply_merge(meta.get(key), value, ("metadata", key))
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
