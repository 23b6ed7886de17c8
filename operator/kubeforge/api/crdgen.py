"""Generate CustomResourceDefinitions (apiextensions.k8s.io/v1) from the pydantic models.

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 schema:
no $ref, no anyOf for optionals, no additionalProperties: false, exclusive bounds as booleans,
free-form maps as x-kubernetes-preserve-unknown-fields.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from kubeforge.api.kinds import KINDS, KindInfo
from kubeforge.api.meta import CATEGORY, GROUP, VERSION

_DROP_KEYS = {"title", "$defs"}


def _resolve(schema: dict, defs: dict) -> dict:
    if "$ref" in schema:
        target = copy.deepcopy(defs[schema["$ref"].split("/")[-1]])
        extra = {k: v for k, v in schema.items() if k != "$ref"}
        return _resolve({**target, **extra}, defs)
    if "allOf" in schema and len(schema["allOf"]) == 1:
        inner = _resolve(schema["allOf"][0], defs)
        return {**inner, **{k: v for k, v in schema.items() if k != "allOf"}}
    return schema


def structural(schema: dict, defs: dict) -> dict:
    """Turn one pydantic JSON-schema node into a structural OpenAPI v3 node."""
    schema = _resolve(schema, defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"union types cannot be expressed structurally: {schema}")
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if rest.get("default", "missing") is None:
            rest.pop("default")
        return structural({**_resolve(options[0], defs), **rest}, defs)

    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP_KEYS:
            continue
        if key == "properties":
            out["properties"] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = structural(value, defs)
        elif key == "additionalProperties":
            if value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out["additionalProperties"] = structural(value, defs)
            # False: structural schemas prune unknown fields instead
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "minLength" and schema.get("type") == "array":
            out["minItems"] = value
        elif key == "maxLength" and schema.get("type") == "array":
            out["maxItems"] = value
        else:
            out[key] = copy.deepcopy(value)
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "description" in out and "default" in out:
        out["description"] = _with_default(out["description"], out["default"])
    return out


def _with_default(description: str, default: Any) -> str:
    """kubectl explain shows descriptions, not schema defaults: name a scalar default in the description, from the
    model that applies it, so the two cannot disagree."""
    if isinstance(default, (dict, list)) or "Default:" in description:
        return description
    shown = default if isinstance(default, str) else json.dumps(default)
    return f"{description.rstrip()} Default: {shown}."


def immutable_spec_rule(info: KindInfo) -> dict:
    """CEL transition rule refusing changes to every spec field but the kind's mutable_after_creation.

    Compared field by field (presence, then value) rather than `self == oldSelf`, so the exempt fields may change."""
    fixed = [field.alias or name for name, field in info.spec_model.model_fields.items()
             if (field.alias or name) not in info.mutable_after_creation]
    rule = " && ".join(f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})"
                       for f in fixed)
    mutable = info.mutable_after_creation
    exempt = ", ".join(mutable[:-1]) + f" and {mutable[-1]}"
    return {"rule": rule,
            "message": f"spec is immutable once created, except {exempt}: delete and re-create the {info.kind} "
                       f"to change it"}


def model_schema(model: type) -> dict:
    raw = model.model_json_schema(by_alias=True)
    return structural(raw, raw.get("$defs", {}))


def crd_for(info: KindInfo) -> dict:
    spec_schema = model_schema(info.spec_model)
    status_schema = model_schema(info.status_model)
    status_schema["x-kubernetes-preserve-unknown-fields"] = True
    description = spec_schema.pop("description", "")
    if info.one_shot:
        spec_schema.setdefault("x-kubernetes-validations", []).append(immutable_spec_rule(info))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "kubeforge"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": [info.short_name],
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": info.printer_columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": description,
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
                        "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
                        "metadata": {"type": "object"},
                        "spec": {**spec_schema, "description": description},
                        "status": status_schema,
                    },
                }},
            }],
        },
    }


def render(info: KindInfo) -> str:
    header = "# Generated by `kubeforge crds generate` from kubeforge.api; do not edit.\n"
    return header + yaml.safe_dump(crd_for(info), sort_keys=False, width=120)


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for info in KINDS:
        path = directory / f"{GROUP}_{info.plural}.yaml"
        path.write_text(render(info))
        written.append(path)
    return written


def stale_files(directory: Path) -> list[Path]:
    """Generated files that are missing or differ from the models (the staleness check)."""
    stale = []
    for info in KINDS:
        path = directory / f"{GROUP}_{info.plural}.yaml"
        if not path.exists() or path.read_text() != render(info):
            stale.append(path)
    return stale
