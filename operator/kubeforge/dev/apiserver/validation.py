"""Structural-schema behaviour of custom resources: defaulting, pruning, OpenAPI validation and CEL rules,
with errors worded as kube-apiserver words them."""

from __future__ import annotations

import copy
import json
import logging
import re
from typing import Any, Optional

log = logging.getLogger(__name__)
_UNSUPPORTED_CEL: set[str] = set()
_PROGRAMS: dict[str, Any] = {}
_MISSING: Any = object()
_OBJECT_META_FIELDS = {"name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
                       "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
                       "ownerReferences", "finalizers", "managedFields"}


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return "object"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if value is None:
        return "null"
    return '"object"' if isinstance(value, dict) else '"array"'


def _type_ok(value: Any, schema: dict) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, (int, str)) and not isinstance(value, bool)
    kind = schema.get("type")
    if value is None:
        return bool(schema.get("nullable"))
    return {
        None: True,
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
    }.get(kind, True)


def apply_defaults(value: Any, schema: Optional[dict]) -> Any:
    if not schema:
        return value
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(value[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in list(value):
                if key not in (schema.get("properties") or {}):
                    value[key] = apply_defaults(value[key], extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def prune(value: Any, schema: Optional[dict], path: str, unknown: list[str]) -> Any:
    """Drop fields the schema does not know (recording their paths), as structural pruning does."""
    if not schema or schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties"):
        return value
    if isinstance(value, dict) and schema.get("type", "object") == "object":
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields")
        for key in list(value):
            child = f"{path}.{key}" if path else key
            if key in props:
                value[key] = prune(value[key], props[key], child, unknown)
            elif isinstance(extra, dict):
                value[key] = prune(value[key], extra, child, unknown)
            elif extra is True or preserve or schema.get("x-kubernetes-embedded-resource") and key in (
                    "apiVersion", "kind", "metadata"):
                continue
            else:
                unknown.append(child)
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"], f"{path}[{i}]", unknown) for i, item in enumerate(value)]
    return value


_NOT_CHECKED = ('<nil>: Invalid value: "null": some validation rules were not checked because the object was '
                'invalid; correct the existing errors to complete validation')


def validate(value: Any, schema: Optional[dict], path: str = "", old: Any = _MISSING,
             earlier: Optional[list[str]] = None) -> list[str]:
    """OpenAPI v3 validation of `value` with kube-apiserver's messages, then its CEL rules (`old`: the
    previous value at this path for transition rules, or _MISSING on create). As on the real server
    (hasBlockingErr), a type error, unsupported enum value, missing required field, Too long or Too many
    anywhere (here or in `earlier` errors of the same object, e.g. its metadata) skips every CEL rule and
    says so."""
    errors = _structural(value, schema, path)
    if not schema or not _has_rules(schema):
        return errors
    if any(_blocks_cel(error) for error in errors + (earlier or [])):
        return errors + [_NOT_CHECKED]
    return errors + _cel_tree(value, schema, path or _CEL_ROOT, old)


_CEL_ROOT = "<nil>"  # the CEL validator's root field path is nil, which Go prints as <nil>


def _blocks_cel(error: str) -> bool:
    detail = error.split(": ", 1)[-1]
    return detail.startswith(("Unsupported value", "Required value", "Too long", "Too many")) or \
        " in body must be of type " in detail


def _has_rules(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    if schema.get("x-kubernetes-validations"):
        return True
    children = list((schema.get("properties") or {}).values()) + [schema.get("items"), schema.get("additionalProperties")]
    return any(_has_rules(child) for child in children)


def _structural(value: Any, schema: Optional[dict], path: str = "") -> list[str]:
    if not schema:
        return []
    errors: list[str] = []
    where = path or "<root>"
    if not _type_ok(value, schema):
        expected = "integer or string" if schema.get("x-kubernetes-int-or-string") else schema.get("type")
        shown = json.dumps(_type_name(value))
        return [f"{where}: Invalid value: {shown}: {where} in body must be of type {expected}: {shown}"]
    if value is None:
        return []
    if "enum" in schema and value not in schema["enum"]:
        options = ", ".join(_show(o) for o in schema["enum"])
        errors.append(f"{where}: Unsupported value: {_show(value)}: supported values: {options}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None:
            if schema.get("exclusiveMinimum") and value <= low:
                errors.append(f"{where}: Invalid value: {_show(value)}: {where} in body should be greater than {low}")
            elif value < low:
                errors.append(f"{where}: Invalid value: {_show(value)}: {where} in body should be greater than or equal to {low}")
        if high is not None:
            if schema.get("exclusiveMaximum") and value >= high:
                errors.append(f"{where}: Invalid value: {_show(value)}: {where} in body should be less than {high}")
            elif value > high:
                errors.append(f"{where}: Invalid value: {_show(value)}: {where} in body should be less than or equal to {high}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: Too long: may not be more than {schema['maxLength']} bytes")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: Invalid value: {_show(value)}: {where} in body should be at least "
                          f"{schema['minLength']} chars long")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: Invalid value: {_show(value)}: {where} in body should match '{schema['pattern']}'")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: Invalid value: {len(value)}: {where} in body should have at least "
                          f"{schema['minItems']} items")
        if isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                errors += _structural(item, schema["items"], f"{path}[{index}]")
    if isinstance(value, dict):
        for name in schema.get("required") or []:
            if name not in value:
                errors.append(f"{path + '.' if path else ''}{name}: Required value")
        props = schema.get("properties") or {}
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            if key in props:
                errors += _structural(item, props[key], child)
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += _structural(item, schema["additionalProperties"], child)
    return errors


def _cel_tree(value: Any, schema: dict, where: str, old: Any) -> list[str]:
    """The CEL validator's walk: a node's rules, then its children's, each child paired with its old value
    where the real server correlates one (object properties and map values by key, items of
    `x-kubernetes-list-type: map` lists by their keys; other list items have no old value)."""
    errors = _cel(value, schema, where, old)
    path = "" if where == _CEL_ROOT else where
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            child_schema = props.get(key, extra if key not in props else None)
            if isinstance(child_schema, dict) and _has_rules(child_schema):
                errors += _cel_tree(item, child_schema, f"{path}.{key}" if path else key, _child(old, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict) and _has_rules(schema["items"]):
        keys = schema.get("x-kubernetes-list-map-keys") or []
        for index, item in enumerate(value):
            previous = _MISSING
            if schema.get("x-kubernetes-list-type") == "map" and keys and isinstance(old, list) and isinstance(item, dict):
                previous = next((o for o in old if isinstance(o, dict) and all(o.get(k) == item.get(k) for k in keys)),
                                _MISSING)
            errors += _cel_tree(item, schema["items"], f"{path}[{index}]", previous)
    return errors


def _child(old: Any, key: str) -> Any:
    return old[key] if isinstance(old, dict) and key in old else _MISSING


class _Optional:
    """CEL's optional type, as `oldSelf` is one for rules with optionalOldSelf: true (cel-python has none)."""

    def __init__(self, value: Any = _MISSING):
        self.value = value


def _has_value(optional: Any) -> Any:
    import celpy

    return celpy.celtypes.BoolType(isinstance(optional, _Optional) and optional.value is not _MISSING)


def _value(optional: Any) -> Any:
    if not isinstance(optional, _Optional) or optional.value is _MISSING:
        raise ValueError("optional.none() dereference")
    return optional.value


def _or_value(optional: Any, default: Any) -> Any:
    return optional.value if isinstance(optional, _Optional) and optional.value is not _MISSING else default


_OPTIONAL_FUNCTIONS = {"hasValue": _has_value, "value": _value, "orValue": _or_value}


def _program(expression: str):
    import celpy

    if expression not in _PROGRAMS:
        env = celpy.Environment()
        _PROGRAMS[expression] = env.program(env.compile(expression), functions=_OPTIONAL_FUNCTIONS)
    return _PROGRAMS[expression]


def _unsupported(expression: str, error: Any) -> None:
    if expression not in _UNSUPPORTED_CEL:
        _UNSUPPORTED_CEL.add(expression)
        log.warning("CEL rule not evaluated by the emulator (%s): %s", error, expression)


def _message(rule: dict, activation: dict) -> str:
    """ruleMessageOrDefault, or messageExpression's result; a messageExpression that fails, is not a string,
    is blank or spans lines falls back to the message, as on the real server."""
    fallback = (rule.get("message") or "").strip() or f"failed rule: {rule['rule'].strip()}"
    if not rule.get("messageExpression"):
        return fallback
    try:
        rendered = _program(rule["messageExpression"]).evaluate(activation)
    except Exception as error:
        _unsupported(rule["messageExpression"], error)
        return fallback
    if isinstance(rendered, Exception) or not isinstance(rendered, str):
        return fallback
    rendered = str(rendered).strip()
    return rendered if rendered and "\n" not in rendered and "\r" not in rendered else fallback


def _cel(value: Any, schema: dict, where: str, old: Any = _MISSING) -> list[str]:
    """x-kubernetes-validations with cel-python, as apiextensions' CEL validator runs them. Transition rules
    (those using oldSelf) run only on updates where the old value exists, unless optionalOldSelf: then they
    also run on create and on a new value, with oldSelf an optional (hasValue(), value(), orValue()).
    Errors show the schema's type ("object") as the value, at the rule's fieldPath, with its reason.
    Expressions cel-python cannot compile or evaluate are logged once and skipped, so they never reject a
    valid object; a missing key is an error as on the real server."""
    rules = schema.get("x-kubernetes-validations") or []
    if not rules:
        return []
    import celpy

    shown = json.dumps(schema.get("type", ""))  # the real server shows the schema's type, not the value
    errors = []
    for rule in rules:
        expression = rule["rule"]
        activation = {"self": celpy.json_to_cel(value)}
        if "oldSelf" in expression:
            if rule.get("optionalOldSelf"):
                activation["oldSelf"] = _Optional(_MISSING if old is _MISSING else celpy.json_to_cel(old))
            elif old is _MISSING:
                continue
            else:
                activation["oldSelf"] = celpy.json_to_cel(old)
        try:
            result = _program(expression).evaluate(activation)
        except Exception as error:  # compile errors and evaluator bugs: not this object's fault
            _unsupported(expression, error)
            continue
        field = (rule.get("fieldPath") or "").strip()
        location = f"{'' if where == _CEL_ROOT else where}{field}".lstrip(".") if field else where
        if isinstance(result, Exception):
            if "no such key" in str(result.args[0] if result.args else result):
                errors.append(f"{location}: Invalid value: {shown}: {result.args[0]} evaluating rule: {expression}")
            else:
                _unsupported(expression, result)
            continue
        if bool(result):
            continue
        message = _message(rule, activation)
        reason = rule.get("reason", "FieldValueInvalid")
        if reason == "FieldValueRequired":
            errors.append(f"{location}: Required value: {message}")
        elif reason == "FieldValueForbidden":
            errors.append(f"{location}: Forbidden: {message}")
        elif reason == "FieldValueDuplicate":
            errors.append(f"{location}: Duplicate value: {shown}")
        else:
            errors.append(f"{location}: Invalid value: {shown}: {message}")
    return errors


def unknown_metadata(meta: dict) -> list[str]:
    """Prune fields ObjectMeta does not have; returns their paths."""
    unknown = [f"metadata.{key}" for key in meta if key not in _OBJECT_META_FIELDS]
    for path in unknown:
        del meta[path.split(".", 1)[1]]
    return unknown


def check_custom_resource(obj: dict, schema: Optional[dict], old: Optional[dict] = None,
                          metadata_errors: Optional[list[str]] = None) -> tuple[dict, list[str], list[str]]:
    """Default, prune and validate one custom resource (`metadata_errors`: found before, which may keep its
    CEL rules from running). Returns (object, errors, pruned field paths)."""
    if not schema:
        return obj, [], []
    obj = apply_defaults(obj, schema)
    unknown: list[str] = []
    root = {k: obj[k] for k in ("apiVersion", "kind", "metadata") if k in obj}  # always allowed at the root
    obj = prune({k: v for k, v in obj.items() if k not in root}, schema, "", unknown)
    obj.update(root)
    body_schema = {k: v for k, v in schema.items() if k != "properties"}
    body_schema["properties"] = {k: v for k, v in (schema.get("properties") or {}).items() if k != "metadata"}
    return obj, validate(obj, body_schema, "", old if old is not None else _MISSING, metadata_errors), unknown
