"""Reading what a reconcile observes from the object store, and the status patch that records its result."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Optional

import json_merge_patch
from pydantic import ValidationError


if TYPE_CHECKING:  # the interface only; the boto3-backed store is passed in by the wiring
    from kubeforge.storage.objectstore import ObjectStore

log = logging.getLogger(__name__)
TERMINAL = {"Succeeded", "Failed"}


def needs_observation(status: dict, generation: Optional[int] = None, one_shot: bool = True) -> bool:
    """Finished one-shot resources are history, unless stalled on an invalid spec (a new generation may fix it)
    or edited since last observed (the new generation is acknowledged). Re-runnable kinds are always watched:
    a spec change or their schedule starts a new run."""
    if not one_shot or status.get("phase") not in TERMINAL:
        return True
    if generation is not None and status.get("observedGeneration") != generation:
        return True
    return any(c.get("type") == "Stalled" and c.get("status") == "True" and c.get("reason") == "InvalidSpec"
               for c in status.get("conditions") or [])


def load_json(store: ObjectStore, bucket: str, key: str, model):
    """A JSON document from the object store as `model` (or a dict); None when absent or unreadable."""
    raw = store.get(bucket, key)
    if raw is None:
        return None
    try:
        return model.model_validate_json(raw) if model is not dict else json.loads(raw)
    except (ValidationError, ValueError) as error:
        log.warning("ignoring unreadable s3://%s/%s: %s", bucket, key, error)
        return None


def latest_status_patch(old: dict, new: dict) -> Optional[dict]:
    """The JSON merge patch (RFC 7386) that makes the server's status equal `new`, or None when nothing changed.

    Nested keys that `new` no longer has are sent as null, so the server holds exactly what the reconcile
    computed (a top-level patch would leave, say, an earlier attempt's progress.etaSeconds behind).
    kopf's own bookkeeping under status.kopf is left alone."""
    old = {k: v for k, v in old.items() if k != "kopf"}
    return merge_patch(old, new)


def merge_patch(old: dict, new: dict) -> Optional[dict]:
    return json_merge_patch.create_patch(old, new) or None
