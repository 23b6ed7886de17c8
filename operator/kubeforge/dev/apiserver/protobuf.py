"""Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) for the built-in
kinds kubectl's typed commands send that way (`kubectl create configmap|secret|namespace|serviceaccount|
service`). Responses are always JSON (kubectl's Accept lists application/json too).

The envelope is the 4-byte magic "k8s\\0" and a runtime.Unknown message; field numbers below are those of
k8s.io/api's and k8s.io/apimachinery's generated.proto."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import Any, Callable, Optional

MAGIC = b"k8s\x00"
Schema = dict[int, tuple[str, Any]]  # field number -> (name, kind): "str" | "int" | "bool" | "bytes" | Schema |
# ("map", value kind) | ("list", kind) | "time" | "intorstr"

TIME: Schema = {1: ("seconds", "int"), 2: ("nanos", "int")}
OWNER_REF: Schema = {1: ("kind", "str"), 3: ("name", "str"), 4: ("uid", "str"), 5: ("apiVersion", "str"),
                     6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool")}
OBJECT_META: Schema = {
    1: ("name", "str"), 2: ("generateName", "str"), 3: ("namespace", "str"), 5: ("uid", "str"),
    6: ("resourceVersion", "str"), 7: ("generation", "int"), 11: ("labels", ("map", "str")),
    12: ("annotations", ("map", "str")), 13: ("ownerReferences", ("list", OWNER_REF)),
    14: ("finalizers", ("list", "str")),
}
OBJECT_REF: Schema = {1: ("kind", "str"), 2: ("namespace", "str"), 3: ("name", "str"), 4: ("uid", "str"),
                      5: ("apiVersion", "str"), 6: ("resourceVersion", "str"), 7: ("fieldPath", "str")}
LOCAL_REF: Schema = {1: ("name", "str")}
SERVICE_PORT: Schema = {1: ("name", "str"), 2: ("protocol", "str"), 3: ("port", "int"), 4: ("targetPort", "intorstr"),
                        5: ("nodePort", "int"), 6: ("appProtocol", "str")}
KINDS: dict[str, Schema] = {
    "ConfigMap": {1: ("metadata", OBJECT_META), 2: ("data", ("map", "str")), 3: ("binaryData", ("map", "bytes")),
                  4: ("immutable", "bool")},
    "Secret": {1: ("metadata", OBJECT_META), 2: ("data", ("map", "bytes")), 3: ("type", "str"),
               4: ("stringData", ("map", "str")), 5: ("immutable", "bool")},
    "Namespace": {1: ("metadata", OBJECT_META), 2: ("spec", {1: ("finalizers", ("list", "str"))}),
                  3: ("status", {1: ("phase", "str")})},
    "ServiceAccount": {1: ("metadata", OBJECT_META), 2: ("secrets", ("list", OBJECT_REF)),
                       3: ("imagePullSecrets", ("list", LOCAL_REF)), 4: ("automountServiceAccountToken", "bool")},
    "Service": {1: ("metadata", OBJECT_META), 2: ("spec", {
        1: ("ports", ("list", SERVICE_PORT)), 2: ("selector", ("map", "str")), 3: ("clusterIP", "str"),
        4: ("type", "str"), 7: ("externalName", "str")})},
    "DeleteOptions": {1: ("gracePeriodSeconds", "int"), 2: ("preconditions", {1: ("uid", "str"),
                                                                            2: ("resourceVersion", "str")}),
                      3: ("orphanDependents", "bool"), 4: ("propagationPolicy", "str"), 5: ("dryRun", ("list", "str"))},
}
_INT_OR_STRING: Schema = {1: ("type", "int"), 2: ("intVal", "int"), 3: ("strVal", "str")}


class ProtobufError(ValueError):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes):
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        yield number, value


def _scalar(kind: Any, value: Any) -> Any:
    if kind == "str":
        return value.decode()
    if kind == "bytes":
        return base64.b64encode(value).decode()
    if kind == "int":
        return value - (1 << 64) if value >= 1 << 63 else value
    if kind == "bool":
        return bool(value)
    if kind == "time":
        seconds = decode_message(value, TIME).get("seconds", 0)
        return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind == "intorstr":
        parsed = decode_message(value, _INT_OR_STRING)
        return parsed.get("strVal", "") if parsed.get("type") == 1 else parsed.get("intVal", 0)
    if isinstance(kind, dict):
        return decode_message(value, kind)
    raise ProtobufError(f"unknown kind {kind!r}")


def decode_message(data: bytes, schema: Schema) -> dict:
    result: dict = {}
    for number, value in _fields(data):
        if number not in schema:
            continue  # fields the emulator does not model are dropped (as pruning would)
        name, kind = schema[number]
        if isinstance(kind, tuple) and kind[0] == "map":
            entry = {n: v for n, v in _fields(value)}
            result.setdefault(name, {})[entry.get(1, b"").decode()] = _scalar(kind[1], entry.get(2, b""))
        elif isinstance(kind, tuple) and kind[0] == "list":
            result.setdefault(name, []).append(_scalar(kind[1], value))
        else:
            result[name] = _scalar(kind, value)
    return result


def decode(body: bytes, expected_kind: Optional[str] = None) -> dict:
    """A protobuf-encoded object as the JSON-shaped dict the store takes."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing the k8s protobuf magic prefix")
    unknown = {n: v for n, v in _fields(body[len(MAGIC):])}
    type_meta = decode_message(unknown.get(1, b""), {1: ("apiVersion", "str"), 2: ("kind", "str")})
    kind = type_meta.get("kind") or expected_kind or ""
    if kind not in KINDS:
        raise ProtobufError(f"protobuf bodies of kind {kind!r} are not supported; send application/json")
    obj = decode_message(unknown.get(2, b""), KINDS[kind])
    obj["apiVersion"], obj["kind"] = type_meta.get("apiVersion") or "v1", kind
    return obj


is_protobuf: Callable[[str], bool] = lambda content_type: "protobuf" in (content_type or "")
