"""kopf wiring: watches, indexes and one reconcile loop per resource around the pure reconcile functions.

Nothing here polls the API server. kopf watches the child RayJobs (labelled with their owner's uid) and the
Kubeforge resources into in-memory indexes; an event on a child or on a dependency wakes its owner's loop,
which otherwise sleeps until its last pass asked for the next (`controllers.loop`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Callable

import kopf

from kubeforge.api.kinds import KINDS, kind_info
from kubeforge.api.meta import FINALIZER, GROUP, VERSION
from kubeforge.cluster import CHILD_PLURALS, RAY_GROUP, RAY_VERSION, RAYJOBS, RAYSERVICES, Cluster
from kubeforge.controllers import batch
from kubeforge.controllers.common import Event, resource_prefix
from kubeforge.controllers.deletion import sweep_prefix
from kubeforge.controllers.loop import Cache, Clock, ResourceLoop, ServingLoop, child_summary
from kubeforge.controllers.observe import latest_status_patch, needs_observation
from kubeforge.controllers.registry import BATCH_KINDS
from kubeforge.controllers.serving import ServingKind
from kubeforge.controllers.unsupported import unsupported_status
from kubeforge.launch.names import LABEL_OWNER_UID
from kubeforge.prerequisites import ClusterFacts, workload_prerequisites, workload_secret_exists
from kubeforge.settings import Settings
from kubeforge.storage.objectstore import S3ObjectStore

log = logging.getLogger(__name__)
CHILD_DELETION_POLL_SECONDS = 2.0
WAKE_PREFIX = "wake-"
"""Ids of the event handlers that only wake loops: their per-event success lines are not logged."""
CANCELLATION_BACKOFF_SECONDS = 10.0
"""How long kopf lets a loop finish its pass after signalling `stopped` before it cancels it. A pass's own
terminal status write is what stops it (the resource no longer needs observing): cancelled at once, the pass
would die between that write and the deletes and events that follow it (a never-started RayJob left queued)."""
CANCELLATION_SECONDS = 10.0


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Wakeups:
    """Which loop to wake when a child or a dependency changes. One asyncio.Event per live resource."""

    def __init__(self):
        self.events: dict[str, asyncio.Event] = {}
        self.waiters: dict[tuple[str, str, str], set[str]] = defaultdict(set)

    def event_for(self, uid: str) -> asyncio.Event:
        return self.events.setdefault(uid, asyncio.Event())

    def forget(self, uid: str) -> None:
        self.events.pop(uid, None)
        for waiting in self.waiters.values():
            waiting.discard(uid)

    def wake(self, uid: str) -> None:
        if uid in self.events:
            self.events[uid].set()

    def watch_dependencies(self, uid: str, keys: list[tuple[str, str, str]]) -> None:
        for waiting in self.waiters.values():
            waiting.discard(uid)
        for key in keys:
            self.waiters[key].add(uid)

    def resource_changed(self, key: tuple[str, str, str]) -> None:
        for uid in self.waiters.get(key, ()):
            self.wake(uid)


class Prerequisites:
    """What a run in a namespace needs from the platform: the cluster-wide facts checked at start-up, and the
    namespace's workload Secret, looked up at most once per `ttl` seconds per namespace (not per pass)."""

    def __init__(self, settings: Settings, cluster_facts: Callable[[], ClusterFacts], core_api, ttl: float,
                 uses: frozenset[str] = frozenset({RAYJOBS})):
        self.settings, self.cluster_facts, self.core_api, self.ttl = settings, cluster_facts, core_api, ttl
        self.uses = uses
        self.secrets: dict[str, tuple[float, bool]] = {}

    def __call__(self, namespace: str, spec) -> list:
        present = None
        if self.settings.workload_env_secret_required:
            seen_at, present = self.secrets.get(namespace, (-self.ttl, False))
            if time.monotonic() - seen_at >= self.ttl:
                present = workload_secret_exists(self.core_api(), namespace, self.settings)
                self.secrets[namespace] = (time.monotonic(), present)
        return workload_prerequisites(namespace, self.settings, self.cluster_facts(), present,
                                      uses=self.uses, bucket=spec.storage.bucket)


class QuietWakeups(logging.Filter):
    """kopf logs every handler success at INFO; for the wake-up handlers that is a line per watch event."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(f"Handler '{WAKE_PREFIX}")


def register(settings: Settings, registry: kopf.OperatorRegistry | None = None,
             cluster_facts: Callable[[], ClusterFacts] = ClusterFacts) -> None:
    """Register handlers for every kind; call once before kopf starts. `cluster_facts` gives the latest
    cluster-wide prerequisite check (KubeRay CRDs served, bucket usable)."""
    registry = registry or kopf.get_default_registry()
    cluster_holder: dict = {}
    wakeups = Wakeups()
    logging.getLogger("kopf.objects").addFilter(QuietWakeups())

    def core_api():
        from kubernetes import client

        clients()
        return client.CoreV1Api()

    prerequisites = Prerequisites(settings, cluster_facts, core_api, ttl=settings.reconcile_period_seconds)

    clients_lock = threading.Lock()

    def clients():
        # Called from the event loop and from kopf's handler threads: build once, publish both together.
        with clients_lock:
            if not cluster_holder:
                cluster_holder.update(cluster=Cluster(), store=S3ObjectStore(endpoint_url=settings.s3_endpoint_url))
        return cluster_holder["cluster"], cluster_holder["store"]

    for child_plural in (RAYJOBS, RAYSERVICES):
        _register_children_index(child_plural, registry, wakeups)

    serving_prerequisites = Prerequisites(settings, cluster_facts, core_api, ttl=settings.reconcile_period_seconds,
                                          uses=frozenset({RAYSERVICES}))
    for info in KINDS:
        _register_resource_index(info, registry, wakeups)
        if info.kind == ServingKind.info.kind:
            _register_loop(ServingKind(), ServingLoop, f"{RAYSERVICES}_by_owner", settings, registry, clients,
                           wakeups, serving_prerequisites)
        elif info.kind in BATCH_KINDS:
            _register_batch(BATCH_KINDS[info.kind], settings, registry, clients, wakeups, prerequisites)
        else:
            _register_unsupported(info, settings, registry)


def _register_children_index(plural: str, registry, wakeups: Wakeups) -> None:
    """Children (RayJobs, RayServices) by their owner's uid label; a change wakes the owner's loop."""

    def index(body, labels, **_):
        return {labels[LABEL_OWNER_UID]: child_summary(body)}

    # The id is the name of the handlers' kwarg.
    kopf.index(RAY_GROUP, RAY_VERSION, plural, labels={LABEL_OWNER_UID: kopf.PRESENT}, registry=registry,
               id=f"{plural}_by_owner")(index)

    # Event handlers run after kopf updated the indexes with the same event, so a woken loop sees the change.
    # They are async: they run on the event loop the loops wait on (asyncio.Event is not thread-safe).
    async def child_changed(labels, **_):
        wakeups.wake(labels[LABEL_OWNER_UID])

    kopf.on.event(RAY_GROUP, RAY_VERSION, plural, labels={LABEL_OWNER_UID: kopf.PRESENT}, registry=registry,
                  id=f"{WAKE_PREFIX}owner" if plural == RAYJOBS else f"{WAKE_PREFIX}owner-{plural}")(child_changed)


def _index_name(info) -> str:
    return f"{info.plural}_by_name"


def _register_resource_index(info, registry, wakeups: Wakeups) -> None:
    """Every Kubeforge resource by (namespace, name), so dependencies are read from memory; a change wakes
    the resources waiting on it."""

    def index(body, namespace, name, **_):
        return {(namespace, name): child_summary(body)}

    kopf.index(GROUP, VERSION, info.plural, registry=registry, id=_index_name(info))(index)

    async def changed(namespace, name, uid, **_):
        wakeups.wake(uid)  # its own spec (a new generation), labels, or another writer's change
        wakeups.resource_changed((namespace, info.kind, name))

    kopf.on.event(GROUP, VERSION, info.plural, registry=registry, id=f"{WAKE_PREFIX}{info.plural}")(changed)


def _register_batch(kind: batch.BatchKind, settings: Settings, registry, clients, wakeups: Wakeups,
                    prerequisites: Prerequisites) -> None:
    _register_loop(kind, ResourceLoop, "rayjobs_by_owner", settings, registry, clients, wakeups, prerequisites)


def _register_loop(kind, loop_class, children_index: str, settings: Settings, registry, clients, wakeups: Wakeups,
                   prerequisites: Prerequisites) -> None:
    """One daemon per resource of `kind` running `loop_class`, its children read from `children_index`."""
    plural = kind.info.plural

    def observed_again(body, **_) -> bool:
        return needs_observation(body.get("status") or {}, body["metadata"].get("generation"),
                                 one_shot=kind.info.one_shot)

    @kopf.daemon(GROUP, VERSION, plural, registry=registry, id="reconcile", when=observed_again,
                 cancellation_backoff=CANCELLATION_BACKOFF_SECONDS, cancellation_timeout=CANCELLATION_SECONDS)
    async def reconcile_loop(body, uid, stopped, **indexes):
        cluster, store = clients()
        by_owner = indexes[children_index]

        def children(owner_uid: str) -> dict[str, dict]:
            return {child["metadata"]["name"]: child for child in by_owner.get(owner_uid, [])}

        def resource(namespace: str, kind_name: str, name: str):
            found = list(indexes[_index_name(kind_info(kind_name))].get((namespace, name), []))
            return found[0] if found else None

        def post_event(event: Event) -> None:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)

        loop = loop_class(kind=kind, settings=settings, writer=cluster, store=store,
                          cache=Cache(children=children, resource=resource,
                                      watch_dependencies=wakeups.watch_dependencies,
                                      prerequisites=prerequisites),
                          clock=Clock(now=lambda: utcnow()), post_event=post_event, finalizer=FINALIZER)
        try:
            await loop.run(body, stopped, wakeups.event_for(uid))
        finally:
            wakeups.forget(uid)

    @kopf.on.delete(GROUP, VERSION, plural, registry=registry, id="cleanup")
    def cleanup(body, spec, **_):
        cluster, store = clients()
        meta = body["metadata"]
        plural = CHILD_PLURALS[kind.info.shape]
        children = cluster.children_of(plural, meta["namespace"], meta["uid"])
        for name in children:
            cluster.delete_child(plural, meta["namespace"], name)
        if children:
            # KubeRay's finalizer stops the Ray job before the RayJob goes; until then the workload may still
            # write checkpoints and progress, so the prefix is removed only once no child is left.
            raise kopf.TemporaryError(f"waiting for {kind.info.shape}s {', '.join(sorted(children))} to be "
                                      "deleted", delay=CHILD_DELETION_POLL_SECONDS)
        if spec.get("deletionPolicy") == "Delete":
            try:
                parsed = kind.info.spec_model.model_validate(dict(spec))
            except Exception:  # an invalid spec never wrote data
                return
            prefix = resource_prefix(dict(body), parsed, settings)
            again = sweep_prefix(store, prefix, settings.deletion_quiet_seconds)
            if again:
                log.info("%s", again)
                raise kopf.TemporaryError(again, delay=settings.deletion_quiet_seconds)


def _register_unsupported(info, settings: Settings, registry) -> None:
    @kopf.timer(GROUP, VERSION, info.plural, interval=max(settings.reconcile_period_seconds, 30),
                registry=registry, id="unsupported")
    def mark_unsupported(body, patch, **_):
        new = unsupported_status(dict(body), utcnow())
        status_patch = latest_status_patch(dict(body.get("status") or {}), new)
        if status_patch:
            patch.status.update(status_patch)
            kopf.event(body, type="Warning", reason="NoController", message=new["message"])
