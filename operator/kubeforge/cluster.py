"""The operator's Kubernetes calls beyond what kopf does itself (children and dependencies)."""

from __future__ import annotations

import logging
from typing import Optional

from kubeforge.api.meta import GROUP, VERSION
from kubeforge.controllers.errors import ChildNameTaken, Conflict
from kubeforge.launch.names import LABEL_OWNER_UID

log = logging.getLogger(__name__)
RAY_GROUP, RAY_VERSION, RAYJOBS, RAYSERVICES = "ray.io", "v1", "rayjobs", "rayservices"
FIELD_MANAGER = "kubeforge"
CHILD_PLURALS = {"RayJob": RAYJOBS, "RayService": RAYSERVICES}
"""Kinds of children the operator owns, by kind."""
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def load_kube_config() -> None:
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class Cluster:
    def __init__(self, api=None):
        if api is None:
            from kubernetes import client

            load_kube_config()
            api = client.CustomObjectsApi()
        self.api = api

    def children_of(self, plural: str, namespace: str, owner_uid: str) -> dict[str, dict]:
        """Children of one kind (rayjobs, rayservices) that carry the owner's uid label, by name."""
        listed = self.api.list_namespaced_custom_object(
            RAY_GROUP, RAY_VERSION, namespace, plural, label_selector=f"{LABEL_OWNER_UID}={owner_uid}")
        return {item["metadata"]["name"]: item for item in listed.get("items", [])}

    def apply(self, body: dict) -> dict:
        """Server-side apply of a child (any kind in CHILD_PLURALS) as field manager `kubeforge`.

        The whole desired object is sent every time; the server changes (and bumps resourceVersion for) only
        what differs, and fields other managers set (an autoscaler's replicas, a platform's labels) stay
        theirs unless Kubeforge also sets them, in which case Kubeforge's value wins (force)."""
        meta, plural = body["metadata"], CHILD_PLURALS[body["kind"]]
        applied = self.api.patch_namespaced_custom_object(
            RAY_GROUP, RAY_VERSION, meta["namespace"], plural, meta["name"], body,
            field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH)
        if applied is None:  # 201 Created: the generated client maps only a 200 response to a body
            applied = self.api.get_namespaced_custom_object(RAY_GROUP, RAY_VERSION, meta["namespace"], plural,
                                                            meta["name"])
        return applied

    def delete_child(self, plural: str, namespace: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.delete_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, plural, name,
                                                     propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise

    def patch_status(self, plural: str, namespace: str, name: str, patch: dict, resource_version: str) -> dict:
        """JSON merge patch of a Kubeforge resource's status, only if it is still at `resource_version`.

        Raises Conflict when it changed meanwhile: the pass that computed the patch saw an older object."""
        from kubernetes.client.exceptions import ApiException

        body = {"metadata": {"resourceVersion": resource_version}, "status": patch}
        try:
            return self.api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, body,
                                                                  _content_type=MERGE_PATCH)
        except ApiException as error:
            if error.status == 409:
                raise Conflict(f"{plural} {namespace}/{name} changed since resourceVersion {resource_version}") \
                    from error
            raise

    def create_rayjob(self, body: dict) -> None:
        """Create the child, or adopt an existing one of the same name if (and only if) it is ours.

        Raises ChildNameTaken when the name belongs to another owner: typically the RayJob of a deleted
        resource of the same name that is still being garbage-collected; the caller waits and tries again."""
        from kubernetes.client.exceptions import ApiException

        meta = body["metadata"]
        try:
            self.api.create_namespaced_custom_object(RAY_GROUP, RAY_VERSION, meta["namespace"], RAYJOBS, body)
            return
        except ApiException as error:
            if error.status != 409:
                raise
        try:
            existing = self.api.get_namespaced_custom_object(RAY_GROUP, RAY_VERSION, meta["namespace"], RAYJOBS,
                                                             meta["name"])
        except ApiException as error:
            if error.status == 404:  # deleted in between: the next pass creates it
                raise ChildNameTaken(f"RayJob {meta['namespace']}/{meta['name']} was being deleted; "
                                     "it is created on the next pass") from error
            raise
        wanted = {ref["uid"] for ref in meta.get("ownerReferences") or []}
        holders = {ref.get("uid") for ref in existing["metadata"].get("ownerReferences") or []}
        if wanted & holders:
            log.info("RayJob %s already exists and is ours; adopting it", meta["name"])
            return
        deleting = " (being deleted)" if existing["metadata"].get("deletionTimestamp") else ""
        raise ChildNameTaken(f"RayJob {meta['namespace']}/{meta['name']} already exists{deleting} and belongs to "
                             f"another owner (uid {', '.join(sorted(h for h in holders if h)) or 'none'}); waiting "
                             "for it to go away before creating this resource's RayJob")

    def delete_rayjob(self, namespace: str, name: str) -> None:
        self.delete_child(RAYJOBS, namespace, name)

    def get_object(self, plural: str, namespace: str, name: str) -> Optional[dict]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
