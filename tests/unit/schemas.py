"""Validate objects against CRD openAPIV3Schemas, as a test helper (OpenAPI 3.0 semantics)."""

from __future__ import annotations

import functools
from pathlib import Path

import yaml
from openapi_schema_validator import OAS30Validator


@functools.lru_cache(maxsize=None)
def crd_schema(path: Path, version: str) -> dict:
    """Parsed once per file and version: KubeRay's CRDs are over a megabyte of YAML each. Read-only for callers."""
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    served = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    return served["schema"]["openAPIV3Schema"]


def schema_errors(schema: dict, obj: dict) -> list[str]:
    validator = OAS30Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
