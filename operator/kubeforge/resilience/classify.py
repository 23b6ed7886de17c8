"""Failure classification from exit codes, the workload's own report, RayJob messages and log tails."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from kubeforge.api.shared import FailureReason
from kubeforge.api.workload import ExitCode

_EXIT_CODE_REASONS = {
    ExitCode.USER_ERROR: FailureReason.USER_ERROR,
    ExitCode.DATA_ERROR: FailureReason.USER_ERROR,
    ExitCode.NODE_CHECK_FAILED: FailureReason.NODE_CHECK_FAILED,
    ExitCode.OUT_OF_MEMORY: FailureReason.OUT_OF_MEMORY,
    ExitCode.INFRASTRUCTURE: FailureReason.INFRASTRUCTURE,
    137: FailureReason.OUT_OF_MEMORY,  # SIGKILL, almost always the kernel OOM killer in a container
}

# Checked in order; the first match wins. Infrastructure signs come before generic Python errors
# because a lost node often surfaces as a secondary exception in the driver.
_MESSAGE_PATTERNS: tuple[tuple[FailureReason, re.Pattern], ...] = (
    (FailureReason.OUT_OF_MEMORY, re.compile(
        r"OOMKilled|OutOfMemoryError|CUDA out of memory|out of memory|OutOfMemory|memory pressure", re.I)),
    (FailureReason.INFRASTRUCTURE, re.compile(
        r"NodeLost|node .* (died|was lost|removed)|Evicted|preempt|NodeDied|RayletDied|ActorDiedError|"
        r"WorkerCrashedError|RaySystemError|GcsUnavailable|connection (reset|refused)|head pod .*(lost|deleted)|"
        r"NCCL (error|timeout)|ECONNRESET|DeadlineExceeded|Pod .* (failed|deleted)", re.I)),
    # What Ray and KubeRay write when the processes under a job vanish (node gone, SIGKILL): the job's supervisor
    # actor or driver died without a Python error of its own.
    (FailureReason.INFRASTRUCTURE, re.compile(
        r"Job supervisor actor died|The actor died unexpectedly|Worker exit type: (SYSTEM_ERROR|UNEXPECTED_SYSTEM_EXIT)|"
        r"Job entrypoint command failed with exit code -9\b|Ray head pod not found|"
        r"Ray job not found in RayCluster", re.I)),
    (FailureReason.USER_ERROR, re.compile(
        r"ModuleNotFoundError|No module named|ImportError|SyntaxError|NameError|TypeError: .*argument|"
        r"KeyError|FileNotFoundError|No such file|invalid spec|ValidationError", re.I)),
)
_EXIT_CODE_IN_MESSAGE = re.compile(r"exit(?:ed with)? code:? ?(-?\d+)|exit_code[=:] ?(-?\d+)", re.I)


@dataclass(frozen=True)
class ObservedFailure:
    """Everything the operator knows about a failed attempt."""

    message: str = ""
    exit_code: Optional[int] = None
    report_reason: Optional[str] = None
    """Reason the workload wrote in failure.json, when it caught the error itself."""
    log_tail: str = ""
    hang: bool = False
    """The operator stopped the attempt: no progress while running."""
    start_timeout: bool = False
    """The operator stopped the attempt: its Ray job never started running within startTimeout."""

    @property
    def text(self) -> str:
        return "\n".join(part for part in (self.message, self.log_tail) if part)

    def effective_exit_code(self) -> Optional[int]:
        if self.exit_code is not None:
            return self.exit_code
        match = _EXIT_CODE_IN_MESSAGE.search(self.message)
        if match:
            return int(next(g for g in match.groups() if g is not None))
        return None


def classify(failure: ObservedFailure) -> FailureReason:
    if failure.hang:
        return FailureReason.HANG
    if failure.start_timeout:
        return FailureReason.START_TIMEOUT
    # The workload's own verdict wins, unless it could not tell: a driver that saw its worker die reports
    # Unknown, while the RayJob says why the worker died (its container was OOMKilled, its node was lost).
    if failure.report_reason and failure.report_reason != FailureReason.UNKNOWN.value:
        try:
            return FailureReason(failure.report_reason)
        except ValueError:
            pass
    code = failure.effective_exit_code()
    if code is not None and code in _EXIT_CODE_REASONS:
        return _EXIT_CODE_REASONS[code]
    for reason, pattern in _MESSAGE_PATTERNS:
        if pattern.search(failure.text):
            return reason
    return FailureReason.UNKNOWN
