"""The operator's Kubernetes calls beyond what kopf does itself (children and dependencies)."""

from __future__ import annotations

import logging
from typing import Optional

from kubeforge.api.kinds import kind_info
from kubeforge.api.meta import GROUP, VERSION
from kubeforge.launch.names import LABEL_OWNER_UID

log = logging.getLogger(__name__)
RAY_GROUP, RAY_VERSION, RAYJOBS = "ray.io", "v1", "rayjobs"


def load_kube_config() -> None:
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class ChildNameTaken(Exception):
    """A child's deterministic name is held by an object this resource does not own."""


class Cluster:
    def __init__(self, api=None):
        if api is None:
            from kubernetes import client

            load_kube_config()
            api = client.CustomObjectsApi()
        self.api = api

    def rayjobs_of(self, namespace: str, owner_uid: str) -> dict[str, dict]:
        listed = self.api.list_namespaced_custom_object(
            RAY_GROUP, RAY_VERSION, namespace, RAYJOBS, label_selector=f"{LABEL_OWNER_UID}={owner_uid}")
        return {item["metadata"]["name"]: item for item in listed.get("items", [])}

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
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.delete_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, RAYJOBS, name,
                                                     propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise

    def get_resource(self, kind: str, namespace: str, name: str) -> Optional[dict]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, kind_info(kind).plural, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
