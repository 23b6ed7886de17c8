"""One resource's reconcile loop: a pass runs when something the resource depends on changed, or when its
last pass asked for one (a backoff ends, a watchdog deadline, the heartbeat is due), never on a blind poll.

The kopf daemon (`controllers.wiring`) runs one `ResourceLoop` per resource. A pass makes no API reads:
children and dependencies come from kopf indexes fed by watches, the object from the daemon's live body, or
from what this loop last wrote until the watch delivers it. The object store is read for the heartbeat on its
own, slower cadence, and for the result or failure report once an attempt ended. Status is written only
when it changed, and a change of progress alone (step, loss, throughput) at most every
`progress_write_seconds`. Writes carry the resourceVersion they were computed from, so a pass that worked on
a stale object is refused (409) and redone on the fresh one.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from pydantic import ValidationError

from kubeforge.controllers.batch import BatchKind, Observed, reconcile
from kubeforge.controllers import serving
from kubeforge.controllers.common import Event, Plan, resource_prefix
from kubeforge.controllers.errors import ChildNameTaken, Conflict
from kubeforge.controllers.serving import ServingObserved
from kubeforge.controllers.observe import latest_status_patch, load_json, merge_patch, needs_observation
from kubeforge.resilience import parse_duration
from kubeforge.settings import Settings
from kubeforge.storage.progress import FailureReport, Progress

if TYPE_CHECKING:  # the interface only; the boto3-backed store is passed in by the wiring
    from kubeforge.storage.objectstore import ObjectStore

log = logging.getLogger(__name__)
CONFLICT_RETRY_SECONDS = 0.5
MAX_CONFLICT_REREADS = 3
"""Conflicts in a row answered by re-reading the object; beyond that, wait for the watch."""
NAME_TAKEN_RETRY_SECONDS = 2.0
ERROR_BACKOFF_SECONDS = (1.0, 60.0)
RAY_JOB_ENDED = ("SUCCEEDED", "FAILED", "STOPPED")
PROGRESS_ONLY_ATTEMPT_KEYS = ("stepReached", "resumedFrom", "progressMark", "progressTime")


class Writer(Protocol):
    def patch_status(self, plural: str, namespace: str, name: str, patch: dict, resource_version: str) -> dict:
        """Merge-patch status with a resourceVersion precondition; the object as stored. Raises Conflict."""

    def create_rayjob(self, body: dict) -> None:
        """Create (or adopt, if ours) a child RayJob. Raises ChildNameTaken."""

    def delete_rayjob(self, namespace: str, name: str) -> None: ...

    def apply(self, body: dict) -> dict:
        """Server-side apply of a child (a RayService) as Kubeforge's field manager."""

    def get_object(self, plural: str, namespace: str, name: str) -> Optional[dict]:
        """A Kubeforge resource as stored now (after a Conflict); None when it is gone."""


@dataclass
class Cache:
    """What the watches have delivered, looked up without API calls."""

    children: Callable[[str], dict[str, dict]]
    """Owner uid → child RayJobs by name."""
    resource: Callable[[str, str, str], Optional[dict]]
    """(namespace, kind, name) → a Kubeforge resource, or None."""
    watch_dependencies: Callable[[str, list[tuple[str, str, str]]], None] = lambda uid, keys: None
    """Tell the wiring which resources' changes should wake this one."""
    prerequisites: Callable[[str, Any], list] = lambda namespace, spec: []
    """Unmet platform prerequisites for a run in `namespace` (may make one cached API read: run in a thread)."""


@dataclass
class Clock:
    now: Callable[[], datetime]
    monotonic: Callable[[], float] = time.monotonic


@dataclass
class _Heartbeat:
    attempt: Optional[int] = None
    read_at: float = -math.inf
    progress: Optional[Progress] = None


@dataclass
class ResourceLoop:
    kind: BatchKind
    settings: Settings
    writer: Writer
    store: ObjectStore
    cache: Cache
    clock: Clock
    post_event: Callable[[Event], None]
    stored: Optional[dict] = None
    """The object as this loop last wrote it, while the watch has not delivered it (or anything newer)."""
    stored_versions: set = field(default_factory=set)
    """resourceVersions the watch may still show that are older than (or equal to) `stored`."""
    unwritten: Optional[tuple[str, dict]] = None
    """(resourceVersion it was computed on, status): progress held back by the progress-write interval."""
    heartbeat: _Heartbeat = field(default_factory=_Heartbeat)
    last_status_write: float = -math.inf
    created: dict[str, dict] = field(default_factory=dict)
    """Children this loop created that the index has not shown yet (so they are not created twice)."""
    errors: int = 0
    conflicts: int = 0
    finalizer: Optional[str] = None
    """kopf's finalizer: passes wait until kopf added it (its write would otherwise conflict with the first)."""

    async def run(self, body, stopped, wake: asyncio.Event) -> None:
        """Passes until `stopped`; `wake` is set by the wiring when a child or dependency changed."""
        stop = asyncio.ensure_future(stopped.wait())
        try:
            if (body.get("status") or {}).get("phase") and self.settings.startup_jitter_seconds:
                # Found at start-up, already reconciled before: spread the passes of a restarted operator.
                await _wait_any(stop, wake, random.uniform(0, self.settings.startup_jitter_seconds))
            while not stop.done():
                wake.clear()
                delay = await self.step_safely(body)
                await _wait_any(stop, wake, delay)
                if wake.is_set() and self.settings.event_coalesce_seconds:
                    # Events come in bursts (KubeRay writes Initializing, then Running): one pass for the burst.
                    await asyncio.wait({stop}, timeout=self.settings.event_coalesce_seconds)
        finally:
            stop.cancel()

    async def step_safely(self, body) -> Optional[float]:
        try:
            delay = await self.step(copy.deepcopy(dict(body)))
            self.errors = self.conflicts = 0
            return delay
        except Conflict:
            # Someone else wrote meanwhile (kopf's finalizer, a label); the watch may take a while to show it,
            # so read the object once and redo the pass on it rather than conflict again on the stale one.
            self.conflicts += 1
            self.forget()
            if self.conflicts > MAX_CONFLICT_REREADS:
                return CONFLICT_RETRY_SECONDS
            meta = body["metadata"]
            fresh = await asyncio.to_thread(self.writer.get_object, self.kind.info.plural, meta["namespace"],
                                            meta["name"])
            if fresh is not None:
                self.stored = fresh
                self.stored_versions = {meta.get("resourceVersion"), fresh["metadata"].get("resourceVersion")}
            return 0
        except Exception:  # the loop survives anything; the next pass starts from fresh state
            self.forget()
            self.errors += 1
            first, cap = ERROR_BACKOFF_SECONDS
            delay = min(cap, first * 2 ** (self.errors - 1))
            meta = body.get("metadata") or {}
            log.exception("reconcile of %s %s/%s failed; retrying in %.0fs", self.kind.info.kind,
                          meta.get("namespace"), meta.get("name"), delay)
            return delay

    def forget(self) -> None:
        self.stored, self.stored_versions, self.unwritten = None, set(), None

    async def step(self, body: dict) -> Optional[float]:
        """One pass. Returns seconds until the next pass is due, None when only a change can make one."""
        server = self._newest(body)
        meta = server["metadata"]
        if self.finalizer and self.finalizer not in (meta.get("finalizers") or []) and not meta.get("deletionTimestamp"):
            return None  # kopf is adding its finalizer; that write's event wakes this loop
        obj = copy.deepcopy(server)
        version = meta.get("resourceVersion")
        if self.unwritten is not None and self.unwritten[0] == version:
            obj["status"] = copy.deepcopy(self.unwritten[1])  # reconcile goes on from what it last computed
        status = obj.get("status") or {}
        if not needs_observation(status, obj["metadata"].get("generation"), one_shot=self.kind.info.one_shot):
            return None
        observed = await self._observe(obj)
        plan = self._reconcile(obj, observed)
        return await self._apply(server, plan)

    def _reconcile(self, obj: dict, observed) -> Plan:
        return reconcile(self.kind, obj, observed, self.clock.now(), self.settings)

    def _newest(self, body: dict) -> dict:
        """The newest object this loop knows: the watch's, or its own write the watch has not delivered yet."""
        version = body["metadata"].get("resourceVersion")
        if self.stored is not None and version in self.stored_versions:
            if version == self.stored["metadata"].get("resourceVersion"):
                self.stored_versions = {version}  # the watch caught up
            return self.stored
        self.stored, self.stored_versions = None, set()
        return body

    async def _observe(self, obj: dict) -> Observed:
        meta, status = obj["metadata"], obj.get("status") or {}
        try:
            spec = self.kind.info.spec_model.model_validate(obj.get("spec") or {})
        except ValidationError:
            return Observed()  # reconcile reports the invalid spec; nothing to look at
        namespace = meta["namespace"]
        needed = self.kind.dependencies(spec)
        self.cache.watch_dependencies(meta["uid"], [(namespace, k, n) for k, n in needed])
        observed = Observed(dependencies={(k, n): self.cache.resource(namespace, k, n) for k, n in needed})
        children = self.cache.children(meta["uid"])
        self.created = {name: child for name, child in self.created.items() if name not in children}
        observed.rayjobs = {**self.created, **children}
        attempts = status.get("attempts") or []
        if not attempts or attempts[-1].get("outcome") != "Running":
            observed.unmet = await asyncio.to_thread(self.cache.prerequisites, namespace, spec)
            return observed

        current = attempts[-1]
        child_status = (observed.rayjobs.get(current.get("rayJob")) or {}).get("status") or {}
        prefix = resource_prefix(obj, spec, self.settings)
        ray_state = child_status.get("jobStatus")
        if ray_state in RAY_JOB_ENDED:  # one last look, so the final step and checkpoint are recorded
            self.heartbeat.read_at = -math.inf
        if ray_state == "RUNNING" or ray_state in RAY_JOB_ENDED:
            observed.progress = await self._heartbeat(prefix, current["number"], spec)
        if child_status.get("jobStatus") == "SUCCEEDED":
            observed.result = await asyncio.to_thread(
                load_json, self.store, prefix.bucket, prefix.output_key("result.json"), dict)
        elif child_status.get("jobDeploymentStatus") == "Failed" or child_status.get("jobStatus") in ("FAILED",
                                                                                                       "STOPPED"):
            observed.failure_report = await asyncio.to_thread(
                load_json, self.store, prefix.bucket, prefix.failure_key(current["number"]), FailureReport)
        return observed

    def heartbeat_interval(self, spec) -> float:
        # Several reads per hang timeout, so a stall is seen within a fraction of it.
        hang = parse_duration(spec.failure_policy.hang_timeout).total_seconds()
        return max(1.0, min(self.settings.heartbeat_poll_seconds, hang / 4))

    async def _heartbeat(self, prefix, attempt: int, spec) -> Optional[Progress]:
        beat = self.heartbeat
        if beat.attempt != attempt or self.clock.monotonic() - beat.read_at >= self.heartbeat_interval(spec):
            beat.progress = await asyncio.to_thread(load_json, self.store, prefix.bucket, prefix.progress_key,
                                                    Progress)
            beat.attempt, beat.read_at = attempt, self.clock.monotonic()
        return beat.progress

    async def _apply(self, server: dict, plan: Plan) -> Optional[float]:
        """Status first (an attempt is recorded before its child exists), then children, then events.
        `server` is the object as stored: the status patch is computed against it."""
        meta = server["metadata"]
        obj = server
        delays = [plan.requeue_after]
        patch = latest_status_patch(server.get("status") or {}, plan.status)
        self.unwritten = None
        if patch is not None:
            delays.append(await self._write_status(server, plan.status, patch))
        for name in plan.delete:
            await asyncio.to_thread(self.writer.delete_rayjob, meta["namespace"], name)
        for child in plan.apply:
            await asyncio.to_thread(self.writer.apply, child)
        for child in plan.create:
            try:
                await asyncio.to_thread(self.writer.create_rayjob, child)
                self.created[child["metadata"]["name"]] = child
            except ChildNameTaken as taken:
                log.warning("%s", taken)
                self.post_event(Event("Warning", "ChildNameTaken", str(taken)))
                delays.append(NAME_TAKEN_RETRY_SECONDS)
        for event in plan.events:
            self.post_event(event)
        attempts = plan.status.get("attempts") or []
        if attempts and attempts[-1].get("outcome") == "Running" and self.heartbeat.attempt == attempts[-1]["number"]:
            spec = self.kind.info.spec_model.model_validate(obj.get("spec") or {})
            delays.append(max(0.0, self.heartbeat.read_at + self.heartbeat_interval(spec) - self.clock.monotonic()))
        delays.append(self.settings.reconcile_period_seconds if needs_observation(
            plan.status, meta.get("generation"), one_shot=self.kind.info.one_shot) else None)
        due = [d for d in delays if d is not None]
        return min(due) if due else None

    async def _write_status(self, server: dict, new_status: dict, patch: dict) -> Optional[float]:
        meta = server["metadata"]
        base_version = meta.get("resourceVersion")
        since_write = self.clock.monotonic() - self.last_status_write
        if _progress_only(server.get("status") or {}, new_status) \
                and since_write < self.settings.progress_write_seconds:
            # Held in memory: written with the next other change, or when the interval ends.
            self.unwritten = (base_version, copy.deepcopy(new_status))
            return self.settings.progress_write_seconds - since_write
        stored = await asyncio.to_thread(self.writer.patch_status, self.kind.info.plural, meta["namespace"],
                                         meta["name"], patch, base_version)
        self.last_status_write = self.clock.monotonic()
        self.stored = stored
        self.stored_versions |= {base_version, stored["metadata"].get("resourceVersion")}
        return None


def _without_progress(status: dict) -> dict:
    trimmed = {k: v for k, v in status.items() if k != "progress"}
    trimmed["attempts"] = [{k: v for k, v in a.items() if k not in PROGRESS_ONLY_ATTEMPT_KEYS}
                           for a in status.get("attempts") or []]
    return trimmed


def _progress_only(old: dict, new: dict) -> bool:
    """The change is the workload moving on (step, loss, throughput, the watchdog's view of it), nothing else."""
    return merge_patch(_without_progress({k: v for k, v in old.items() if k != "kopf"}),
                       _without_progress(new)) is None


async def _wait_any(stop: asyncio.Future, wake: asyncio.Event, timeout: Optional[float]) -> None:
    if timeout is not None and timeout <= 0:
        return
    woken = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({stop, woken}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()


def child_summary(body: Any) -> dict:
    """The part of a child (RayJob, RayService) or dependency the reconcile reads, kept in the index (not whole
    objects)."""
    meta = body.get("metadata") or {}
    return {"metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "generation", "ownerReferences",
                                                  "annotations", "deletionTimestamp") if meta.get(k) is not None},
            "status": copy.deepcopy(dict(body.get("status") or {}))}


class ServingLoop(ResourceLoop):
    """A ServingEndpoint's loop: its RayService and dependencies from the indexes, no heartbeat or attempts."""

    async def _observe(self, obj: dict) -> ServingObserved:
        meta = obj["metadata"]
        try:
            spec = self.kind.info.spec_model.model_validate(obj.get("spec") or {})
        except ValidationError:
            return ServingObserved()
        needed = serving.dependencies(spec)
        self.cache.watch_dependencies(meta["uid"], [(meta["namespace"], kind, name) for kind, name in needed])
        observed = ServingObserved(
            rayservices=self.cache.children(meta["uid"]),
            dependencies={(kind, name): self.cache.resource(meta["namespace"], kind, name) for kind, name in needed})
        if not observed.rayservices:
            observed.unmet = await asyncio.to_thread(self.cache.prerequisites, meta["namespace"], spec)
        return observed

    def _reconcile(self, obj: dict, observed) -> Plan:
        return serving.reconcile_endpoint(obj, observed, self.clock.now(), self.settings)
