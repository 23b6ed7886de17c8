"""The LLM judge: one prompt per criterion (its rubric and a few-shot example per score), a strict JSON verdict
{"score": int 0-3, "justification": str}, bounded retries, and the weighted score.

A reply that is not exactly such an object is retried up to judge.maxReplyAttempts times; then the row is an error
row carrying the raw reply (JudgeReplyError), never dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from kubeforge.api.evalrun import DEFAULT_WEIGHTS, JUDGE_SCALE, JudgeSpec
from kubeforge_workloads.common.errors import UserError
from kubeforge_workloads.evaluate.rubrics import BUILTIN, Example

SYSTEM_PROMPT = ("You are an impartial judge grading one answer to a question on one criterion, using the rubric "
                 f"and the graded examples. Scores are integers from {JUDGE_SCALE[0]} to {JUDGE_SCALE[1]}. Reply "
                 'with only a JSON object: {"score": <integer>, "justification": "<one or two sentences>"}.')


@dataclass(frozen=True)
class Criterion:
    name: str
    weight: float
    """Normalised: the weights of a run's criteria sum to 1."""
    rubric: str
    examples: tuple[Example, ...]


@dataclass(frozen=True)
class Verdict:
    score: int
    justification: str
    replies: int
    """Judge requests this verdict took (1 unless earlier replies were malformed)."""


class JudgeReplyError(Exception):
    """The judge gave no valid verdict in the allowed attempts; `raw` is its last reply."""

    def __init__(self, criterion: str, attempts: int, problem: str, raw: str):
        super().__init__(f"judge reply for {criterion} invalid after {attempts} attempt(s): {problem}")
        self.raw = raw


class InvalidVerdict(ValueError):
    pass


def criteria_of(judge: JudgeSpec) -> list[Criterion]:
    """The run's criteria (default: correctness .6, comprehensiveness .2, readability .2), built-in rubrics and
    examples filled in, weights normalised."""
    chosen = [(c.name, c.weight, c.rubric, tuple(Example(e.score, e.question, e.answer, e.reasoning)
                                                 for e in c.examples)) for c in judge.criteria] \
        or [(name, weight, None, ()) for name, weight in DEFAULT_WEIGHTS.items()]
    total = sum(weight for _, weight, _, _ in chosen)
    criteria = []
    for name, weight, rubric, examples in chosen:
        builtin = BUILTIN.get(name)
        if rubric is None and builtin is None:
            raise UserError(f"spec.judge.criteria {name!r} has no built-in rubric ({', '.join(BUILTIN)}): give "
                            "it a rubric")
        criteria.append(Criterion(name, weight / total, rubric or builtin.text,
                                  examples or (builtin.examples if builtin else ())))
    return criteria


def judge_messages(criterion: Criterion, question: str, answer: str, expected_answer: Optional[str]) -> list[dict]:
    """The chat messages asking for one verdict."""
    parts = [f"Criterion and rubric:\n{criterion.rubric}"]
    if criterion.examples:
        parts.append("Graded examples:\n" + "\n\n".join(
            f"Example (score {e.score}):\nQuestion: {e.question}\nAnswer: {e.answer}\n"
            + json.dumps({"score": e.score, "justification": e.reasoning})
            for e in sorted(criterion.examples, key=lambda e: e.score)))
    parts.append(f"Question: {question}")
    if expected_answer:
        parts.append(f"Expected answer: {expected_answer}")
    parts.append(f"Answer to grade: {answer}")
    parts.append(f"Grade the answer on {criterion.name}. Reply with only the JSON object.")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]


def prompt_template(criterion: Criterion) -> str:
    """The prompt of one criterion with placeholders, as logged to MLflow."""
    messages = judge_messages(criterion, "{question}", "{answer}", "{expected_answer}")
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)


def parse_verdict(text: str) -> tuple[int, str]:
    """(score, justification) from a reply that is exactly one JSON object with an integer score in the scale and
    a string justification; anything else raises InvalidVerdict."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError) as error:
        raise InvalidVerdict(f"not JSON ({error})") from None
    if not isinstance(value, dict):
        raise InvalidVerdict(f"a JSON {type(value).__name__}, not an object")
    score, justification = value.get("score"), value.get("justification")
    if isinstance(score, bool) or not isinstance(score, int):
        raise InvalidVerdict(f"score {score!r} is not an integer")
    if not JUDGE_SCALE[0] <= score <= JUDGE_SCALE[1]:
        raise InvalidVerdict(f"score {score} is outside {JUDGE_SCALE[0]}-{JUDGE_SCALE[1]}")
    if not isinstance(justification, str):
        raise InvalidVerdict("justification is missing or not a string")
    return score, justification


def grade(judge, criterion: Criterion, question: str, answer: str, expected_answer: Optional[str],
          temperature: float, attempts: int) -> Verdict:
    """Ask `judge` (a ChatEndpoint) until it gives a valid verdict, at most `attempts` times."""
    messages = judge_messages(criterion, question, answer, expected_answer)
    problem, raw = "", ""
    for attempt in range(1, attempts + 1):
        raw = judge.chat(messages, temperature=temperature, json_reply=True).text
        try:
            score, justification = parse_verdict(raw)
        except InvalidVerdict as error:
            problem = str(error)
            continue
        return Verdict(score, justification, attempt)
    raise JudgeReplyError(criterion.name, attempts, problem, raw)


def weighted_score(scores: dict[str, int], criteria: list[Criterion]) -> float:
    """The criteria's scores combined by their (normalised) weights."""
    return sum(criterion.weight * scores[criterion.name] for criterion in criteria)
