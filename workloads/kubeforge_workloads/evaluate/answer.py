"""One row end to end: the endpoint answers the question (temperature 0), the judge grades the answer on every
criterion. A request the endpoint or judge rejects, or a judge that never gives a valid verdict, makes the row an
error row (counted in rows.failed, kept with what it has); an unreachable endpoint fails the attempt instead."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kubeforge_workloads.common.endpoints import ChatEndpoint, RequestRejected
from kubeforge_workloads.evaluate.dataset import EvalRow
from kubeforge_workloads.evaluate.judge import Criterion, JudgeReplyError, grade, weighted_score


@dataclass(frozen=True)
class RowPlan:
    """What every row is put through."""

    endpoint: ChatEndpoint
    max_tokens: int
    judge: Optional[ChatEndpoint] = None
    criteria: tuple[Criterion, ...] = ()
    judge_temperature: float = 0.1
    reply_attempts: int = 3


def row_result(row: EvalRow, retrieved: dict[str, list[str]]) -> dict:
    """A row's result before anything is answered (results.py lists the fields)."""
    return {"id": row.id, "question": row.question, "expected_answer": row.expected_answer, "answer": None,
            "retrieved": retrieved, "scores": {}, "justifications": {}, "score": None, "latency_seconds": None,
            "prompt_tokens": 0, "completion_tokens": 0, "judge_requests": 0, "error": None, "raw_reply": None}


def evaluate_row(row: EvalRow, plan: RowPlan, retrieved: dict[str, list[str]]) -> dict:
    """The row's result, answered and graded."""
    result = row_result(row, retrieved)
    try:
        reply = plan.endpoint.chat([{"role": "user", "content": row.question}], temperature=0.0,
                                   max_tokens=plan.max_tokens)
    except RequestRejected as error:
        result["error"] = f"generation: {error}"
        return result
    result.update(answer=reply.text, latency_seconds=round(reply.seconds, 6), prompt_tokens=reply.prompt_tokens,
                  completion_tokens=reply.completion_tokens)
    if plan.judge is None:
        return result
    for criterion in plan.criteria:
        try:
            verdict = grade(plan.judge, criterion, row.question, reply.text, row.expected_answer,
                            plan.judge_temperature, plan.reply_attempts)
        except JudgeReplyError as error:
            result["judge_requests"] += plan.reply_attempts
            result.update(error=f"judge: {error}", raw_reply=error.raw)
            return result
        except RequestRejected as error:
            result["judge_requests"] += 1
            result["error"] = f"judge: {error}"
            return result
        result["judge_requests"] += verdict.replies
        result["scores"][criterion.name] = verdict.score
        result["justifications"][criterion.name] = verdict.justification
    result["score"] = weighted_score(result["scores"], list(plan.criteria))
    return result
