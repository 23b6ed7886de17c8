"""Retry decisions: user rules first, then the built-in policy, with exponential backoff."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from kubeforge.api.shared import FailurePolicy, FailureReason, FailureRule, RuleAction
from kubeforge.resilience.classify import ObservedFailure

NEVER_RETRIED = frozenset({FailureReason.USER_ERROR})


@dataclass(frozen=True)
class Decision:
    retry: bool
    counted: bool
    """Whether this failure uses up one of maxRestarts."""
    delay_seconds: int
    summary: str
    rule: Optional[int] = None
    """Index of the user rule that decided, if any."""


def _rule_matches(rule: FailureRule, failure: ObservedFailure, reason: FailureReason) -> bool:
    if rule.on_exit_codes is not None:
        return failure.effective_exit_code() in rule.on_exit_codes
    if rule.on_log_pattern is not None:
        try:
            return re.search(rule.on_log_pattern, failure.text) is not None
        except re.error:
            return False
    return rule.on_reason == reason


def backoff_delay(policy: FailurePolicy, retry_number: int) -> int:
    """Delay before retry number `retry_number` (1-based): initial * 2^(n-1), capped."""
    initial = policy.backoff.initial_seconds
    return min(policy.backoff.max_seconds, initial * (2 ** max(retry_number - 1, 0)))


def decide(policy: FailurePolicy, reason: FailureReason, failure: ObservedFailure,
           counted_restarts: int, total_retries: int) -> Decision:
    """Decide what follows a failed attempt.

    `counted_restarts`: earlier retries that counted against maxRestarts;
    `total_retries`: all earlier retries (drives the backoff).
    """
    action: Optional[RuleAction] = None
    rule_index = None
    for index, rule in enumerate(policy.rules):
        if _rule_matches(rule, failure, reason):
            action, rule_index = rule.action, index
            break
    why = f"rule {rule_index} ({action.value})" if action else f"reason {reason.value}"

    if action == RuleAction.FAIL or (action is None and reason in NEVER_RETRIED):
        return Decision(False, True, 0, f"not retried: {why}", rule_index)
    counted = action != RuleAction.IGNORE
    if counted and counted_restarts >= policy.max_restarts:
        return Decision(False, True, 0,
                        f"maxRestarts ({policy.max_restarts}) exhausted; last failure: {reason.value}", rule_index)
    delay = backoff_delay(policy, total_retries + 1)
    return Decision(True, counted, delay, f"retrying in {delay}s: {why}", rule_index)


def count_restarts(attempt_counted: Sequence[Optional[bool]]) -> int:
    """Retries so far that count: every attempt after the first unless a rule said Ignore."""
    return sum(1 for counted in attempt_counted[1:] if counted is not False)
