"""Retry decisions (resilience/policy.py): user rules, the built-in policy, backoff and which retries count."""

import pytest

from kubeforge.api.shared import FailurePolicy, FailureReason
from kubeforge.resilience import ObservedFailure, decide
from kubeforge.resilience.policy import backoff_delay, count_restarts

NODE_LOST = ObservedFailure(message="NodeLost")


def policy(**kwargs) -> FailurePolicy:
    return FailurePolicy.model_validate(kwargs)


def test_backoff_grows_with_each_retry_through_decide():
    p = policy(maxRestarts=10, backoff={"initialSeconds": 10, "maxSeconds": 1000})
    delays = [decide(p, FailureReason.INFRASTRUCTURE, NODE_LOST, retries, retries).delay_seconds
              for retries in range(5)]
    assert delays == [10, 20, 40, 80, 160]


def test_backoff_follows_all_retries_not_only_the_counted_ones():
    p = policy(maxRestarts=10, backoff={"initialSeconds": 10, "maxSeconds": 1000})
    assert decide(p, FailureReason.INFRASTRUCTURE, NODE_LOST, counted_restarts=0, total_retries=3).delay_seconds == 80


def test_backoff_is_capped_and_zero_stays_zero():
    assert [backoff_delay(policy(backoff={"initialSeconds": 7, "maxSeconds": 30}), n) for n in (1, 2, 3, 9)] == \
        [7, 14, 28, 30]
    assert backoff_delay(policy(backoff={"initialSeconds": 0, "maxSeconds": 0}), 5) == 0
    assert backoff_delay(policy(backoff={"initialSeconds": 5, "maxSeconds": 60}), 0) == 5


def test_a_retry_says_when_and_why():
    decision = decide(policy(), FailureReason.INFRASTRUCTURE, NODE_LOST, 0, 0)
    assert decision.retry and decision.counted and decision.rule is None
    assert decision.summary == "retrying in 10s: reason Infrastructure"


def test_exhausted_retries_name_the_limit_and_the_last_reason():
    decision = decide(policy(maxRestarts=1), FailureReason.HANG, ObservedFailure(hang=True), 1, 1)
    assert decision.retry is False and decision.delay_seconds == 0
    assert decision.summary == "maxRestarts (1) exhausted; last failure: Hang"


def test_user_errors_fail_at_once_even_with_restarts_left():
    decision = decide(policy(maxRestarts=5), FailureReason.USER_ERROR, ObservedFailure(exit_code=64), 0, 0)
    assert decision.retry is False and decision.counted and decision.delay_seconds == 0 and decision.rule is None
    assert decision.summary == "not retried: reason UserError"


def test_exhausted_retries_keep_the_rule_that_matched():
    p = policy(maxRestarts=1, rules=[{"onLogPattern": "flaky", "action": "Retry"}])
    decision = decide(p, FailureReason.UNKNOWN, ObservedFailure(message="flaky"), 1, 1)
    assert not decision.retry and decision.counted and decision.rule == 0


def test_on_exit_codes_matches_a_code_found_only_in_the_rayjob_message():
    p = policy(maxRestarts=0, rules=[{"onExitCodes": [3], "action": "Ignore"}])
    failure = ObservedFailure(message="Job entrypoint command failed with exit code 3, last available logs: ...")
    decision = decide(p, FailureReason.UNKNOWN, failure, 0, 0)
    assert decision.rule == 0 and decision.retry and not decision.counted


def test_on_exit_codes_does_not_match_other_codes_or_no_code():
    p = policy(rules=[{"onExitCodes": [3], "action": "Fail"}])
    assert decide(p, FailureReason.UNKNOWN, ObservedFailure(exit_code=4), 0, 0).rule is None
    assert decide(p, FailureReason.UNKNOWN, ObservedFailure(message="exit code 33"), 0, 0).rule is None
    assert decide(p, FailureReason.UNKNOWN, ObservedFailure(message="no code"), 0, 0).rule is None


def test_on_log_pattern_searches_the_message_and_the_log_tail():
    p = policy(rules=[{"onLogPattern": "disk quota", "action": "Fail"}])
    assert decide(p, FailureReason.UNKNOWN, ObservedFailure(log_tail="... disk quota exceeded"), 0, 0).rule == 0
    assert decide(p, FailureReason.UNKNOWN, ObservedFailure(message="disk quota exceeded"), 0, 0).rule == 0
    assert decide(p, FailureReason.UNKNOWN, ObservedFailure(message="quota"), 0, 0).rule is None


def test_the_first_matching_rule_decides():
    p = policy(rules=[{"onReason": "Hang", "action": "Fail"},
                      {"onReason": "Infrastructure", "action": "Ignore"},
                      {"onLogPattern": "Node", "action": "Fail"}])
    decision = decide(p, FailureReason.INFRASTRUCTURE, NODE_LOST, 0, 0)
    assert decision.rule == 1 and decision.retry and not decision.counted
    assert decision.summary == "retrying in 10s: rule 1 (Ignore)"


def test_a_fail_rule_stops_a_retryable_failure_and_says_which_rule():
    p = policy(rules=[{"onReason": "Infrastructure", "action": "Fail"}])
    decision = decide(p, FailureReason.INFRASTRUCTURE, NODE_LOST, 0, 0)
    assert not decision.retry and decision.rule == 0 and decision.summary == "not retried: rule 0 (Fail)"
    assert decision.counted and decision.delay_seconds == 0


def test_a_retry_rule_overrides_the_user_error_verdict_but_still_counts():
    p = policy(maxRestarts=1, rules=[{"onReason": "UserError", "action": "Retry"}])
    first = decide(p, FailureReason.USER_ERROR, ObservedFailure(exit_code=64), 0, 0)
    assert first.retry and first.counted
    assert not decide(p, FailureReason.USER_ERROR, ObservedFailure(exit_code=64), 1, 1).retry


def test_ignored_failures_retry_past_max_restarts():
    p = policy(maxRestarts=1, rules=[{"onExitCodes": [3], "action": "Ignore"}])
    decision = decide(p, FailureReason.UNKNOWN, ObservedFailure(exit_code=3), counted_restarts=1, total_retries=4)
    assert decision.retry and not decision.counted and decision.delay_seconds == 160


@pytest.mark.parametrize("attempts,restarts", [
    ([], 0),
    ([None], 0),                         # the first attempt is not a restart
    ([True], 0),
    ([None, True, None], 2),             # None: recorded before `counted` existed; counts
    ([None, False, False, True], 1),     # Ignore-rule failures never count
    ([None, False, False, False], 0),
])
def test_count_restarts_skips_the_first_attempt_and_ignored_failures(attempts, restarts):
    assert count_restarts(attempts) == restarts
