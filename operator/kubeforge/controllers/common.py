"""What every kind's pure reconcile shares: the plan it returns, the pass that builds it, the resource's
prefix and workload context, progress rendering and error wording. No I/O and no kopf here."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from pydantic import ValidationError

from kubeforge.api.shared import CommonSpec
from kubeforge.api.status import ConditionType, Phase, Reason
from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext
from kubeforge.controllers.conditions import set_kstatus
from kubeforge.settings import Settings
from kubeforge.storage.layout import ResourcePrefix, checkpoint_step_of
from kubeforge.storage.progress import Progress
from kubeforge.timefmt import parse_time, rfc3339

KOPF_STATUS_KEYS = ("kopf",)


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: dict
    create: list[dict] = field(default_factory=list)
    """Children to create (RayJobs); an existing child of the same name is adopted only if it is ours."""
    apply: list[dict] = field(default_factory=list)
    """Children to converge with server-side apply (RayServices): sent whole, the server keeps what is unchanged."""
    delete: list[str] = field(default_factory=list)
    """Names of child RayJobs to delete (hung attempts, attempts that never started)."""
    events: list[Event] = field(default_factory=list)
    requeue_after: Optional[float] = None


def resource_prefix(obj: dict, spec: CommonSpec, settings: Settings) -> ResourcePrefix:
    meta = obj["metadata"]
    return ResourcePrefix.for_resource(spec.storage.bucket or settings.bucket, meta["namespace"], obj["kind"],
                                       meta["name"], spec.storage.prefix)


def workload_context(obj: dict, spec: CommonSpec, attempt: int, settings: Settings,
                     inputs: Optional[dict[str, Any]] = None) -> WorkloadContext:
    meta = obj["metadata"]
    prefix = resource_prefix(obj, spec, settings)
    return WorkloadContext(
        kind=obj["kind"], namespace=meta["namespace"], name=meta["name"], uid=meta["uid"],
        generation=meta.get("generation", 1), attempt=attempt, spec=obj["spec"],
        storage=StorageContext(bucket=prefix.bucket, prefix=prefix.prefix),
        mlflow=MlflowContext(experiment=spec.mlflow.experiment_for(obj),
                             run_name=meta["name"], tracking_uri=settings.mlflow_tracking_uri),
        inputs=inputs or {},
    )


def validation_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        location = ".".join(str(p) for p in item["loc"])
        parts.append(f"spec.{location}: {item['msg']}" if location else item["msg"])
    return "; ".join(parts)


def summarize(message: str, keep_lines: int = 3) -> str:
    """First line and last lines of a long message (Ray appends the log tail after the first line)."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) <= keep_lines + 1:
        return " | ".join(lines)
    return " | ".join([lines[0], "...", *lines[-keep_lines:]])


def stalled_reason(status: dict) -> Optional[str]:
    for condition in status.get("conditions") or []:
        if condition.get("type") == ConditionType.STALLED.value and condition.get("status") == "True":
            return condition.get("reason")
    return None


class Pass:
    """One reconcile pass: accumulates status edits and events, then yields a Plan."""

    keeps_previous = False
    """A re-runnable resource with a previous result stays Ready on it whatever its current run does."""
    run_reason = "Created"
    """Why the run this pass may start is due: Created, SpecChanged or Scheduled."""

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
                  message: str, announce: bool = True) -> None:
        """Set phase and kstatus conditions; a phase change is announced as an event unless the caller posts
        a more specific one for the same moment."""
        reason_text = reason.value if isinstance(reason, Reason) else reason
        if self.keeps_previous:
            ready = True
            phase = Phase.READY if phase == Phase.FAILED else phase
        previous = self.status.get("phase")
        self.status["phase"] = phase.value
        self.status["message"] = message
        self.status["conditions"] = set_kstatus(
            self.status.get("conditions") or [], ready=ready, reconciling=reconciling, stalled=stalled,
            reason=reason_text, message=message, generation=self.generation, now=self.now_text)
        if previous != phase.value and announce:
            self.event("Warning" if phase == Phase.FAILED else "Normal", reason_text, message)

    def invalid(self, message: str) -> Plan:
        self.set_phase(Phase.FAILED, ready=False, reconciling=False, stalled=True, reason=Reason.INVALID_SPEC,
                       message=f"invalid spec: {message}. Fix the spec and re-apply; nothing was started.")
        return self.done()

    def done(self, requeue_after: Optional[float] = None) -> Plan:
        self.plan.requeue_after = requeue_after
        return self.plan


def render_progress(progress: Progress, started_at: Optional[str], unit: str) -> dict:
    """status.progress from a heartbeat: `done/total unit (pct%)` for printer columns, and an ETA from this
    attempt's own pace (work done before a resume is not counted as this attempt's speed)."""
    done, total = progress.step, progress.total_steps
    summary = f"{done}/{total}" if total else str(done)
    if unit != "steps":
        summary += f" {unit}"
    if total:
        summary += f" ({100 * done // max(total, 1)}%)"
    eta = None
    if total and progress.throughput and done:
        started, updated = parse_time(started_at), parse_time(progress.updated_at)
        if started and updated and updated > started:
            done_this_attempt = done - (checkpoint_step_of(progress.resumed_from) or 0)
            seconds_per_unit = (updated - started).total_seconds() / max(done_this_attempt, 1)
            eta = int(seconds_per_unit * (total - done))
    return {k: v for k, v in {
        "attempt": progress.attempt, "phase": progress.phase, "step": done, "totalSteps": total,
        "epoch": progress.epoch, "loss": progress.loss, "tokensPerSecond": progress.throughput,
        "lastCheckpoint": progress.last_checkpoint, "updatedAt": progress.updated_at,
        "etaSeconds": eta, "summary": summary,
    }.items() if v is not None}
