"""A tiny kopf operator against the emulator: kopf's list/watch, its finalizer, merge patches on the object
and on /status, and the core/v1 events it posts."""

import os
import textwrap
import time

import pytest
from kopf.testing import KopfRunner

G, V, NS, P = "conformance.kubeforge.dev", "v1", "default", "kopfwidgets"

OPERATOR = textwrap.dedent('''
    import kopf

    @kopf.on.login()
    def login(**kwargs):
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup()
    def configure(settings, **_):
        settings.watching.server_timeout = 5
        settings.posting.level = 20  # INFO: post the handler's kopf.info events

    @kopf.on.create("conformance.kubeforge.dev", "v1", "kopfwidgets")
    def created(body, spec, patch, **_):
        patch.status["phase"] = "Ready"
        kopf.info(body, reason="Sized", message=f"size is {spec.get('size')}")
        return {"doubled": spec.get("size", 0) * 2}

    @kopf.on.update("conformance.kubeforge.dev", "v1", "kopfwidgets", field="spec.size")
    def resized(new, patch, **_):
        patch.status["phase"] = f"Resized to {new}"

    @kopf.on.delete("conformance.kubeforge.dev", "v1", "kopfwidgets")
    def deleted(**_):
        pass
''')


def eventually(check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def test_kopf_operator_runs_against_the_emulator(tmp_path, kubeconfig_path, custom, core, monkeypatch):
    operator = tmp_path / "operator.py"
    operator.write_text(OPERATOR)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig_path))
    args = ["run", "--standalone", "--namespace", NS, "--verbose", str(operator)]
    with KopfRunner(args, timeout=60) as runner:
        custom.create_namespaced_custom_object(G, V, NS, P, {
            "apiVersion": f"{G}/{V}", "kind": "KopfWidget", "metadata": {"name": "kw1"}, "spec": {"size": 2}})
        obj = eventually(lambda: (o := custom.get_namespaced_custom_object(G, V, NS, P, "kw1"))
                         .get("status", {}).get("created") and o)
        assert obj["status"]["created"] == {"doubled": 4} and obj["status"]["phase"] == "Ready"
        assert any("kopf" in f for f in obj["metadata"].get("finalizers", []))
        assert obj["metadata"]["generation"] == 1  # status patches do not bump the generation
        events = eventually(lambda: core.list_namespaced_event(
            NS, field_selector="involvedObject.name=kw1,involvedObject.kind=KopfWidget").items)
        assert any(e.reason == "Sized" and e.message == "size is 2" for e in events)

        custom.patch_namespaced_custom_object(G, V, NS, P, "kw1", {"spec": {"size": 5}})
        eventually(lambda: custom.get_namespaced_custom_object(G, V, NS, P, "kw1")["status"].get("phase")
                   == "Resized to 5")

        custom.delete_namespaced_custom_object(G, V, NS, P, "kw1")

        def gone():
            try:
                custom.get_namespaced_custom_object(G, V, NS, P, "kw1")
                return False
            except Exception as error:
                return getattr(error, "status", None) == 404
        eventually(gone)
    assert runner.exit_code == 0, runner.output
    assert "Handler 'created' succeeded" in runner.output
    assert "Handler 'deleted' succeeded" in runner.output
