"""Validate objects against CRD openAPIV3Schemas, as a test helper (OpenAPI 3.0 semantics)."""

from __future__ import annotations

from pathlib import Path

import yaml
from openapi_schema_validator import OAS30Validator


def crd_schema(path: Path, version: str) -> dict:
    crd = yaml.safe_load(path.read_text())
    served = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    return served["schema"]["openAPIV3Schema"]


def schema_errors(schema: dict, obj: dict) -> list[str]:
    validator = OAS30Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
