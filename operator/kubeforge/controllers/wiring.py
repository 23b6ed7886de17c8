"""kopf wiring: a few lines per kind around the pure reconcile functions."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import kopf

from kubeforge.api.kinds import KINDS
from kubeforge.api.meta import GROUP, VERSION
from kubeforge.cluster import Cluster
from kubeforge.controllers import batch
from kubeforge.controllers.observe import latest_status_patch, needs_observation, observe
from kubeforge.controllers.registry import BATCH_KINDS
from kubeforge.controllers.unsupported import unsupported_status
from kubeforge.settings import Settings
from kubeforge.storage.objectstore import S3ObjectStore

log = logging.getLogger(__name__)


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


def _apply_plan(plan: batch.Plan, body, patch, cluster: Cluster) -> None:
    namespace = body["metadata"]["namespace"]
    # Status first, so the attempt (and its child's deterministic name) is recorded before the child exists.
    status_patch = latest_status_patch(dict(body.get("status") or {}), plan.status)
    if status_patch:
        patch.status.update(status_patch)
    for name in plan.delete:
        cluster.delete_rayjob(namespace, name)
    for child in plan.create:
        cluster.create_rayjob(child)
    for event in plan.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def _register_batch(kind: batch.BatchKind, settings: Settings, registry, clients) -> None:
    plural = kind.info.plural

    @kopf.timer(GROUP, VERSION, plural, interval=settings.reconcile_period_seconds, registry=registry,
                id="reconcile")
    def reconcile_batch(body, patch, **_):
        obj = dict(body)
        if not needs_observation(obj.get("status") or {}):
            return
        cluster, store = clients()
        observed = observe(kind, obj, cluster, store, settings)
        plan = batch.reconcile(kind, obj, observed, datetime.now(timezone.utc), settings)
        _apply_plan(plan, body, patch, cluster)

    @kopf.on.delete(GROUP, VERSION, plural, registry=registry, id="cleanup")
    def cleanup(body, spec, **_):
        cluster, store = clients()
        meta = body["metadata"]
        for name in cluster.rayjobs_of(meta["namespace"], meta["uid"]):
            cluster.delete_rayjob(meta["namespace"], name)
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
        new = unsupported_status(dict(body), datetime.now(timezone.utc))
        status_patch = latest_status_patch(dict(body.get("status") or {}), new)
        if status_patch:
            patch.status.update(status_patch)
            kopf.event(body, type="Warning", reason="NoController", message=new["message"])
