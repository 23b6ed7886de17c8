"""/metrics: kube-apiserver's request accounting (apiserver_request_total, apiserver_longrunning_requests) in
Prometheus text format, read with Prometheus' own parser, plus the emulator's namespace/client breakdown."""

import threading
import time

from kubernetes import watch
from prometheus_client.parser import text_string_to_metric_families

from tests.conformance.conftest import finetune, raw

G, V, NS, P = "kubeforge.dev", "v1alpha1", "default", "finetunes"
CLIENT = "OpenAPI-Generator"  # the kubernetes Python client's User-Agent product


def samples(server, name: str) -> list[tuple[dict, float]]:
    response = raw(server, "GET", "/metrics", accept="text/plain")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return [(s.labels, s.value) for family in text_string_to_metric_families(response.text)
            for s in family.samples if s.name == name]


def count(server, name: str = "apiserver_request_total", **labels) -> float:
    return sum(value for found, value in samples(server, name) if all(found.get(k) == v for k, v in labels.items()))


def test_each_verb_is_counted_with_kube_apiservers_labels(server, custom):
    custom.create_namespaced_custom_object(G, V, NS, P, finetune("m-one"))
    custom.get_namespaced_custom_object(G, V, NS, P, "m-one")
    custom.list_namespaced_custom_object(G, V, NS, P)
    custom.patch_namespaced_custom_object_status(G, V, NS, P, "m-one", {"status": {"phase": "Pending"}})
    applied = raw(server, "PATCH", f"/apis/{G}/{V}/namespaces/{NS}/{P}/m-one",
                  {**finetune("m-one"), "metadata": {"name": "m-one", "labels": {"a": "b"}}},
                  content_type="application/apply-patch+yaml", fieldManager="conformance")
    assert applied.status_code == 200, applied.text
    raw(server, "GET", f"/apis/{G}/{V}/namespaces/{NS}/{P}/m-missing")
    custom.list_cluster_custom_object(G, V, P)
    custom.delete_namespaced_custom_object(G, V, NS, P, "m-one")

    common = {"group": G, "version": V, "resource": P, "component": "apiserver", "dry_run": ""}
    for verb, scope, subresource, code in [("POST", "namespace", "", "201"), ("GET", "resource", "", "200"),
                                           ("LIST", "namespace", "", "200"), ("PATCH", "resource", "status", "200"),
                                           ("APPLY", "resource", "", "200"), ("GET", "resource", "", "404"),
                                           ("LIST", "cluster", "", "200"), ("DELETE", "resource", "", "200")]:
        assert count(server, verb=verb, scope=scope, subresource=subresource, code=code, **common) == 1, verb
    assert count(server, "sandbox_apiserver_request_total", verb="PATCH", resource=P, subresource="status",
                 namespace=NS, client=CLIENT, code="200") == 1
    assert count(server, "sandbox_apiserver_request_total", verb="LIST", resource=P, namespace="", client=CLIENT) == 1


def test_non_resource_requests_are_not_counted(server):
    before = count(server)
    for path in ("/version", "/apis", "/healthz", "/metrics"):
        raw(server, "GET", path)
    assert count(server) == before


def test_a_watch_is_long_running_while_open_and_counted_when_it_ends(server, custom):
    opened = {"group": G, "version": V, "resource": P, "verb": "WATCH", "scope": "namespace"}
    stream = threading.Thread(target=lambda: list(watch.Watch().stream(
        custom.list_namespaced_custom_object, G, V, NS, P, timeout_seconds=2)))
    stream.start()
    deadline = time.monotonic() + 5
    while count(server, "apiserver_longrunning_requests", **opened) != 1:
        assert time.monotonic() < deadline, "the open watch never showed in apiserver_longrunning_requests"
        time.sleep(0.05)
    assert count(server, "sandbox_apiserver_longrunning_requests", namespace=NS, client=CLIENT, **opened) == 1
    assert count(server, **opened) == 0
    stream.join(10)
    assert count(server, "apiserver_longrunning_requests", **opened) == 0
    assert count(server, code="200", **opened) == 1
