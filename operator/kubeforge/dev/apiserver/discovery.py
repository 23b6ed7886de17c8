"""Discovery documents and OpenAPI (v2 and v3) built from the registered types, for kubectl and clients."""

from __future__ import annotations

import copy
import hashlib
import json

from kubeforge.dev.apiserver.types import ResourceType

SERVER_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-kubeforge-dev", "gitCommit": "",
                  "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23",
                  "compiler": "gc", "platform": "linux/amd64"}
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
OBJECT_META_SCHEMA = {
    "description": "ObjectMeta is metadata that all persisted resources must have.",
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "Name must be unique within a namespace."},
        "namespace": {"type": "string", "description": "Namespace defines the space within which each name must be unique."},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Map of string keys and values."},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Unstructured key value map."},
        "uid": {"type": "string", "description": "UID is the unique in time and space value for this object."},
        "resourceVersion": {"type": "string", "description": "An opaque value that represents the internal version of this object."},
        "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state."},
        "creationTimestamp": {"type": "string", "format": "date-time", "description": "Creation time."},
        "deletionTimestamp": {"type": "string", "format": "date-time", "description": "Deletion time."},
        "finalizers": {"type": "array", "items": {"type": "string"}, "description": "Must be empty before the object is deleted."},
        "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "description": "Objects depended by this object."},
        "generateName": {"type": "string", "description": "Optional prefix used to generate a unique name."},
        "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                          "description": "Field managers."},
    },
}


def group_versions(types: list[ResourceType]) -> dict[str, list[ResourceType]]:
    grouped: dict[str, list[ResourceType]] = {}
    for rtype in types:
        grouped.setdefault(rtype.api_version, []).append(rtype)
    return grouped


def api_versions() -> dict:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}


def api_group_list(types: list[ResourceType]) -> dict:
    groups: dict[str, list[str]] = {}
    for rtype in types:
        if rtype.group:
            versions = groups.setdefault(rtype.group, [])
            if rtype.version not in versions:
                versions.append(rtype.version)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": group, "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
         "preferredVersion": {"groupVersion": f"{group}/{versions[0]}", "version": versions[0]}}
        for group, versions in sorted(groups.items())]}


def resource_list(group_version: str, types: list[ResourceType]) -> dict:
    resources = []
    for rtype in sorted(types, key=lambda t: t.plural):
        entry = {"name": rtype.plural, "singularName": rtype.singular, "namespaced": rtype.namespaced,
                 "kind": rtype.kind, "verbs": rtype.verbs}
        if rtype.short_names:
            entry["shortNames"] = rtype.short_names
        if rtype.categories:
            entry["categories"] = rtype.categories
        resources.append(entry)
        if rtype.has_status:
            resources.append({"name": f"{rtype.plural}/status", "singularName": "", "namespaced": rtype.namespaced,
                              "kind": rtype.kind, "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def _schema_name(rtype: ResourceType) -> str:
    group = ".".join(reversed(rtype.group.split("."))) if rtype.group else "io.k8s.api.core"
    return f"{group}.{rtype.version}.{rtype.kind}"


def _object_schema(rtype: ResourceType, ref_prefix: str) -> dict:
    schema = copy.deepcopy(rtype.schema) if rtype.schema else {
        "type": "object", "description": f"{rtype.kind} (built-in; schema not served by the sandbox)",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}}
    schema.setdefault("properties", {})["metadata"] = {
        "allOf": [{"$ref": f"{ref_prefix}{OBJECT_META}"}],
        "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}
    schema["x-kubernetes-group-version-kind"] = [{"group": rtype.group, "kind": rtype.kind, "version": rtype.version}]
    return schema


def _paths(rtype: ResourceType) -> dict:
    gvk = {"group": rtype.group, "kind": rtype.kind, "version": rtype.version}
    base = f"/api/{rtype.version}" if not rtype.group else f"/apis/{rtype.group}/{rtype.version}"
    scope = f"{base}/namespaces/{{namespace}}/{rtype.plural}" if rtype.namespaced else f"{base}/{rtype.plural}"
    params = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True},
               "description": "Ignore, Warn or Strict"},
              {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
              {"name": "fieldManager", "in": "query", "schema": {"type": "string"}}]
    operation = {"x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": {"200": {"description": "OK"}}}
    return {
        scope: {"post": {**operation, "x-kubernetes-action": "post", "operationId": f"create{rtype.kind}"},
                "get": {**operation, "x-kubernetes-action": "list", "operationId": f"list{rtype.kind}"}},
        f"{scope}/{{name}}": {"put": {**operation, "x-kubernetes-action": "put", "operationId": f"replace{rtype.kind}"},
                              "patch": {**operation, "x-kubernetes-action": "patch", "operationId": f"patch{rtype.kind}"},
                              "get": {**operation, "x-kubernetes-action": "get", "operationId": f"read{rtype.kind}"}},
    }


def openapi_v3_document(types: list[ResourceType]) -> dict:
    schemas = {OBJECT_META: OBJECT_META_SCHEMA}
    paths: dict = {}
    for rtype in types:
        schemas[_schema_name(rtype)] = _object_schema(rtype, "#/components/schemas/")
        paths.update(_paths(rtype))
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
            "paths": paths, "components": {"schemas": schemas}}


def openapi_v3_index(grouped: dict[str, list[ResourceType]]) -> dict:
    paths = {}
    for group_version, types in grouped.items():
        key = f"api/{group_version}" if "/" not in group_version else f"apis/{group_version}"
        digest = hashlib.sha256(json.dumps(openapi_v3_document(types), sort_keys=True).encode()).hexdigest()[:16].upper()
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return {"paths": paths}


def openapi_v2(types: list[ResourceType]) -> dict:
    definitions = {OBJECT_META: OBJECT_META_SCHEMA}
    paths: dict = {}
    for rtype in types:
        definitions[_schema_name(rtype)] = _object_schema(rtype, "#/definitions/")
        paths.update(_paths(rtype))
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
            "paths": paths, "definitions": definitions}
