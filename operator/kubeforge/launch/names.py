"""Deterministic child names and labels, so a restarted operator finds its children again."""

from __future__ import annotations

import hashlib

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_KIND = "kubeforge.dev/kind"
LABEL_NAME = "kubeforge.dev/name"
LABEL_OWNER_UID = "kubeforge.dev/owner-uid"
LABEL_ATTEMPT = "kubeforge.dev/attempt"
MANAGER = "kubeforge"
MAX_NAME = 63


def attempt_name(owner_name: str, attempt: int) -> str:
    """`<name>-<attempt>`, shortened with a hash when it would exceed a DNS label."""
    suffix = f"-{attempt}"
    if len(owner_name) + len(suffix) <= MAX_NAME - 6:  # KubeRay appends to cluster names
        return owner_name + suffix
    digest = hashlib.sha256(owner_name.encode()).hexdigest()[:6]
    return f"{owner_name[: MAX_NAME - 6 - len(suffix) - 7]}-{digest}{suffix}"


def child_labels(kind: str, name: str, uid: str, attempt: int | None = None) -> dict[str, str]:
    labels = {LABEL_MANAGED_BY: MANAGER, LABEL_KIND: kind, LABEL_NAME: name, LABEL_OWNER_UID: uid}
    if attempt is not None:
        labels[LABEL_ATTEMPT] = str(attempt)
    return labels


def owner_reference(obj: dict) -> dict:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
