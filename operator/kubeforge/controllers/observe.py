"""Gather what a batch reconcile needs to see: child RayJobs, heartbeat, failure report, result, deps."""

from __future__ import annotations

import json
import logging
from typing import Optional

from pydantic import ValidationError

from kubeforge.controllers.batch import BatchKind, Observed, resource_prefix
from kubeforge.cluster import Cluster
from kubeforge.settings import Settings
from kubeforge.storage.objectstore import ObjectStore
from kubeforge.storage.progress import FailureReport, Progress

log = logging.getLogger(__name__)
TERMINAL = {"Succeeded", "Failed"}


def needs_observation(status: dict, generation: Optional[int] = None) -> bool:
    """Finished resources are history, unless stalled on an invalid spec (a new generation may fix it) or
    edited since last observed (the new generation is acknowledged)."""
    if status.get("phase") not in TERMINAL:
        return True
    if generation is not None and status.get("observedGeneration") != generation:
        return True
    return any(c.get("type") == "Stalled" and c.get("status") == "True" and c.get("reason") == "InvalidSpec"
               for c in status.get("conditions") or [])


def _load(store: ObjectStore, bucket: str, key: str, model):
    raw = store.get(bucket, key)
    if raw is None:
        return None
    try:
        return model.model_validate_json(raw) if model is not dict else json.loads(raw)
    except (ValidationError, ValueError) as error:
        log.warning("ignoring unreadable s3://%s/%s: %s", bucket, key, error)
        return None


def observe(kind: BatchKind, obj: dict, cluster: Cluster, store: ObjectStore, settings: Settings) -> Observed:
    try:
        spec = kind.info.spec_model.model_validate(obj.get("spec") or {})
    except ValidationError:
        return Observed()  # reconcile reports the invalid spec; nothing to look at
    meta, status = obj["metadata"], obj.get("status") or {}
    observed = Observed()
    attempts = status.get("attempts") or []
    if not attempts:
        observed.dependencies = {(k, n): cluster.get_resource(k, meta["namespace"], n)
                                 for k, n in kind.dependencies(spec)}
        return observed

    prefix = resource_prefix(obj, spec, settings)
    observed.rayjobs = cluster.rayjobs_of(meta["namespace"], meta["uid"])
    observed.progress = _load(store, prefix.bucket, prefix.progress_key, Progress)
    current = attempts[-1]
    child_status = (observed.rayjobs.get(current.get("rayJob")) or {}).get("status") or {}
    if child_status.get("jobStatus") == "SUCCEEDED":
        observed.result = _load(store, prefix.bucket, prefix.output_key("result.json"), dict)
    elif child_status.get("jobDeploymentStatus") == "Failed" or child_status.get("jobStatus") in ("FAILED", "STOPPED"):
        observed.failure_report = _load(store, prefix.bucket, prefix.failure_key(current["number"]), FailureReport)
    return observed


def latest_status_patch(old: dict, new: dict) -> Optional[dict]:
    """The JSON merge patch (RFC 7386) that makes the server's status equal `new`, or None when nothing changed.

    Nested keys that `new` no longer has are sent as null, so the server holds exactly what the reconcile
    computed (a top-level patch would leave, say, an earlier attempt's progress.etaSeconds behind).
    kopf's own bookkeeping under status.kopf is left alone."""
    old = {k: v for k, v in old.items() if k != "kopf"}
    return merge_patch(old, new)


def merge_patch(old: dict, new: dict) -> Optional[dict]:
    if old == new:
        return None
    patch: dict = {}
    for key, value in new.items():
        previous = old.get(key)
        if isinstance(value, dict) and isinstance(previous, dict):
            nested = merge_patch(previous, value)
            if nested is not None:
                patch[key] = nested
        elif key not in old or previous != value:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch or None
