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
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.create_namespaced_custom_object(RAY_GROUP, RAY_VERSION, body["metadata"]["namespace"], RAYJOBS, body)
        except ApiException as error:
            if error.status != 409:
                raise
            log.info("RayJob %s already exists; adopting it", body["metadata"]["name"])

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
