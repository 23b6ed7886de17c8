"""API errors as kube-apiserver `Status` bodies."""

from __future__ import annotations

from typing import Optional

_REASONS = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed", 409: "Conflict", 410: "Gone",
            415: "UnsupportedMediaType", 422: "Invalid", 500: "InternalError"}


class ApiError(Exception):
    def __init__(self, code: int, message: str, reason: Optional[str] = None, details: Optional[dict] = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> dict:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def not_found(qualified: str, name: str, kind_group: tuple[str, str]) -> ApiError:
    return ApiError(404, f'{qualified} "{name}" not found',
                    details={"name": name, "group": kind_group[1], "kind": kind_group[0]})


def already_exists(qualified: str, name: str, kind_group: tuple[str, str]) -> ApiError:
    return ApiError(409, f'{qualified} "{name}" already exists', "AlreadyExists",
                    {"name": name, "group": kind_group[1], "kind": kind_group[0]})


def conflict(qualified: str, name: str, kind_group: tuple[str, str]) -> ApiError:
    return ApiError(409, f'Operation cannot be fulfilled on {qualified} "{name}": the object has been modified; '
                         "please apply your changes to the latest version and try again", "Conflict",
                    {"name": name, "group": kind_group[1], "kind": kind_group[0]})


def invalid(kind: str, qualified_kind: str, name: str, group: str, causes: list[str]) -> ApiError:
    shown = list(dict.fromkeys(causes))  # the message lists each distinct error once (ErrorList.ToAggregate)
    joined = shown[0] if len(shown) == 1 else "[" + ", ".join(shown) + "]"
    return ApiError(422, f'{qualified_kind} "{name}" is invalid: {joined}', "Invalid", {
        "name": name, "group": group, "kind": kind,
        "causes": [_cause(c) for c in causes]})


_CAUSE_REASONS = [("Unsupported value", "FieldValueNotSupported"), ("Required value", "FieldValueRequired"),
                  ("Too long", "FieldValueTooLong"), ("Too many", "FieldValueTooMany"),
                  ("Forbidden", "FieldValueForbidden"), ("Duplicate value", "FieldValueDuplicate"),
                  ("Invalid value", "FieldValueInvalid")]


def _cause(text: str) -> dict:
    field, _, message = text.partition(": ")
    reason = next((r for prefix, r in _CAUSE_REASONS if message.startswith(prefix)), "FieldValueInvalid")
    return {"reason": reason, "message": message or text, "field": field}
