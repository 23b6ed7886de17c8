"""The pure reconcile every batch kind shares (TrainingJob, FineTune, VectorIndex, EvalRun).

`reconcile(kind, obj, observed, now, settings) -> Plan`: from the whole object and what was observed
(child RayJobs, the progress heartbeat, failure reports, results, dependencies) compute the desired
children, the new status and the events. No I/O here; `controllers.wiring` does the I/O.

A kind plugs in through `BatchKind`: checks only the operator can make, dependencies and the inputs it
takes from them, the verdict on a result, status.output, how progress is counted and, for kinds that run
again (a VectorIndex re-sync), when the next run is due. One-shot kinds run once; re-runnable kinds keep
serving their previous result (Ready) while a new run works, and count restarts per run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional, Protocol

from pydantic import ValidationError

from kubeforge.api.kinds import KindInfo
from kubeforge.api.shared import BatchSpec, FailureReason
from kubeforge.api.status import ConditionType, Phase, Reason
from kubeforge.controllers.common import (Pass, Plan, render_progress, resource_prefix, stalled_reason, summarize,
                                          validation_message, workload_context)
from kubeforge.controllers.conditions import condition_status, set_condition
from kubeforge.launch.names import attempt_name
from kubeforge.launch.rayjob import build_rayjob
from kubeforge.resilience import Activity, ObservedFailure, Stuck, activity_of, classify, decide, parse_duration, watch
from kubeforge.resilience.policy import count_restarts
from kubeforge.settings import Settings
from kubeforge.storage.progress import FailureReport, Progress
from kubeforge.timefmt import parse_time, rfc3339

FAILED_JOB_STATUS = {"FAILED", "STOPPED"}
REFUSED_BY_KUBERAY = "ValidationFailed"
WATCHDOG_KEYS = ("waitingSince", "progressMark", "progressTime")
ATTEMPT_HISTORY = 10
"""Attempts a re-runnable kind keeps in status across runs (the current run's are always kept)."""

Dependency = tuple[str, str]
"""(kind, name) of a Kubeforge resource in the same namespace."""


@dataclass
class Observed:
    rayjobs: dict[str, dict] = field(default_factory=dict)
    """Child RayJobs by name."""
    progress: Optional[Progress] = None
    failure_report: Optional[FailureReport] = None
    """failure.json of the current attempt, when its RayJob has ended badly."""
    result: Optional[dict] = None
    """outputs/result.json, when the current attempt succeeded."""
    dependencies: dict[Dependency, Optional[dict]] = field(default_factory=dict)
    """The dependencies' objects as last seen (None: not found)."""
    unmet: list[Any] = field(default_factory=list)
    """Unmet prerequisites (KubeRay CRDs, the bucket, the namespace's workload Secret), each with `reason` and
    `message`; looked at only before a run starts."""


@dataclass(frozen=True)
class Verdict:
    """What a finished run's result means: an EvalRun whose gate failed ends Failed, without a retry."""

    passed: bool
    reason: str = Reason.SUCCEEDED.value
    message: str = ""


class DependencyUnusable(Exception):
    """A Ready dependency that cannot give what this resource needs (e.g. a FineTune without a merged model)."""


class BatchKind(Protocol):
    info: KindInfo
    progress_unit: str
    """What progress counts: steps (training), documents (index builds), rows (evaluations)."""

    def validate(self, spec: Any, obj: dict) -> list[str]:
        """Checks only the operator can make; each message names the field and says what to do."""

    def dependencies(self, spec: Any) -> list[Dependency]:
        """Resources in the same namespace that must be Ready before a run starts."""

    def inputs(self, spec: Any, dependencies: dict[Dependency, dict]) -> dict[str, Any]:
        """What a run takes from its Ready dependencies' status (recorded in status.inputs and handed to the
        workload); raises DependencyUnusable when a dependency cannot provide it."""

    def verdict(self, spec: Any, result: dict) -> Verdict:
        """Whether a run that produced `result` succeeded."""

    def output(self, result: dict) -> dict:
        """status.output from the workload's outputs/result.json."""

    def summary(self, spec: Any, result: dict, finished_at: str) -> dict:
        """Top-level status fields a run's result sets (a VectorIndex's currentVersion, documents, chunks; an
        EvalRun's scores, also when its verdict failed)."""

    def ready_message(self, status: dict, run_number: int) -> str:
        """Re-runnable kinds: the Ready message once a run succeeded."""

    def conditions(self, spec: Any, result: dict) -> list[tuple[str, bool, str, str]]:
        """Conditions of the kind's own a run's result sets, beside kstatus': (type, status, reason, message)."""

    def secret_env(self, spec: Any, inputs: dict[str, Any]) -> list[dict]:
        """Env vars of the Ray pods taken from Secrets (`valueFrom.secretKeyRef`): resolved by the kubelet, so
        a key never enters the RayJob or the workload context."""

    def next_run_at(self, spec: Any, last_run_end: Optional[datetime]) -> Optional[datetime]:
        """Re-runnable kinds: when the next scheduled run is due (None: only on a spec change)."""


class KindBase:
    """Defaults for a batch kind: no dependencies or inputs, every result passes, progress in steps, no schedule."""

    info: KindInfo
    progress_unit = "steps"

    def validate(self, spec: Any, obj: dict) -> list[str]:
        return []

    def dependencies(self, spec: Any) -> list[Dependency]:
        return []

    def inputs(self, spec: Any, dependencies: dict[Dependency, dict]) -> dict[str, Any]:
        return {}

    def verdict(self, spec: Any, result: dict) -> Verdict:
        return Verdict(passed=True)

    def output(self, result: dict) -> dict:
        return dict(result)

    def summary(self, spec: Any, result: dict, finished_at: str) -> dict:
        return {}

    def ready_message(self, status: dict, run_number: int) -> str:
        return f"run {run_number} succeeded"

    def conditions(self, spec: Any, result: dict) -> list[tuple[str, bool, str, str]]:
        return []

    def secret_env(self, spec: Any, inputs: dict[str, Any]) -> list[dict]:
        return []

    def next_run_at(self, spec: Any, last_run_end: Optional[datetime]) -> Optional[datetime]:
        return None


def reconcile(kind: BatchKind, obj: dict, observed: Observed, now: datetime, settings: Settings) -> Plan:
    run = Pass(obj, now)
    status = run.status
    rerunnable = not kind.info.one_shot
    run.keeps_previous = rerunnable and bool(status.get("output"))
    if kind.info.one_shot and status.get("phase") in (Phase.SUCCEEDED.value, Phase.FAILED.value) \
            and stalled_reason(status) != Reason.INVALID_SPEC.value:
        return _finished(run)

    try:
        spec = kind.info.spec_model.model_validate(obj.get("spec") or {})
    except ValidationError as error:
        return run.invalid(validation_message(error))
    problems = kind.validate(spec, obj)
    if problems:
        return run.invalid("; ".join(problems))

    attempts: list[dict] = status.get("attempts") or []
    current = attempts[-1] if attempts else None
    if current is None or _run_ended(status, current):
        if current is not None:
            if not rerunnable:
                return _finished(run)
            due = _next_run_due(kind, spec, run)
            if due is None or due > now:
                return run.done((due - now).total_seconds() if due else None)
        return _start_run(run, kind, spec, observed, settings)

    if current.get("outcome") == "Failed":
        due = parse_time(status.get("nextAttemptAt")) or now
        if now >= due:
            return _record_attempt(run, current["number"] + 1, retry=True)
        return run.done((due - now).total_seconds())

    rayjob = observed.rayjobs.get(current["rayJob"])
    if rayjob is None:
        # Recorded in an earlier pass (so its name is saved before it exists), not created yet: create it now.
        run.plan.create.append(_rayjob_for(kind, obj, spec, current["number"], status.get("inputs"), settings))
        return run.done(settings.reconcile_period_seconds)

    _copy_progress(status, current, observed.progress, kind.progress_unit)
    job_status = rayjob.get("status") or {}
    deployment, ray_state = job_status.get("jobDeploymentStatus"), job_status.get("jobStatus")

    if ray_state == "SUCCEEDED" and (deployment == "Complete" or observed.result is not None):
        return _succeeded(run, kind, spec, current, observed)
    if deployment == REFUSED_BY_KUBERAY:
        # KubeRay refused the RayJob (name, spec): a configuration error no retry can fix.
        refusal = summarize(job_status.get("message") or job_status.get("reason") or "invalid RayJob")
        return _failed(run, spec, current, ObservedFailure(
            message=f"KubeRay refused RayJob {current['rayJob']}: {refusal}",
            report_reason=FailureReason.USER_ERROR.value))
    if deployment == "Failed" or ray_state in FAILED_JOB_STATUS:
        return _failed(run, spec, current, _failure_of(job_status, observed.failure_report))
    return _watch_active(run, spec, current, job_status, observed.progress, settings)


def _run_ended(status: dict, current: dict) -> bool:
    """The last attempt succeeded, or (re-runnable kinds) its run was closed after a final failure. A failed
    attempt of an open run is followed by the next one when its backoff ends."""
    return current.get("outcome") == "Succeeded" or "endTime" in (status.get("run") or {})


def _next_run_due(kind: BatchKind, spec: Any, run: Pass) -> Optional[datetime]:
    """A re-runnable kind runs again at once for a new generation, else when its schedule says."""
    last = run.status.get("run") or {}
    if last.get("generation") != run.generation:
        run.run_reason = "SpecChanged"
        return run.now
    run.run_reason = "Scheduled"
    return kind.next_run_at(spec, parse_time(last.get("endTime")))


def _start_run(run: Pass, kind: BatchKind, spec: Any, observed: Observed, settings: Settings) -> Plan:
    """Dependencies first: waiting for them, or for a failed one to be fixed, never consumes a restart."""
    status = run.status
    needed = kind.dependencies(spec)
    found = {key: observed.dependencies.get(key) for key in needed}
    failed, waiting = unready_dependencies(found)
    if failed:
        return _dependency_failed(run, f"{', '.join(failed)} failed; fix or re-create "
                                       f"{'it' if len(failed) == 1 else 'them'} and this resource continues")
    if waiting:
        run.set_phase(Phase.WAITING, ready=False, reconciling=True, stalled=False,
                      reason=Reason.WAITING_FOR_DEPENDENCY, message=f"waiting for {', '.join(waiting)} to become Ready")
        return run.done(settings.reconcile_period_seconds)
    if observed.unmet:
        # Waiting for the platform, like waiting for a dependency: nothing starts, no restart is consumed.
        first = observed.unmet[0]
        run.set_phase(Phase.PENDING, ready=False, reconciling=False, stalled=True, reason=first.reason,
                      message="; ".join(u.message for u in observed.unmet))
        return run.done(settings.reconcile_period_seconds)
    try:
        inputs = kind.inputs(spec, {key: dep for key, dep in found.items() if dep is not None})
    except DependencyUnusable as unusable:
        return _dependency_failed(run, str(unusable))
    if inputs:
        status["inputs"] = inputs
    else:
        status.pop("inputs", None)
    try:  # the pod templates merged with spec.ray.rayClusterSpec: a list item without its merge key fails here
        _rayjob_for(kind, run.obj, spec, 1, inputs, settings)
    except ValueError as error:
        return run.invalid(str(error))
    status.setdefault("storagePrefix", resource_prefix(run.obj, spec, settings).uri())
    attempts = status.setdefault("attempts", [])
    number = attempts[-1]["number"] + 1 if attempts else 1
    if not kind.info.one_shot:
        previous = status.get("run") or {}
        status["run"] = {"number": previous.get("number", 0) + 1, "reason": run.run_reason,
                         "generation": run.generation, "startTime": run.now_text}
        status["attempts"] = attempts[-ATTEMPT_HISTORY:]
        status.pop("restarts", None)
    return _record_attempt(run, number, retry=False)


def unready_dependencies(found: dict[Dependency, Optional[dict]]) -> tuple[list[str], list[str]]:
    """("<Kind> <name>" of the dependencies that failed, of those not Ready yet, "(not found)" marked)."""
    failed = [f"{k} {n}" for (k, n), dep in found.items() if dep is not None and _has_failed(dep)]
    waiting = [f"{k} {n}" + (" (not found)" if dep is None else "") for (k, n), dep in found.items()
               if condition_status(dep, ConditionType.READY.value) != "True"]
    return failed, waiting


def _has_failed(dependency: dict) -> bool:
    status = dependency.get("status") or {}
    return status.get("phase") == Phase.FAILED.value or condition_status(dependency, "Stalled") == "True"


def _dependency_failed(run: Pass, message: str) -> Plan:
    # Not terminal: the dependency can be fixed (re-created, re-synced) and this resource then continues.
    run.set_phase(Phase.WAITING, ready=False, reconciling=False, stalled=True, reason=Reason.DEPENDENCY_FAILED,
                  message=message)
    return run.done()


def _watch_active(run: Pass, spec: BatchSpec, current: dict, job_status: dict, progress: Optional[Progress],
                  settings: Settings) -> Plan:
    """A RayJob that has neither succeeded nor failed: suspended, starting, or running (and maybe hung)."""
    heartbeat = progress if progress and progress.attempt == current["number"] else None
    mark = f"{heartbeat.phase} step {heartbeat.step}" if heartbeat else None
    activity = activity_of(job_status)
    policy = spec.failure_policy
    # Until the workload's first heartbeat of this attempt (imports, Ray Train start-up) the attempt is still
    # starting: startTimeout applies, and hangTimeout only once there is progress that can stand still.
    silent = activity == Activity.RUNNING and heartbeat is None
    verdict = watch(current, Activity.STARTING if silent else activity, mark, run.now,
                    parse_duration(policy.hang_timeout), parse_duration(policy.start_timeout))
    name = current["rayJob"]
    if verdict.stuck == Stuck.HANG:
        run.plan.delete.append(name)
        return _failed(run, spec, current, ObservedFailure(
            message=f"no progress for {policy.hang_timeout} while the Ray job was running ({mark} since "
                    f"{verdict.since}); attempt stopped", hang=True))
    if verdict.stuck == Stuck.START_TIMEOUT:
        run.plan.delete.append(name)
        state = job_status.get("jobDeploymentStatus") or "not yet reported"
        detail = summarize(job_status.get("message") or "") or "no message from KubeRay"
        what = "the workload sent no progress report" if silent else "the Ray job did not start running"
        return _failed(run, spec, current, ObservedFailure(
            message=f"{what} within {policy.start_timeout} (RayJob {name} "
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
        # The step is in status.progress, not here: a message that changed every heartbeat would make every
        # progress report a condition change, written at once instead of at the progress-write cadence.
        run.set_phase(Phase.RUNNING, ready=False, reconciling=True, stalled=False, reason=Reason.RUNNING,
                      message=f"attempt {number} running (RayJob {name})")
    return run.done(min(settings.reconcile_period_seconds, verdict.recheck_after + 1))


def _finished(run: Pass) -> Plan:
    """Finished attempts are history (a new run is a new resource); edits of fields the operator still reads
    (deletionPolicy, failurePolicy) are acknowledged so kstatus readers see the new generation observed."""
    for condition in run.status.get("conditions") or []:
        condition["observedGeneration"] = run.generation
    return run.done()


def _rayjob_for(kind: BatchKind, obj: dict, spec: BatchSpec, attempt: int, inputs: Optional[dict],
                settings: Settings) -> dict:
    context = workload_context(obj, spec, attempt, settings, inputs)
    return build_rayjob(obj, spec, context, kind.info.workload, settings,
                        secret_env=kind.secret_env(spec, inputs or {}))


def _record_attempt(run: Pass, number: int, retry: bool) -> Plan:
    """Record attempt `number` with its child's deterministic name; the next pass creates the child, so the
    name is in the server's status before the RayJob exists (a restarted operator then adopts, never doubles)."""
    name = attempt_name(run.obj["metadata"]["name"], number)
    attempt = {"number": number, "rayJob": name, "startTime": run.now_text, "outcome": "Running",
               "generation": run.generation}
    if "run" in run.status:
        attempt["run"] = run.status["run"]["number"]
    if retry:
        attempt["counted"] = run.status.pop("pendingRetryCounted", True)
    run.status["attempts"].append(attempt)
    run.status.pop("nextAttemptAt", None)
    resume = " (resumes from the latest committed checkpoint)" if retry else ""
    run.event("Normal", "AttemptStarted", f"attempt {number} started as RayJob {name}{resume}")
    run.set_phase(Phase.RUNNING, ready=False, reconciling=True, stalled=False, reason=Reason.LAUNCHING,
                  message=f"attempt {number} launching as RayJob {name}", announce=False)
    return run.done(0)


def _copy_progress(status: dict, current: dict, progress: Optional[Progress], unit: str) -> None:
    if progress is None or progress.attempt != current["number"]:
        return
    status["progress"] = render_progress(progress, current.get("startTime"), unit)
    current["stepReached"] = progress.step
    if progress.goodput is not None:  # workloads that measure it (TrainingJob); its status schema keeps it
        status["goodput"] = progress.goodput.model_dump(mode="json", by_alias=True, exclude_none=True)
    if progress.resumed_from:
        current["resumedFrom"] = progress.resumed_from


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


def _end_run(run: Pass, outcome: str) -> None:
    if "run" in run.status:
        run.status["run"].update(outcome=outcome, endTime=run.now_text)


def _succeeded(run: Pass, kind: BatchKind, spec: Any, current: dict, observed: Observed) -> Plan:
    _end(current, outcome="Succeeded", endTime=run.now_text)
    verdict = kind.verdict(spec, observed.result or {})
    if observed.result is not None:
        run.status["output"] = kind.output(observed.result)
    if observed.result is not None and (verdict.passed or kind.info.one_shot):
        # A one-shot kind's failed verdict still reports what was measured; a re-runnable kind keeps serving
        # its previous result's summary.
        run.status.update(kind.summary(spec, observed.result, run.now_text))
        for type_, value, reason, message in kind.conditions(spec, observed.result):
            run.status["conditions"] = set_condition(run.status.get("conditions") or [], type_, value, reason,
                                                     message, run.generation, run.now_text)
    if not verdict.passed:
        _end_run(run, "Failed")
        run.keeps_previous = False
        run.set_phase(Phase.FAILED, ready=False, reconciling=False, stalled=True, reason=verdict.reason,
                      message=verdict.message or f"the result did not pass ({verdict.reason})")
        return run.done()
    _end_run(run, "Succeeded")
    if kind.info.one_shot:
        run.set_phase(Phase.SUCCEEDED, ready=True, reconciling=False, stalled=False, reason=Reason.SUCCEEDED,
                      message=f"succeeded after {current['number']} attempt(s)")
        return run.done()
    number = run.status["run"]["number"]
    run.set_phase(Phase.READY, ready=True, reconciling=False, stalled=False, reason=Reason.SUCCEEDED,
                  message=kind.ready_message(run.status, number))
    due = kind.next_run_at(spec, run.now)
    return run.done((due - run.now).total_seconds() if due else None)


def _failed(run: Pass, spec: BatchSpec, current: dict, failure: ObservedFailure) -> Plan:
    reason = classify(failure)
    attempts = run.status["attempts"]
    this_run = [a for a in attempts if a.get("run") == current.get("run")]
    counted_so_far = count_restarts([a.get("counted") for a in this_run])
    decision = decide(spec.failure_policy, reason, failure, counted_restarts=counted_so_far,
                      total_retries=len(this_run) - 1)
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

    _end_run(run, "Failed")
    final_reason = Reason.RETRIES_EXHAUSTED if "exhausted" in decision.summary else Reason.FAILED
    previous = "; the previous result is still served" if run.keeps_previous else ""
    run.set_phase(Phase.FAILED, ready=False, reconciling=False, stalled=True, reason=final_reason,
                  message=f"failed after {number} attempt(s): {reason.value}: {failure.message[:300]} "
                          f"({decision.summary}){previous}")
    return run.done()
