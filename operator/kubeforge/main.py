"""Operator entry point: the same code runs in the container, in `kubeforge operator` and in the sandbox."""

from __future__ import annotations

import asyncio
import logging

import kopf

from kubeforge.controllers.wiring import register
from kubeforge.settings import Settings, get_settings


def configure(kopf_settings: kopf.OperatorSettings) -> None:
    # Status belongs to the status contract; kopf keeps its bookkeeping in annotations.
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.kubeforge.dev")
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.kubeforge.dev")
    kopf_settings.persistence.finalizer = "kubeforge.dev/finalizer"
    # Events are posted deliberately by the controllers; of kopf's own log lines only errors become events.
    kopf_settings.posting.level = logging.ERROR
    kopf_settings.watching.server_timeout = 300
    kopf_settings.networking.request_timeout = 60


def run_operator(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = kopf.OperatorRegistry()
    register(settings, registry)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_):
        configure(settings)

    @kopf.on.login(registry=registry)
    def login(**kwargs):
        # A private registry does not get kopf's default login handlers: in-cluster or kubeconfig credentials.
        return kopf.login_via_client(**kwargs)

    namespaces = [settings.namespace] if settings.namespace else []
    asyncio.run(kopf.operator(registry=registry, standalone=True, clusterwide=not namespaces,
                              namespaces=namespaces, liveness_endpoint=settings.liveness_endpoint))
