"""The object store: CRUD with kube-apiserver semantics, watch history, finalizers and garbage collection."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

import jsonpatch
import yaml

from kubeforge.dev.apiserver.errors import ApiError, already_exists, conflict, invalid, not_found
from kubeforge.dev.apiserver.objectmeta import crd_name_rule, name_rule, validate_object_meta
from kubeforge.dev.apiserver.strategies import STRATEGIES
from kubeforge.dev.apiserver.types import ResourceType, builtin_types, from_crd
from kubeforge.dev.apiserver.patch import (ApplyConflict, merge_patch, record_update, server_side_apply,
                                           strategic_merge_patch)
from kubeforge.dev.apiserver.validation import (_MISSING, apply_defaults, check_custom_resource, prune,
                                                unknown_metadata, validate)

log = logging.getLogger(__name__)
HISTORY = 5000
CRD_KEY = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACE_KEY = ("", "namespaces")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


GENERATED_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
"""apimachinery's util/rand alphabet for generated names: no vowels (no words), no 0/1/3 (no look-alikes)."""
GENERATE_NAME_ATTEMPTS = 8


def generated_suffix() -> str:
    return "".join(random.choices(GENERATED_NAME_ALPHABET, k=5))


@dataclass
class WriteOptions:
    """Per-request write options: fieldValidation (Strict|Warn|Ignore), fieldManager, dryRun, force (apply)."""
    validation: str = "Warn"
    manager: str = "unknown"
    dry_run: bool = False
    force: bool = False


def _normalise_secret(obj: dict) -> None:
    """Secrets store `data` base64-encoded; `stringData` is write-only, as on the real server."""
    import base64

    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def _spec_part(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


@dataclass(eq=False)
class Watcher:
    queue: asyncio.Queue
    namespace: Optional[str]
    matches: Callable[[dict], bool]


class Store:
    def __init__(self):
        self.types: dict[tuple[str, str], ResourceType] = {}
        self.objects: dict[tuple[str, str], dict[tuple[str, str], dict]] = {}
        self.history: dict[tuple[str, str], deque] = {}
        self.watchers: dict[tuple[str, str], set[Watcher]] = {}
        self._last: dict[tuple, dict] = {}  # the last emitted state of each object, for selector transitions
        self.rv = 1
        for rtype in builtin_types():
            self.register(rtype)
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(self.types[NAMESPACE_KEY], None, {"metadata": {"name": ns}})

    # ---- types -------------------------------------------------------------------------------------------------
    def register(self, rtype: ResourceType) -> None:
        self.types[rtype.key] = rtype
        self.objects.setdefault(rtype.key, {})
        self.history.setdefault(rtype.key, deque(maxlen=HISTORY))
        self.watchers.setdefault(rtype.key, set())

    def unregister(self, key: tuple[str, str]) -> None:
        self.types.pop(key, None)
        self.objects.pop(key, None)
        for watcher in self.watchers.pop(key, set()):
            watcher.queue.put_nowait(None)
        self.history.pop(key, None)

    def find_type(self, group: str, version: str, plural: str) -> ResourceType:
        rtype = self.types.get((group, plural))
        if rtype is None or rtype.version != version:
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        return rtype

    def load_crd(self, crd: dict) -> None:
        try:
            self.create(self.types[CRD_KEY], None, crd)
        except ApiError as error:
            if error.code != 409:
                raise

    # ---- helpers -----------------------------------------------------------------------------------------------
    def _kind_group(self, rtype: ResourceType) -> tuple[str, str]:
        return (rtype.plural, rtype.group)

    def _get(self, rtype: ResourceType, namespace: Optional[str], name: str) -> dict:
        obj = self.objects[rtype.key].get((namespace or "", name))
        if obj is None:
            raise not_found(rtype.qualified, name, self._kind_group(rtype))
        return obj

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, rtype: ResourceType, event_type: str, obj: dict) -> None:
        """Record and fan out a watch event. Watchers with selectors see an object entering their selection as
        ADDED and leaving it as DELETED, as kube-apiserver's watch cache does."""
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        key = (rtype.key, meta.get("namespace") or "", meta["name"])
        old = self._last.pop(key, None) if event_type == "DELETED" else self._last.get(key)
        if event_type != "DELETED":
            self._last[key] = obj
        self.history[rtype.key].append((int(meta["resourceVersion"]), event_type, obj, old))
        for watcher in list(self.watchers.get(rtype.key, ())):
            event = _filtered(watcher.namespace, watcher.matches, event_type, obj, old)
            if event is not None:
                watcher.queue.put_nowait({"type": event, "object": obj})

    def _check_namespace(self, rtype: ResourceType, namespace: Optional[str]) -> None:
        if rtype.namespaced:
            if not namespace:
                raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
            ns = self.objects[NAMESPACE_KEY].get(("", namespace))
            if ns is None:
                raise not_found("namespaces", namespace, ("namespaces", ""))
            if ns["metadata"].get("deletionTimestamp"):
                raise ApiError(403, f'{rtype.kind} "..." is forbidden: unable to create new content in namespace '
                                    f'{namespace} because it is being terminated', "Forbidden")

    def _validate(self, rtype: ResourceType, obj: dict, opts: WriteOptions, old: Optional[dict] = None) -> list[str]:
        """Default, prune and validate `obj` in place; returns warnings. Unknown fields: Strict → 400 (as the
        real server's strict decoding error), Warn → a Warning header per field, Ignore → silently pruned."""
        name = obj["metadata"].get("name", "")
        unknown: list[str] = unknown_metadata(obj["metadata"])
        errors = validate_object_meta(obj["metadata"], name_rule(rtype.key),
                                      crd_name_rule(obj) if rtype.key == CRD_KEY else None)
        if rtype.schema is not None:
            checked, schema_errors, pruned = check_custom_resource(obj, rtype.schema, old, errors)
            obj.clear()
            obj.update(checked)
            errors += schema_errors
            unknown += pruned
        if unknown and opts.validation == "Strict":
            listed = ", ".join(f'unknown field "{path}"' for path in unknown)
            raise ApiError(400, f'{rtype.kind} in version "{rtype.version}" cannot be handled as a {rtype.kind}: '
                                f"strict decoding error: {listed}", "BadRequest")
        if errors:
            raise invalid(rtype.kind, f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind, name,
                          rtype.group, errors)
        if rtype.key == CRD_KEY:
            spec = obj.get("spec") or {}
            missing = [f"spec.{field}: Required value" for field in ("group", "names", "scope", "versions")
                       if field not in spec]
            if missing:
                raise invalid(rtype.kind, "CustomResourceDefinition.apiextensions.k8s.io", name, rtype.group, missing)
        return [f'unknown field "{path}"' for path in unknown] if opts.validation == "Warn" else []

    def _defaulted(self, rtype: ResourceType, obj: dict) -> dict:
        """Objects are defaulted on read too (a CRD's new defaults show on objects stored before)."""
        if rtype.schema is not None:
            apply_defaults(obj, rtype.schema)
        return obj

    # ---- verbs -------------------------------------------------------------------------------------------------
    def get(self, rtype: ResourceType, namespace: Optional[str], name: str) -> dict:
        return self._defaulted(rtype, copy.deepcopy(self._get(rtype, namespace, name)))

    def list(self, rtype: ResourceType, namespace: Optional[str], matches: Callable[[dict], bool]) -> tuple[list, str]:
        items = [self._defaulted(rtype, copy.deepcopy(o)) for (ns, _), o in sorted(self.objects[rtype.key].items())
                 if (not namespace or ns == namespace) and matches(o)]
        return items, str(self.rv)

    def create(self, rtype: ResourceType, namespace: Optional[str], body: dict,
               opts: Optional[WriteOptions] = None, applied: Optional[dict] = None) -> tuple[dict, list[str]]:
        opts = opts or WriteOptions()
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "metadata must be an object")
        if rtype.namespaced:
            if namespace and meta.get("namespace") and meta["namespace"] != namespace:
                raise ApiError(400, "the namespace of the provided object does not match the namespace sent on "
                                    "the request")
            namespace = namespace or meta.get("namespace")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if meta.get("generateName"):
                # The real name generator keeps at most 58 characters of the prefix and appends 5; since 1.30
                # (RetryGenerateName) the server tries again when the generated name is taken.
                for _ in range(GENERATE_NAME_ATTEMPTS):
                    meta["name"] = meta["generateName"][:58] + generated_suffix()
                    if (namespace or "", meta["name"]) not in self.objects[rtype.key]:
                        break
            else:
                raise invalid(rtype.kind, rtype.qualified, "", rtype.group,
                              ["metadata.name: Required value: name or generateName is required"])
        self._check_namespace(rtype, namespace)
        key = (namespace or "", meta["name"])
        if key in self.objects[rtype.key]:
            raise already_exists(rtype.qualified, meta["name"], self._kind_group(rtype))
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        if rtype.has_status and rtype.schema is not None:
            obj.pop("status", None)
        if rtype.key == ("", "secrets"):
            _normalise_secret(obj)
        warnings = self._validate(rtype, obj, opts)
        for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "uid"):
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now())
        if rtype.has_generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if applied is not None:
            merged = server_side_apply(None, applied, opts.manager, rtype.api_version, True, rtype.has_status)
            meta["managedFields"] = merged["metadata"].get("managedFields", [])
        else:
            record_update(None, obj, opts.manager, rtype.api_version, rtype.has_status)
        if opts.dry_run:
            meta["resourceVersion"] = str(self.rv)
            return obj, warnings
        meta["resourceVersion"] = self._next_rv()
        if rtype.key == CRD_KEY:
            self._establish_crd(obj)
        if rtype.key == NAMESPACE_KEY:
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
        self.objects[rtype.key][key] = obj
        self._emit(rtype, "ADDED", obj)
        return copy.deepcopy(obj), warnings

    def _establish_crd(self, crd: dict) -> None:
        new_type = from_crd(crd)
        self.register(new_type)
        crd["status"] = {
            "acceptedNames": crd["spec"]["names"],
            "storedVersions": [new_type.version],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found",
                 "lastTransitionTime": now()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now()},
            ],
        }

    def update(self, rtype: ResourceType, namespace: Optional[str], name: str, body: dict,
               subresource: Optional[str] = None, opts: Optional[WriteOptions] = None, require_rv: bool = True,
               managed: Optional[list] = None) -> tuple[dict, list[str]]:
        """PUT semantics. `managed` (from a patch) replaces the managedFields bookkeeping of a plain update."""
        opts = opts or WriteOptions()
        current = self._get(rtype, namespace, name)
        new = copy.deepcopy(body)
        meta = new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "metadata must be an object")
        sent_rv = meta.get("resourceVersion")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            raise conflict(rtype.qualified, name, self._kind_group(rtype))
        if not sent_rv and require_rv and rtype.schema is not None:
            # Custom resources do not allow unconditional updates (AllowUnconditionalUpdate is false).
            raise invalid(rtype.kind, f"{rtype.kind}.{rtype.group}", name, rtype.group,
                          ["metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"])
        if meta.get("name", name) != name:
            raise ApiError(400, f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                                f"({name})")
        if rtype.namespaced and meta.get("namespace") and meta["namespace"] != (namespace or ""):
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the "
                                "request")
        if subresource == "status":
            merged = copy.deepcopy(current)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        else:
            for field in ("uid", "creationTimestamp", "namespace", "deletionTimestamp", "deletionGracePeriodSeconds",
                          "generation", "managedFields"):
                if field in current["metadata"]:
                    meta[field] = current["metadata"][field]
                else:
                    meta.pop(field, None)
            meta["name"] = name
            new["apiVersion"], new["kind"] = rtype.api_version, rtype.kind
            if rtype.has_status:
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
                else:
                    new.pop("status", None)
        if current["metadata"].get("deletionTimestamp"):
            added = set(new["metadata"].get("finalizers") or []) - set(current["metadata"].get("finalizers") or [])
            if added:
                raise invalid(rtype.kind, f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind, name,
                              rtype.group, [f"metadata.finalizers: Forbidden: no new finalizers can be added if the "
                                            f"object is being deleted, found new finalizers {_go_list(added)}"])
        warnings: list[str] = []
        if rtype.key == ("", "secrets"):
            _normalise_secret(new)
        if subresource == "status" and rtype.schema is not None:
            status_schema = (rtype.schema.get("properties") or {}).get("status")
            if status_schema is None and "status" in new and not rtype.schema.get("x-kubernetes-preserve-unknown-fields"):
                new.pop("status")  # a schema without status prunes it
            if status_schema and "status" in new:
                apply_defaults(new["status"], status_schema)
                pruned: list[str] = []
                new["status"] = prune(new["status"], status_schema, "status", pruned)
                if pruned and opts.validation == "Strict":
                    listed = ", ".join(f'unknown field "{path}"' for path in pruned)
                    raise ApiError(400, f'{rtype.kind} in version "{rtype.version}" cannot be handled as a '
                                        f"{rtype.kind}: strict decoding error: {listed}", "BadRequest")
                if opts.validation == "Warn":
                    warnings += [f'unknown field "{path}"' for path in pruned]
                errors = validate(new.get("status"), status_schema, "status", current.get("status", _MISSING))
                if errors:
                    raise invalid(rtype.kind, f"{rtype.kind}.{rtype.group}", name, rtype.group, errors)
        elif subresource is None:
            warnings = self._validate(rtype, new, opts, current)
        if rtype.has_generation and _spec_part(new) != _spec_part(current):
            new["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        if managed is not None:
            new["metadata"]["managedFields"] = managed
        else:
            record_update(current, new, opts.manager, rtype.api_version, rtype.has_status, subresource)
        if _without_times(new) == _without_times(current):
            return copy.deepcopy(current), warnings  # no-op updates do not bump resourceVersion
        if opts.dry_run:
            return new, warnings
        new["metadata"]["resourceVersion"] = self._next_rv()
        if rtype.key == CRD_KEY:
            self._establish_crd(new)
        self.objects[rtype.key][(namespace or "", name)] = new
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(rtype, new)
        else:
            self._emit(rtype, "MODIFIED", new)
        return copy.deepcopy(new), warnings

    def patch(self, rtype: ResourceType, namespace: Optional[str], name: str, content_type: str, raw: bytes,
              subresource: Optional[str] = None, opts: Optional[WriteOptions] = None) -> tuple[dict, list[str], bool]:
        """Returns (object, warnings, created)."""
        opts = opts or WriteOptions()
        kind = content_type.split(";")[0].strip()
        if kind == "application/apply-patch+yaml":
            if not opts.manager:
                raise ApiError(422, 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is '
                                    'required for apply patch', "Invalid",
                               {"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [
                                   {"reason": "FieldValueRequired", "message": "Required value: is required for "
                                    "apply patch", "field": "fieldManager"}]})
            try:
                applied = yaml.safe_load(raw) or {}
            except yaml.YAMLError as error:
                raise ApiError(400, f"error decoding YAML: {error}")
            if not isinstance(applied, dict):
                raise ApiError(400, "the apply configuration must be an object")
            for field in ("apiVersion", "kind"):
                if not applied.get(field):
                    raise ApiError(400, f"{field} must be set in the apply configuration")
            applied.setdefault("metadata", {})
            if applied["metadata"].get("name", name) != name:
                raise ApiError(400, "the name of the object does not match the name on the URL")
            applied["metadata"]["name"] = name
            current = self.objects[rtype.key].get((namespace or "", name))
            if current is None:
                if subresource:
                    raise not_found(rtype.qualified, name, self._kind_group(rtype))
                obj, warnings = self.create(rtype, namespace, applied, opts, applied=applied)
                return obj, warnings, True
            try:
                new = server_side_apply(current, applied, opts.manager, rtype.api_version, opts.force,
                                        rtype.has_status, subresource)
            except ApplyConflict as error:
                raise ApiError(409, str(error), "Conflict", {"name": name, "group": rtype.group,
                                                             "kind": rtype.plural, "causes": error.causes()})
            new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            managed = new["metadata"]["managedFields"]
            obj, warnings = self.update(rtype, namespace, name, new, subresource, opts, require_rv=False,
                                        managed=managed)
            return obj, warnings, False
        current = self._get(rtype, namespace, name)
        try:
            patch = json.loads(raw) if raw else {}
        except ValueError as error:
            raise ApiError(400, f"couldn't decode patch: {error}")
        if kind == "application/json-patch+json":
            if not isinstance(patch, list):
                raise ApiError(400, "the server rejected our request due to an error in our request: "
                                    "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
            try:
                new = jsonpatch.apply_patch(current, patch)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                raise ApiError(422, f"the server rejected our request due to an error in our request: {error}")
        elif kind == "application/merge-patch+json":
            if not isinstance(patch, dict):
                raise ApiError(400, "the server rejected our request due to an error in our request: "
                                    "a merge patch must be a JSON object")
            new = merge_patch(current, patch)
        elif kind == "application/strategic-merge-patch+json":
            if rtype.schema is not None or rtype.key == CRD_KEY:
                raise ApiError(415, "the body of the request was in an unknown format - accepted media types "
                                    "include: application/json-patch+json, application/merge-patch+json, "
                                    "application/apply-patch+yaml", "UnsupportedMediaType")
            if not isinstance(patch, dict):
                raise ApiError(400, "a strategic merge patch must be a JSON object")
            new = strategic_merge_patch(current, patch, STRATEGIES.get(rtype.key, {}))
        else:
            raise ApiError(415, "the body of the request was in an unknown format - accepted media types include: "
                                "application/json-patch+json, application/merge-patch+json, "
                                "application/apply-patch+yaml, application/strategic-merge-patch+json",
                           "UnsupportedMediaType")
        if not isinstance(new, dict):
            raise ApiError(422, "the patched object must be an object")
        new.setdefault("metadata", {})
        sent = (new.get("metadata") or {}).get("resourceVersion")
        # A resourceVersion carried by the patch is a precondition; otherwise patches apply to the latest.
        new["metadata"]["resourceVersion"] = sent or current["metadata"]["resourceVersion"]
        obj, warnings = self.update(rtype, namespace, name, new, subresource, opts, require_rv=False)
        return obj, warnings, False

    def delete(self, rtype: ResourceType, namespace: Optional[str], name: str, propagation: Optional[str] = None,
               dry_run: bool = False) -> dict:
        current = self._get(rtype, namespace, name)
        if dry_run:
            return copy.deepcopy(current)
        propagation = propagation or "Background"
        if propagation == "Orphan":
            self._orphan(current["metadata"]["uid"])
        meta = current["metadata"]
        if propagation == "Foreground" and self._dependents(meta["uid"]):
            meta.setdefault("finalizers", [])
            if "foregroundDeletion" not in meta["finalizers"]:
                meta["finalizers"].append("foregroundDeletion")
        if rtype.key == NAMESPACE_KEY:
            return self._delete_namespace(rtype, current)
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = now()
                meta["deletionGracePeriodSeconds"] = 0
                meta["resourceVersion"] = self._next_rv()
                self._emit(rtype, "MODIFIED", current)
            if "foregroundDeletion" in meta["finalizers"]:
                for dep_type, dep in self._dependents(meta["uid"]):
                    self.delete(dep_type, dep["metadata"].get("namespace"), dep["metadata"]["name"], "Foreground")
                self._finish_foreground()
            return copy.deepcopy(current)
        self._remove(rtype, current)
        return copy.deepcopy(current)

    def _remove(self, rtype: ResourceType, obj: dict) -> None:
        meta = obj["metadata"]
        self.objects[rtype.key].pop((meta.get("namespace") or "", meta["name"]), None)
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._emit(rtype, "DELETED", obj)
        if rtype.key == CRD_KEY:
            served = from_crd(obj)
            for item in list(self.objects.get(served.key, {}).values()):
                self._remove(served, item)
            self.unregister(served.key)
        self.collect_garbage()
        self._finish_foreground()
        namespace = meta.get("namespace")
        if rtype.namespaced and namespace:
            ns = self.objects[NAMESPACE_KEY].get(("", namespace))
            if ns is not None and ns["metadata"].get("deletionTimestamp") and not self._namespace_has_content(namespace):
                self._remove(self.types[NAMESPACE_KEY], ns)

    def _namespace_has_content(self, name: str) -> bool:
        return any(k[0] == name for t in self.types.values() if t.namespaced for k in self.objects.get(t.key, {}))

    def _delete_namespace(self, rtype: ResourceType, ns: dict) -> dict:
        ns["metadata"]["deletionTimestamp"] = ns["metadata"].get("deletionTimestamp") or now()
        ns["metadata"]["deletionGracePeriodSeconds"] = 0
        ns["status"] = {"phase": "Terminating"}
        name = ns["metadata"]["name"]
        for other in list(self.types.values()):
            if not other.namespaced:
                continue
            for (item_ns, item_name), _ in list(self.objects.get(other.key, {}).items()):
                if item_ns == name and (item_ns, item_name) in self.objects.get(other.key, {}):
                    self.delete(other, item_ns, item_name)
        if ("", name) not in self.objects[NAMESPACE_KEY]:
            return copy.deepcopy(ns)  # emptied and removed while deleting its content
        if self._namespace_has_content(name):
            ns["metadata"]["resourceVersion"] = self._next_rv()
            self._emit(rtype, "MODIFIED", ns)
        else:
            self._remove(rtype, ns)
        return copy.deepcopy(ns)

    def _dependents(self, uid: str) -> list[tuple[ResourceType, dict]]:
        found = []
        for rtype in self.types.values():
            for obj in self.objects.get(rtype.key, {}).values():
                if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or []):
                    found.append((rtype, obj))
        return found

    def _orphan(self, uid: str) -> None:
        for rtype, obj in self._dependents(uid):
            obj["metadata"]["ownerReferences"] = [r for r in obj["metadata"]["ownerReferences"] if r.get("uid") != uid]
            if not obj["metadata"]["ownerReferences"]:
                del obj["metadata"]["ownerReferences"]
            obj["metadata"]["resourceVersion"] = self._next_rv()
            self._emit(rtype, "MODIFIED", obj)

    def _all_uids(self) -> set[str]:
        return {o["metadata"]["uid"] for objs in self.objects.values() for o in objs.values()}

    def collect_garbage(self) -> None:
        """Background cascade: delete objects whose every owner is gone (their finalizers still apply)."""
        uids = self._all_uids()
        for rtype in list(self.types.values()):
            for obj in list(self.objects.get(rtype.key, {}).values()):
                refs = obj["metadata"].get("ownerReferences") or []
                if refs and not any(r.get("uid") in uids for r in refs) and not obj["metadata"].get("deletionTimestamp"):
                    meta = obj["metadata"]
                    if (meta.get("namespace") or "", meta["name"]) in self.objects.get(rtype.key, {}) and \
                            rtype.key in self.types:
                        self.delete(rtype, meta.get("namespace"), meta["name"])

    def _finish_foreground(self) -> None:
        for rtype in list(self.types.values()):
            for obj in list(self.objects.get(rtype.key, {}).values()):
                meta = obj["metadata"]
                if "foregroundDeletion" in (meta.get("finalizers") or []) and not any(
                        ref.get("blockOwnerDeletion") for _, dep in self._dependents(meta["uid"])
                        for ref in dep["metadata"].get("ownerReferences", []) if ref.get("uid") == meta["uid"]):
                    meta["finalizers"] = [f for f in meta["finalizers"] if f != "foregroundDeletion"]
                    if meta["finalizers"]:
                        meta["resourceVersion"] = self._next_rv()
                        self._emit(rtype, "MODIFIED", obj)
                    else:
                        self._remove(rtype, obj)

    # ---- watch -------------------------------------------------------------------------------------------------
    def watch(self, rtype: ResourceType, namespace: Optional[str], matches: Callable[[dict], bool],
              since: Optional[str]) -> tuple[Watcher, list[dict]]:
        """Register a watcher; returns it and the events to replay first. Raises 410 if `since` is too old."""
        watcher = Watcher(asyncio.Queue(), namespace, matches)
        backlog: list[dict] = []
        if since in (None, "", "0"):
            items, _ = self.list(rtype, namespace, matches)
            backlog = [{"type": "ADDED", "object": item} for item in items]
        else:
            try:
                start = int(since)
            except ValueError:
                raise ApiError(400, f"invalid resourceVersion {since!r}")
            history = self.history[rtype.key]
            if history and start < history[0][0] - 1 and len(history) == history.maxlen:
                raise ApiError(410, f"too old resource version: {start} ({history[0][0] - 1})", "Expired")
            for rv, event_type, obj, old in history:
                if rv > start:
                    event = _filtered(namespace, matches, event_type, obj, old)
                    if event is not None:
                        backlog.append({"type": event, "object": obj})
        self.watchers[rtype.key].add(watcher)
        return watcher, backlog

    def unwatch(self, rtype: ResourceType, watcher: Watcher) -> None:
        self.watchers.get(rtype.key, set()).discard(watcher)


def _filtered(namespace: Optional[str], matches: Callable[[dict], bool], event_type: str, obj: dict,
              old: Optional[dict]) -> Optional[str]:
    if namespace and obj["metadata"].get("namespace") != namespace:
        return None
    now_matches = matches(obj)
    if event_type != "MODIFIED" or old is None:
        return event_type if now_matches else None
    was = matches(old)
    if now_matches:
        return "MODIFIED" if was else "ADDED"
    return "DELETED" if was else None


def _without_times(obj: dict) -> dict:
    """For no-op detection: an object minus its managedFields timestamps."""
    result = dict(obj)
    meta = dict(result.get("metadata") or {})
    meta["managedFields"] = [{k: v for k, v in e.items() if k != "time"} for e in meta.get("managedFields") or []]
    result["metadata"] = meta
    return result


def _go_list(values) -> str:
    return "[" + " ".join(sorted(values)) + "]"
