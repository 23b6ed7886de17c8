"""Generic failure handling for every batch kind: classify a failed attempt, decide, detect hangs."""

from kubeforge.resilience.classify import ObservedFailure, classify
from kubeforge.resilience.policy import Decision, decide
from kubeforge.resilience.watchdog import Activity, Stuck, Watch, activity_of, parse_duration, watch

__all__ = ["ObservedFailure", "classify", "Decision", "decide", "Activity", "Stuck", "Watch", "activity_of",
           "parse_duration", "watch"]
