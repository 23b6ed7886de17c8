"""The pure reconcile step shared by every batch kind (TrainingJob, FineTune, VectorIndex, EvalRun).

`reconcile(kind, obj, observed, now, settings) -> Plan`: from the whole object and what was observed
(child RayJobs, the progress heartbeat, failure reports, results, dependencies) compute the desired
children, the new status and the events. No I/O here; `controllers.wiring` does the I/O.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Optional, Protocol

from pydantic import ValidationError

from kubeforge.api.kinds import KindInfo
from kubeforge.api.shared import CommonSpec, FailureReason
from kubeforge.api.status import ConditionType, Phase, Reason
from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext
from kubeforge.controllers.conditions import condition_status, set_kstatus
from kubeforge.launch.names import attempt_name
from kubeforge.launch.rayjob import build_rayjob
from kubeforge.resilience import Activity, ObservedFailure, Stuck, activity_of, classify, decide, parse_duration, watch
from kubeforge.resilience.policy import count_restarts
from kubeforge.settings import Settings
from kubeforge.storage.layout import ResourcePrefix, checkpoint_step_of
from kubeforge.storage.progress import FailureReport, Progress
from kubeforge.timefmt import parse_time, rfc3339

FAILED_JOB_STATUS = {"FAILED", "STOPPED"}
REFUSED_BY_KUBERAY = "ValidationFailed"
WATCHDOG_KEYS = ("waitingSince", "progressMark", "progressTime")
KOPF_STATUS_KEYS = ("kopf",)


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Observed:
    rayjobs: dict[str, dict] = field(default_factory=dict)
    """Child RayJobs by name."""
    progress: Optional[Progress] = None
    failure_report: Optional[FailureReport] = None
    """failure.json of the current attempt, when its RayJob has ended badly."""
    result: Optional[dict] = None
    """outputs/result.json, when the current attempt succeeded."""
    dependencies: dict[tuple[str, str], Optional[dict]] = field(default_factory=dict)


@dataclass
class Plan:
    status: dict
    create: list[dict] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    """Names of child RayJobs to delete (hung attempts, attempts that never started)."""
    events: list[Event] = field(default_factory=list)
    requeue_after: Optional[float] = None


class BatchKind(Protocol):
    info: KindInfo

    def validate(self, spec: Any, obj: dict) -> list[str]:
        """Checks only the operator can make; each message names the field and says what to do."""

    def dependencies(self, spec: Any) -> list[tuple[str, str]]:
        """(kind, name) of resources in the same namespace that must be Ready first."""

    def output(self, result: dict) -> dict:
        """status.output from the workload's outputs/result.json."""


def resource_prefix(obj: dict, spec: CommonSpec, settings: Settings) -> ResourcePrefix:
    meta = obj["metadata"]
    return ResourcePrefix.for_resource(spec.storage.bucket or settings.bucket, meta["namespace"], obj["kind"],
                                       meta["name"], spec.storage.prefix)


def workload_context(obj: dict, spec: CommonSpec, attempt: int, settings: Settings) -> WorkloadContext:
    meta = obj["metadata"]
    prefix = resource_prefix(obj, spec, settings)
    return WorkloadContext(
        kind=obj["kind"], namespace=meta["namespace"], name=meta["name"], uid=meta["uid"],
        generation=meta.get("generation", 1), attempt=attempt, spec=obj["spec"],
        storage=StorageContext(bucket=prefix.bucket, prefix=prefix.prefix),
        mlflow=MlflowContext(experiment=spec.mlflow.experiment or f"{meta['namespace']}/{obj['kind']}",
                             run_name=meta["name"], tracking_uri=settings.mlflow_tracking_uri),
    )


def validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        location = ".".join(str(p) for p in item["loc"])
        parts.append(f"spec.{location}: {item['msg']}" if location else item["msg"])
    return "; ".join(parts)


class _Pass:
    """One reconcile pass: accumulates status edits and events, then yields a Plan."""

    def __init__(self, obj: dict, now: datetime):
        self.obj = obj
        self.now = now
        self.now_text = rfc3339(now)
        self.generation = obj["metadata"].get("generation")
        self.status = {k: v for k, v in copy.deepcopy(obj.get("status") or {}).items() if k not in KOPF_STATUS_KEYS}
        self.status["observedGeneration"] = self.generation
        self.plan = Plan(status=self.status)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.plan.events.append(Event(type_, reason, message))

    def set_phase(self, phase: Phase, *, ready: bool, reconciling: bool, stalled: bool, reason: Reason | str,
                  message: str) -> None:
        reason_text = reason.value if isinstance(reason, Reason) else reason
        previous = self.status.get("phase")
        self.status["phase"] = phase.value
        self.status["message"] = message
        self.status["conditions"] = set_kstatus(
            self.status.get("conditions") or [], ready=ready, reconciling=reconciling, stalled=stalled,
            reason=reason_text, message=message, generation=self.generation, now=self.now_text)
        if previous != phase.value:
            self.event("Warning" if phase == Phase.FAILED else "Normal", reason_text, message)

    def done(self, requeue_after: Optional[float] = None) -> Plan:
        self.plan.requeue_after = requeue_after
        return self.plan


def reconcile(kind: BatchKind, obj: dict, observed: Observed, now: datetime, settings: Settings) -> Plan:
    run = _Pass(obj, now)
    status = run.status
    phase = status.get("phase")
    stalled_on_spec = _stalled_reason(status) == Reason.INVALID_SPEC.value

    if phase in (Phase.SUCCEEDED.value, Phase.FAILED.value) and not stalled_on_spec:
        return _finished(run)

    try:
        spec = kind.info.spec_model.model_validate(obj.get("spec") or {})
    except ValidationError as error:
        return _invalid(run, validation_message(error))
    problems = kind.validate(spec, obj)
    if problems:
        return _invalid(run, "; ".join(problems))

    waiting = [f"{k} {n}" for k, n in kind.dependencies(spec)
               if condition_status(observed.dependencies.get((k, n)), ConditionType.READY.value) != "True"]
    if waiting and not status.get("attempts"):
        run.set_phase(Phase.WAITING, ready=False, reconciling=True, stalled=False,
                      reason=Reason.WAITING_FOR_DEPENDENCY,
                      message=f"waiting for {', '.join(waiting)} to become Ready")
        return run.done(settings.reconcile_period_seconds)

    status.setdefault("storagePrefix", resource_prefix(obj, spec, settings).uri())
    attempts: list[dict] = status.setdefault("attempts", [])
    if not attempts:
        return _record_attempt(run, 1)

    current = attempts[-1]
    if current.get("outcome") == "Failed":
        due = parse_time(status.get("nextAttemptAt")) or now
        if now >= due:
            return _record_attempt(run, current["number"] + 1)
        return run.done((due - now).total_seconds())

    rayjob = observed.rayjobs.get(current["rayJob"])
    if rayjob is None:
        # Recorded in an earlier pass (so its name is saved before it exists), not created yet: create it now.
        run.plan.create.append(_rayjob_for(kind, obj, spec, current["number"], settings))
        return run.done(settings.reconcile_period_seconds)

    _copy_progress(status, current, observed.progress)
    job_status = rayjob.get("status") or {}
    deployment, ray_state = job_status.get("jobDeploymentStatus"), job_status.get("jobStatus")

    if ray_state == "SUCCEEDED" and (deployment == "Complete" or observed.result is not None):
        return _succeeded(run, kind, current, observed)
    if deployment == REFUSED_BY_KUBERAY:
        # KubeRay refused the RayJob (name, spec): a configuration error no retry can fix.
        refusal = summarize(job_status.get("message") or job_status.get("reason") or "invalid RayJob")
        return _failed(run, spec, current, ObservedFailure(
            message=f"KubeRay refused RayJob {current['rayJob']}: {refusal}",
            report_reason=FailureReason.USER_ERROR.value))
    if deployment == "Failed" or ray_state in FAILED_JOB_STATUS:
        return _failed(run, spec, current, _failure_of(job_status, observed.failure_report))
    return _watch_active(run, spec, current, job_status, observed.progress, settings)


def _watch_active(run: _Pass, spec: CommonSpec, current: dict, job_status: dict, progress: Optional[Progress],
                  settings: Settings) -> Plan:
    """A RayJob that has neither succeeded nor failed: suspended, starting, or running (and maybe hung)."""
    heartbeat = progress if progress and progress.attempt == current["number"] else None
    mark = f"{heartbeat.phase} step {heartbeat.step}" if heartbeat else None
    activity = activity_of(job_status)
    policy = spec.failure_policy
    verdict = watch(current, activity, mark, run.now, parse_duration(policy.hang_timeout),
                    parse_duration(policy.start_timeout))
    name = current["rayJob"]
    if verdict.stuck == Stuck.HANG:
        run.plan.delete.append(name)
        seen = f"{mark}" if mark else "no progress report"
        return _failed(run, spec, current, ObservedFailure(
            message=f"no progress for {policy.hang_timeout} while the Ray job was running ({seen} since "
                    f"{verdict.since}); attempt stopped", hang=True))
    if verdict.stuck == Stuck.START_TIMEOUT:
        run.plan.delete.append(name)
        state = job_status.get("jobDeploymentStatus") or "not yet reported"
        detail = summarize(job_status.get("message") or "") or "no message from KubeRay"
        return _failed(run, spec, current, ObservedFailure(
            message=f"the Ray job did not start running within {policy.start_timeout} (RayJob {name} "
                    f"{state} since {verdict.since}: {detail}); attempt stopped", start_timeout=True))

    number = current["number"]
    if activity == Activity.SUSPENDED:
        run.set_phase(Phase.PENDING, ready=False, reconciling=False, stalled=False, reason=Reason.SUSPENDED,
                      message=f"attempt {number} is suspended (RayJob {name}); it resumes when unsuspended")
        return run.done(settings.reconcile_period_seconds)
    if activity == Activity.STARTING:
        state = job_status.get("jobDeploymentStatus") or "New"
        run.set_phase(Phase.RUNNING, ready=False, reconciling=True, stalled=False, reason=Reason.STARTING,
                      message=f"attempt {number} starting (RayJob {name} {state})")
    else:
        step_text = f" at step {heartbeat.step}" if heartbeat else ""
        run.set_phase(Phase.RUNNING, ready=False, reconciling=True, stalled=False, reason=Reason.RUNNING,
                      message=f"attempt {number} running{step_text} (RayJob {name})")
    return run.done(min(settings.reconcile_period_seconds, verdict.recheck_after + 1))


def _finished(run: _Pass) -> Plan:
    """Finished attempts are history (a new run is a new resource); edits of fields the operator still reads
    (deletionPolicy, failurePolicy) are acknowledged so kstatus readers see the new generation observed."""
    for condition in run.status.get("conditions") or []:
        condition["observedGeneration"] = run.generation
    return run.done()


def _stalled_reason(status: dict) -> Optional[str]:
    for condition in status.get("conditions") or []:
        if condition.get("type") == ConditionType.STALLED.value and condition.get("status") == "True":
            return condition.get("reason")
    return None


def _invalid(run: _Pass, message: str) -> Plan:
    run.set_phase(Phase.FAILED, ready=False, reconciling=False, stalled=True, reason=Reason.INVALID_SPEC,
                  message=f"invalid spec: {message}. Fix the spec and re-apply; nothing was started.")
    return run.done()


def _rayjob_for(kind: BatchKind, obj: dict, spec: CommonSpec, attempt: int, settings: Settings) -> dict:
    context = workload_context(obj, spec, attempt, settings)
    return build_rayjob(obj, spec, context, kind.info.workload, settings)


def _record_attempt(run: _Pass, number: int) -> Plan:
    """Record attempt `number` with its child's deterministic name; the next pass creates the child, so the
    name is in the server's status before the RayJob exists (a restarted operator then adopts, never doubles)."""
    name = attempt_name(run.obj["metadata"]["name"], number)
    attempt = {"number": number, "rayJob": name, "startTime": run.now_text, "outcome": "Running",
               "generation": run.generation}
    if number > 1:
        attempt["counted"] = run.status.pop("pendingRetryCounted", True)
    run.status["attempts"].append(attempt)
    run.status.pop("nextAttemptAt", None)
    resume = " (resumes from the latest committed checkpoint)" if number > 1 else ""
    run.event("Normal", "AttemptStarted", f"attempt {number} started as RayJob {name}{resume}")
    run.set_phase(Phase.RUNNING, ready=False, reconciling=True, stalled=False, reason=Reason.LAUNCHING,
                  message=f"attempt {number} launching as RayJob {name}")
    return run.done(0)


def _copy_progress(status: dict, current: dict, progress: Optional[Progress]) -> None:
    if progress is None or progress.attempt != current["number"]:
        return
    summary = f"{progress.step}/{progress.total_steps}" if progress.total_steps else str(progress.step)
    if progress.total_steps:
        summary += f" ({100 * progress.step // max(progress.total_steps, 1)}%)"
    eta = None
    if progress.total_steps and progress.throughput and progress.step and status.get("attempts"):
        started = parse_time(current.get("startTime"))
        updated = parse_time(progress.updated_at)
        if started and updated and updated > started:
            steps_this_attempt = progress.step - (checkpoint_step_of(progress.resumed_from) or 0)
            seconds_per_step = (updated - started).total_seconds() / max(steps_this_attempt, 1)
            eta = int(seconds_per_step * (progress.total_steps - progress.step))
    status["progress"] = {k: v for k, v in {
        "attempt": progress.attempt, "phase": progress.phase, "step": progress.step, "totalSteps": progress.total_steps,
        "epoch": progress.epoch, "loss": progress.loss, "tokensPerSecond": progress.throughput,
        "lastCheckpoint": progress.last_checkpoint, "updatedAt": progress.updated_at,
        "etaSeconds": eta, "summary": summary,
    }.items() if v is not None}
    current["stepReached"] = progress.step
    if progress.resumed_from:
        current["resumedFrom"] = progress.resumed_from


def summarize(message: str, keep_lines: int = 3) -> str:
    """First line and last lines of a long message (Ray appends the log tail after the first line)."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) <= keep_lines + 1:
        return " | ".join(lines)
    return " | ".join([lines[0], "...", *lines[-keep_lines:]])


def _failure_of(job_status: dict, report: Optional[FailureReport]) -> ObservedFailure:
    """The workload's own report, when it wrote one, says more than the RayJob message."""
    job_message = summarize(job_status.get("message") or job_status.get("reason") or "RayJob failed")
    if report is None:
        return ObservedFailure(message=job_message)
    return ObservedFailure(message=report.message, exit_code=report.exit_code, report_reason=report.reason,
                           log_tail=f"{report.traceback_tail or ''}\nRayJob: {job_message}")


def _end(current: dict, **outcome) -> None:
    """Close an attempt's record; the watchdog's clocks mean nothing once it ended."""
    current.update(outcome)
    for key in WATCHDOG_KEYS:
        current.pop(key, None)


def _succeeded(run: _Pass, kind: BatchKind, current: dict, observed: Observed) -> Plan:
    _end(current, outcome="Succeeded", endTime=run.now_text)
    if observed.result is not None:
        run.status["output"] = kind.output(observed.result)
    run.set_phase(Phase.SUCCEEDED, ready=True, reconciling=False, stalled=False, reason=Reason.SUCCEEDED,
                  message=f"succeeded after {current['number']} attempt(s)")
    return run.done()


def _failed(run: _Pass, spec: CommonSpec, current: dict, failure: ObservedFailure) -> Plan:
    reason = classify(failure)
    attempts = run.status["attempts"]
    counted_so_far = count_restarts([a.get("counted") for a in attempts])
    decision = decide(spec.failure_policy, reason, failure, counted_restarts=counted_so_far,
                      total_retries=len(attempts) - 1)
    _end(current, outcome="Failed", endTime=run.now_text, reason=reason.value, message=failure.message[:1024])
    if failure.effective_exit_code() is not None:
        current["exitCode"] = failure.effective_exit_code()
    number = current["number"]
    run.event("Warning", "AttemptFailed", f"attempt {number} failed ({reason.value}): {failure.message[:300]}")

    if decision.retry:
        # The next attempt's `counted` flag is decided now, from this failure.
        run.status["pendingRetryCounted"] = decision.counted
        run.status["restarts"] = counted_so_far + (1 if decision.counted else 0)
        due = run.now + timedelta(seconds=decision.delay_seconds)
        run.status["nextAttemptAt"] = rfc3339(due)
        run.set_phase(Phase.RETRYING, ready=False, reconciling=True, stalled=False, reason=Reason.BACKING_OFF,
                      message=f"attempt {number} failed ({reason.value}); {decision.summary}")
        return run.done(float(decision.delay_seconds))

    final_reason = Reason.RETRIES_EXHAUSTED if "exhausted" in decision.summary else Reason.FAILED
    run.set_phase(Phase.FAILED, ready=False, reconciling=False, stalled=True, reason=final_reason,
                  message=f"failed after {number} attempt(s): {reason.value}: {failure.message[:300]} ({decision.summary})")
    return run.done()
