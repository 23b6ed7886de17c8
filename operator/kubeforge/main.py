"""Operator entry point: the same code runs in the container, in `kubeforge operator` and in the sandbox."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from typing import Mapping

import kopf

from kubeforge.controllers.wiring import register
from kubeforge.prerequisites import StartupReport, cluster_prerequisites
from kubeforge.settings import Settings, get_settings
from kubeforge.api.meta import FINALIZER

log = logging.getLogger(__name__)


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf keeps a copy of each object's last handled spec to tell creations from updates for on.create and
    on.update handlers. Kubeforge has none (its loops compare generations), so the copy would only cost a PATCH
    per object, racing the loop's first status write."""

    def fetch(self, *, body):
        return None

    def store(self, *, body, patch, essence):
        pass


def configure(kopf_settings: kopf.OperatorSettings) -> None:
    # Status belongs to the status contract; kopf keeps its bookkeeping in annotations.
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.kubeforge.dev")
    kopf_settings.persistence.diffbase_storage = NoDiffBase()
    kopf_settings.persistence.finalizer = FINALIZER  # the chart's uninstall hook removes it (kubeforge.uninstall)
    # Events are posted deliberately by the controllers; of kopf's own log lines only errors become events.
    kopf_settings.posting.level = logging.ERROR
    kopf_settings.watching.server_timeout = 300
    kopf_settings.networking.request_timeout = 60


def check_prerequisites_at_startup(settings: Settings, api_client, s3_client=None,
                                   environ: Mapping[str, str] = os.environ) -> StartupReport:
    """Cluster-wide prerequisites (KubeRay CRDs, the bucket, MLflow), logged, and posted as one Warning Event on
    the operator's own pod (the chart passes POD_NAME/POD_NAMESPACE/POD_UID) so `kubectl describe pod` shows
    them. Never raises: a missing prerequisite must not put the operator in a crash loop; resources wait for it
    with their own Stalled condition instead."""
    report = cluster_prerequisites(settings, api_client, s3_client)
    pod = {key: environ.get(f"POD_{key.upper()}") for key in ("name", "namespace", "uid")}
    if report.unmet and all(pod.values()):
        from kubernetes import client

        now = datetime.datetime.now(datetime.timezone.utc)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{pod['name']}.", namespace=pod["namespace"]),
            involved_object=client.V1ObjectReference(api_version="v1", kind="Pod", **pod),
            type="Warning", reason="PrerequisitesMissing", first_timestamp=now, last_timestamp=now, count=1,
            message="; ".join(f"{u.reason}: {u.message}" for u in report.unmet)[:1024],
            source=client.V1EventSource(component="kubeforge-operator"))
        try:
            client.CoreV1Api(api_client).create_namespaced_event(pod["namespace"], event)
        except Exception as error:  # noqa: BLE001 - the log line above already says it
            log.warning("could not post the prerequisites event on pod %s/%s: %s", pod["namespace"], pod["name"],
                        error)
    return report


def run_operator(settings: Settings | None = None) -> None:
    settings = operator_settings = settings or get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = kopf.OperatorRegistry()
    startup_report = StartupReport()
    register(settings, registry, cluster_facts=lambda: startup_report.facts)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_):
        configure(settings)

    @kopf.on.startup(registry=registry)
    def prerequisites(**_):
        from kubernetes import client

        from kubeforge.cluster import load_kube_config

        try:  # kopf retries a failing start-up handler and does not start meanwhile: report, never block
            load_kube_config()
            report = check_prerequisites_at_startup(operator_settings, client.ApiClient())
        except Exception as error:  # noqa: BLE001
            log.error("prerequisite checks could not run: %s", error)
            return
        startup_report.facts, startup_report.unmet = report.facts, report.unmet

    @kopf.on.probe(id="prerequisites", registry=registry)
    def prerequisites_probe(**_):
        return startup_report.as_probe()

    @kopf.on.login(registry=registry)
    def login(**kwargs):
        # A private registry does not get kopf's default login handlers: in-cluster or kubeconfig credentials.
        return kopf.login_via_client(**kwargs)

    namespaces = [settings.namespace] if settings.namespace else []
    asyncio.run(kopf.operator(registry=registry, standalone=True, clusterwide=not namespaces,
                              namespaces=namespaces, liveness_endpoint=settings.liveness_endpoint))
