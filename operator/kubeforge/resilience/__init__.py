"""Generic failure handling for every batch kind: classify a failed attempt, decide, detect hangs."""

from kubeforge.resilience.classify import ObservedFailure, classify
from kubeforge.resilience.policy import Decision, decide
from kubeforge.resilience.watchdog import heartbeat_is_stale, parse_duration

__all__ = ["ObservedFailure", "classify", "Decision", "decide", "heartbeat_is_stale", "parse_duration"]
