"""The question set: JSONL rows {id, question, expected_answer?, relevant_doc_ids?}, validated line by line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from kubeforge.storage.layout import parse_s3_uri
from kubeforge_workloads.common.errors import DataError, UserError

FIELDS = ("id", "question", "expected_answer", "relevant_doc_ids")


@dataclass(frozen=True)
class EvalRow:
    id: str
    question: str
    expected_answer: Optional[str] = None
    relevant: Optional[dict[str, int]] = None
    """Document id -> relevance grade (a plain list of ids means grade 1 each); None when the row has none."""


def load_rows(store, uri: str) -> list[EvalRow]:
    """Every row of the dataset at `uri`; a missing object is a UserError, a bad row a DataError naming its line."""
    bucket, key = parse_s3_uri(uri)
    raw = store.get(bucket, key) if key and not key.endswith("/") else None
    if raw is None:
        raise UserError(f"spec.dataset.uri {uri} does not exist: upload the question set (JSONL) there or fix "
                        "spec.dataset.uri")
    return parse_rows(raw, uri)


def parse_rows(raw: bytes, uri: str) -> list[EvalRow]:
    rows: list[EvalRow] = []
    first_line: dict[str, int] = {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"spec.dataset.uri {uri} is not UTF-8 text ({error}): save it as UTF-8 JSONL") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row = _parse_line(line, f"{uri} line {number}")
        if row.id in first_line:
            raise DataError(f"{uri} line {number}: id {row.id!r} repeats line {first_line[row.id]}: give every "
                            "row its own id")
        first_line[row.id] = number
        rows.append(row)
    if not rows:
        raise DataError(f"spec.dataset.uri {uri} holds no rows: add one JSON object per line with id and question")
    return rows


def _parse_line(line: str, where: str) -> EvalRow:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{where} is not valid JSON ({error.msg} at column {error.colno}): write one JSON object "
                        "per line") from None
    if not isinstance(value, dict):
        raise DataError(f"{where} is a JSON {type(value).__name__}, not an object with id and question")
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise DataError(f"{where}: unknown field(s) {', '.join(unknown)}; a row has {', '.join(FIELDS)}")
    row_id = value.get("id")
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int)) or str(row_id).strip() == "":
        raise DataError(f"{where}: id must be a non-empty string or integer, got {row_id!r}")
    question = value.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: question must be a non-empty string, got {question!r}")
    expected = value.get("expected_answer")
    if expected is not None and not isinstance(expected, str):
        raise DataError(f"{where}: expected_answer must be a string, got {type(expected).__name__}")
    return EvalRow(str(row_id), question, expected, _relevance(value.get("relevant_doc_ids"), where))


def _relevance(value, where: str) -> Optional[dict[str, int]]:
    if value is None:
        return None
    if isinstance(value, list):
        if not all(isinstance(doc, str) and doc for doc in value):
            raise DataError(f"{where}: relevant_doc_ids must list document ids as non-empty strings")
        return {doc: 1 for doc in value}
    if isinstance(value, dict):
        bad = [doc for doc, grade in value.items()
               if isinstance(grade, bool) or not isinstance(grade, int) or grade < 0]
        if bad:
            raise DataError(f"{where}: relevant_doc_ids grade of {bad[0]!r} must be an integer >= 0, got "
                            f"{value[bad[0]]!r}")
        return dict(value)
    raise DataError(f"{where}: relevant_doc_ids must be a list of ids or an object {{doc_id: grade}}, got "
                    f"{type(value).__name__}")
