"""The EvalRun judge: the prompt carries the rubric and one example per score, replies are parsed strictly, a bad reply
is retried and then becomes an error row with the raw text, and the default criteria weigh 60/20/20."""

from __future__ import annotations

import json

import pytest

from kubeforge.api.evalrun import JudgeSpec
from kubeforge_workloads.common.endpoints import ChatReply
from kubeforge_workloads.evaluate.aggregate import judge_metrics, row_counts
from kubeforge_workloads.evaluate.answer import RowPlan, evaluate_row
from kubeforge_workloads.evaluate.dataset import EvalRow
from kubeforge_workloads.evaluate.judge import (
    InvalidVerdict, JudgeReplyError, criteria_of, grade, judge_messages, parse_verdict, prompt_template, weighted_score,
)
from kubeforge_workloads.evaluate.rubrics import BUILTIN


class ScriptedChat:
    """Replies from a list, in order, recording every request (the HTTP side is tested in the integration test)."""

    def __init__(self, replies: list[str]):
        self.replies, self.requests = list(replies), []

    def chat(self, messages, temperature, max_tokens=None, json_reply=False):
        self.requests.append({"messages": messages, "temperature": temperature, "json_reply": json_reply})
        return ChatReply(self.replies.pop(0), 0.01, 5, 3)


def test_prompt_has_the_rubric_every_score_example_and_the_row():
    (correctness, *_) = criteria_of(JudgeSpec(endpoint_ref="judge"))
    system, user = judge_messages(correctness, "What is LoRA?", "Low-rank adapters.", "A low-rank adaptation.")
    assert '"score"' in system["content"] and '"justification"' in system["content"]
    text = user["content"]
    assert BUILTIN["correctness"].text in text
    for example in BUILTIN["correctness"].examples:
        assert f"Example (score {example.score})" in text and example.answer in text and example.reasoning in text
    assert {e.score for e in BUILTIN["correctness"].examples} == {0, 1, 2, 3}
    assert "Question: What is LoRA?" in text and "Expected answer: A low-rank adaptation." in text
    assert text.index("Answer to grade: Low-rank adapters.") > text.index("Example (score 3)")
    assert "{answer}" in prompt_template(correctness)


def test_every_builtin_criterion_has_one_example_per_score():
    for name, rubric in BUILTIN.items():
        assert sorted(e.score for e in rubric.examples) == [0, 1, 2, 3], name


@pytest.mark.parametrize("reply", [
    "not json", '```json\n{"score": 2, "justification": "ok"}\n```', '[2, "ok"]',
    '{"score": "2", "justification": "x"}', '{"score": 2.0, "justification": "x"}',
    '{"score": true, "justification": "x"}', '{"score": 4, "justification": "x"}',
    '{"score": -1, "justification": "x"}', '{"score": 2}', '{"score": 2, "justification": 7}',
])
def test_replies_are_parsed_strictly(reply):
    with pytest.raises(InvalidVerdict):
        parse_verdict(reply)


def test_a_valid_reply_parses():
    assert parse_verdict('{"score": 0, "justification": "wrong"}') == (0, "wrong")
    assert parse_verdict(' {"justification": "fine", "score": 3} ') == (3, "fine")


def test_a_bad_reply_is_retried_and_asks_for_json_at_the_judge_temperature():
    (criterion, *_) = criteria_of(JudgeSpec(endpoint_ref="judge"))
    judge = ScriptedChat(["oops", '{"score": 2, "justification": "mostly right"}'])
    verdict = grade(judge, criterion, "q", "a", None, temperature=0.1, attempts=3)
    assert (verdict.score, verdict.justification, verdict.replies) == (2, "mostly right", 2)
    assert all(r["json_reply"] and r["temperature"] == 0.1 for r in judge.requests)


def test_replies_still_bad_after_the_attempts_make_an_error_row_with_the_raw_reply():
    criteria = criteria_of(JudgeSpec(endpoint_ref="judge"))
    judge = ScriptedChat(["nope", "still nope", "{\"score\": 9, \"justification\": \"x\"}"])
    with pytest.raises(JudgeReplyError) as raised:
        grade(judge, criteria[0], "q", "a", None, temperature=0.1, attempts=3)
    assert raised.value.raw == '{"score": 9, "justification": "x"}' and "outside 0-3" in str(raised.value)
    assert len(judge.requests) == 3

    endpoint = ScriptedChat(["an answer", "another answer"])
    good = json.dumps({"score": 3, "justification": "good"})
    plan = RowPlan(endpoint=endpoint, max_tokens=32, criteria=tuple(criteria), reply_attempts=2,
                   judge=ScriptedChat([good, good, good] + ["bad", "worse"]))
    rows = [evaluate_row(EvalRow("1", "q1"), plan, {}), evaluate_row(EvalRow("2", "q2"), plan, {})]
    assert rows[0]["error"] is None and rows[0]["score"] == pytest.approx(3.0)
    assert rows[1]["error"].startswith("judge: judge reply for correctness invalid after 2 attempt(s)")
    assert (rows[1]["raw_reply"], rows[1]["answer"], rows[1]["judge_requests"]) == ("worse", "another answer", 2)
    assert row_counts(rows) == {"total": 2, "scored": 1, "failed": 1}


def test_default_criteria_weigh_60_20_20_and_custom_weights_are_normalised():
    criteria = criteria_of(JudgeSpec(endpoint_ref="judge"))
    assert [(c.name, c.weight) for c in criteria] == [("correctness", 0.6), ("comprehensiveness", 0.2),
                                                      ("readability", 0.2)]
    assert weighted_score({"correctness": 3, "comprehensiveness": 0, "readability": 0}, criteria) == pytest.approx(1.8)
    assert weighted_score({"correctness": 0, "comprehensiveness": 3, "readability": 3}, criteria) == pytest.approx(1.2)
    custom = criteria_of(JudgeSpec.model_validate({"endpointRef": "judge", "criteria": [
        {"name": "relevance", "weight": 0.5}, {"name": "tone", "weight": 0.25, "rubric": "3: polite ... 0: rude"}]}))
    assert [c.name for c in custom] == ["relevance", "tone"]
    assert [c.weight for c in custom] == [pytest.approx(2 / 3), pytest.approx(1 / 3)]
    assert custom[0].rubric == BUILTIN["relevance"].text and custom[1].examples == ()

    rows = [{"score": weighted_score(s, criteria), "scores": s, "error": None} for s in (
        {"correctness": 3, "comprehensiveness": 2, "readability": 1},
        {"correctness": 1, "comprehensiveness": 1, "readability": 3})] + [{"score": None, "scores": {}, "error": "x"}]
    metrics = judge_metrics(rows, criteria)
    assert metrics["judge/correctness"] == 2.0 and metrics["judge/readability"] == 2.0
    assert metrics["judge/score"] == pytest.approx(0.6 * 2 + 0.2 * 1.5 + 0.2 * 2)
