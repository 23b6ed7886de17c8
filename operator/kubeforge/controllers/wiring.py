"""kopf wiring: a few lines per kind around the pure reconcile functions."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

import kopf

from kubeforge.api.kinds import KINDS
from kubeforge.api.meta import GROUP, VERSION
from kubeforge.cluster import ChildNameTaken, Cluster
from kubeforge.controllers import batch
from kubeforge.controllers.observe import latest_status_patch, needs_observation, observe
from kubeforge.controllers.registry import BATCH_KINDS
from kubeforge.controllers.unsupported import unsupported_status
from kubeforge.settings import Settings
from kubeforge.storage.objectstore import S3ObjectStore

log = logging.getLogger(__name__)
NAME_TAKEN_RETRY_SECONDS = 2.0
CHILD_DELETION_POLL_SECONDS = 2.0


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def register(settings: Settings, registry: kopf.OperatorRegistry | None = None) -> None:
    """Register handlers for every kind; call once before kopf starts."""
    registry = registry or kopf.get_default_registry()
    cluster_holder: dict = {}

    def clients():
        if not cluster_holder:
            cluster_holder["cluster"] = Cluster()
            cluster_holder["store"] = S3ObjectStore(endpoint_url=settings.s3_endpoint_url)
        return cluster_holder["cluster"], cluster_holder["store"]

    for info in KINDS:
        kind = BATCH_KINDS.get(info.kind)
        if kind is None:
            _register_unsupported(info, settings, registry)
            continue
        _register_batch(kind, settings, registry, clients)


def _apply_plan(plan: batch.Plan, body, patch, cluster: Cluster) -> float | None:
    """Carry out a plan; returns a delay when a child could not be created yet.

    kopf sends `patch` after the handler returns, so a plan never both records an attempt and creates its
    child: the reconcile records in one pass and creates in the next, once the record is on the server."""
    namespace = body["metadata"]["namespace"]
    status_patch = latest_status_patch(dict(body.get("status") or {}), plan.status)
    if status_patch:
        patch.status.update(status_patch)
    for name in plan.delete:
        cluster.delete_rayjob(namespace, name)
    retry = None
    for child in plan.create:
        try:
            cluster.create_rayjob(child)
        except ChildNameTaken as taken:
            log.warning("%s", taken)
            kopf.event(body, type="Warning", reason="ChildNameTaken", message=str(taken))
            retry = NAME_TAKEN_RETRY_SECONDS
    for event in plan.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    return retry


def _register_batch(kind: batch.BatchKind, settings: Settings, registry, clients) -> None:
    plural = kind.info.plural

    # The timer ticks often and cheaply; a full pass runs only when the previous one asked for it
    # (Plan.requeue_after: backoff ends, a recorded attempt's child is due, a watchdog deadline) or after
    # the reconcile period, whichever comes first.
    @kopf.timer(GROUP, VERSION, plural, interval=min(settings.tick_seconds, settings.reconcile_period_seconds),
                registry=registry, id="reconcile")
    def reconcile_batch(body, patch, memo, **_):
        obj = dict(body)
        if not needs_observation(obj.get("status") or {}, obj["metadata"].get("generation")):
            return
        if time.monotonic() < memo.get("kubeforge_due", 0.0):
            return
        cluster, store = clients()
        observed = observe(kind, obj, cluster, store, settings)
        plan = batch.reconcile(kind, obj, observed, utcnow(), settings)
        retry = _apply_plan(plan, body, patch, cluster)
        delay = min(d for d in (plan.requeue_after, retry, settings.reconcile_period_seconds) if d is not None)
        memo["kubeforge_due"] = time.monotonic() + delay

    @kopf.on.delete(GROUP, VERSION, plural, registry=registry, id="cleanup")
    def cleanup(body, spec, **_):
        cluster, store = clients()
        meta = body["metadata"]
        children = cluster.rayjobs_of(meta["namespace"], meta["uid"])
        for name in children:
            cluster.delete_rayjob(meta["namespace"], name)
        if children:
            # KubeRay's finalizer stops the Ray job before the RayJob goes; until then the workload may still
            # write checkpoints and progress, so the prefix is removed only once no child is left.
            raise kopf.TemporaryError(f"waiting for RayJobs {', '.join(sorted(children))} to be deleted",
                                      delay=CHILD_DELETION_POLL_SECONDS)
        if spec.get("deletionPolicy") == "Delete":
            try:
                parsed = kind.info.spec_model.model_validate(dict(spec))
            except Exception:  # an invalid spec never wrote data
                return
            prefix = batch.resource_prefix(dict(body), parsed, settings)
            removed = store.delete_prefix(prefix.bucket, prefix.prefix + "/")
            log.info("deletionPolicy Delete: removed %d objects under %s", removed, prefix.uri())


def _register_unsupported(info, settings: Settings, registry) -> None:
    @kopf.timer(GROUP, VERSION, info.plural, interval=max(settings.reconcile_period_seconds, 30),
                registry=registry, id="unsupported")
    def mark_unsupported(body, patch, **_):
        new = unsupported_status(dict(body), utcnow())
        status_patch = latest_status_patch(dict(body.get("status") or {}), new)
        if status_patch:
            patch.status.update(status_patch)
            kopf.event(body, type="Warning", reason="NoController", message=new["message"])
