"""The EvalRun question set: rows parsed, graded relevance kept, and every bad row named by its line."""

from __future__ import annotations

import pytest

from kubeforge.api.workload import ExitCode
from kubeforge_workloads.common.errors import DataError, UserError
from kubeforge_workloads.evaluate.dataset import EvalRow, load_rows, parse_rows

URI = "s3://b/questions.jsonl"


def test_rows_with_lists_and_grades():
    raw = (b'{"id": 1, "question": "q1", "expected_answer": "a1", "relevant_doc_ids": ["d1", "d2"]}\n\n'
           b'{"id": "two", "question": "q2", "relevant_doc_ids": {"d3": 2, "d4": 0}}\n')
    assert parse_rows(raw, URI) == [EvalRow("1", "q1", "a1", {"d1": 1, "d2": 1}),
                                    EvalRow("two", "q2", None, {"d3": 2, "d4": 0})]


@pytest.mark.parametrize("line, message", [
    (b'{"id": 1, "question": "q"', "line 2 is not valid JSON"),
    (b'["q"]', "line 2 is a JSON list"),
    (b'{"question": "q"}', "line 2: id must be"),
    (b'{"id": 2, "question": ""}', "line 2: question must be a non-empty string"),
    (b'{"id": 1, "question": "again"}', "line 2: id '1' repeats line 1"),
    (b'{"id": 2, "question": "q", "relevant_doc_ids": {"d": 1.5}}', "grade of 'd' must be an integer"),
    (b'{"id": 2, "question": "q", "relevant_doc_ids": "d"}', "relevant_doc_ids must be a list"),
    (b'{"id": 2, "question": "q", "answer": "a"}', "unknown field(s) answer"),
])
def test_a_bad_row_is_a_data_error_naming_its_line(line, message):
    with pytest.raises(DataError) as raised:
        parse_rows(b'{"id": 1, "question": "fine"}\n' + line + b"\n", URI)
    assert message in str(raised.value) and URI in str(raised.value)
    assert raised.value.exit_code == ExitCode.DATA_ERROR


def test_an_empty_or_missing_dataset_is_named(object_store):
    with pytest.raises(DataError, match="holds no rows"):
        parse_rows(b"\n", URI)
    with pytest.raises(UserError, match="does not exist") as raised:
        load_rows(object_store, "s3://kfbucket/missing.jsonl")
    assert raised.value.exit_code == ExitCode.USER_ERROR
