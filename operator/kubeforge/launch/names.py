"""Deterministic child names and labels, so a restarted operator finds its children again.

A custom resource may be named with any DNS-1123 subdomain of up to 253 characters (`7th-run`,
`team.docs.assistant`); KubeRay refuses RayJob and RayService names that are not DNS-1035 labels or are longer
than 47 characters (it appends `-<5 chars>` for the RayCluster, whose name feeds `<cluster>-head-svc` and
must stay within 63). Every valid resource name therefore maps to a valid child name: unchanged when it
already fits, otherwise made valid, shortened and suffixed with a hash of the full name so that two resources
never share a child name.
"""

from __future__ import annotations

import hashlib
import re

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_KIND = "kubeforge.dev/kind"
LABEL_NAME = "kubeforge.dev/name"
LABEL_OWNER_UID = "kubeforge.dev/owner-uid"
LABEL_ATTEMPT = "kubeforge.dev/attempt"
ANNOTATION_OWNER_NAME = "kubeforge.dev/owner-name"
MANAGER = "kubeforge"
MAX_CHILD_NAME = 47
"""KubeRay's MaxRayJobNameLength / MaxRayServiceNameLength."""
MAX_LABEL_VALUE = 63
HASH_LENGTH = 8
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def name_hash(name: str) -> str:
    """A stable digest of `name` (the same in every process, unlike Python's `hash`)."""
    return hashlib.sha256(name.encode()).hexdigest()[:HASH_LENGTH]


def is_dns1035_label(name: str, max_length: int = 63) -> bool:
    return len(name) <= max_length and _DNS_1035.match(name) is not None


def child_name(owner_name: str, suffix: str) -> str:
    """`<owner>-<suffix>` when that is a valid KubeRay name, else `<readable part>-<hash>-<suffix>`."""
    plain = f"{owner_name}-{suffix}"
    if is_dns1035_label(plain, MAX_CHILD_NAME):
        return plain
    readable = re.sub(r"[^a-z0-9-]", "-", owner_name.lower())
    if not readable[:1].isalpha():
        readable = "r" + readable
    tail = f"-{name_hash(owner_name)}-{suffix}"
    readable = readable[: MAX_CHILD_NAME - len(tail)].rstrip("-")
    return readable + tail


def attempt_name(owner_name: str, attempt: int) -> str:
    """The RayJob of attempt `attempt`: `<name>-<attempt>`, made valid for KubeRay when needed."""
    return child_name(owner_name, str(attempt))


def label_value(text: str) -> str:
    """`text` when it is a valid label value, else a shortened valid form ending in a hash of `text`."""
    if len(text) <= MAX_LABEL_VALUE and _LABEL_VALUE.match(text):
        return text
    tail = f"-{name_hash(text)}"
    readable = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[: MAX_LABEL_VALUE - len(tail)]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", readable) + tail


def child_labels(kind: str, name: str, uid: str, attempt: int | None = None) -> dict[str, str]:
    labels = {LABEL_MANAGED_BY: MANAGER, LABEL_KIND: kind, LABEL_NAME: label_value(name), LABEL_OWNER_UID: uid}
    if attempt is not None:
        labels[LABEL_ATTEMPT] = str(attempt)
    return labels


def child_annotations(name: str) -> dict[str, str]:
    """The owner's full name, which a label value cannot always hold."""
    return {ANNOTATION_OWNER_NAME: name}


def owner_reference(obj: dict) -> dict:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
