"""The real operator process against the API emulator and an S3 server, nothing else (no Ray, no KubeRay: the
test plays KubeRay by writing RayJob status). With a one-minute resync, only watch events can move a resource
along quickly: a child's status change must reach its owner within seconds, and a pass must not LIST or GET."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kubernetes import client, config

from kubeforge.cluster import Cluster
from kubeforge.dev import sandbox as sandbox_mod
from tests.integration.sandbox_fixtures import free_port_block

G, V = "kubeforge.dev", "v1alpha1"
NS = sandbox_mod.NAMESPACE
RESYNC = "60"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, monkeypatch_module):
    state = sandbox_mod.SandboxState(state_dir=str(tmp_path_factory.mktemp("events")),
                                     ports=sandbox_mod.Ports.from_base(free_port_block()))
    state.save()
    monkeypatch_module.setenv("KUBEFORGE_RECONCILE_PERIOD_SECONDS", RESYNC)
    monkeypatch_module.setenv("KUBEFORGE_STARTUP_JITTER_SECONDS", "0")
    try:
        sandbox_mod.start_s3(state)
        sandbox_mod.start_apiserver(state)
        sandbox_mod.create_workload_secret(state)
        sandbox_mod.start_operator(state)
        api = config.new_client_from_config(str(state.kubeconfig))
        yield state, client.CustomObjectsApi(api)
    finally:
        sandbox_mod.down(Path(state.state_dir))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def eventually(check, timeout=20.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout}s")
        time.sleep(interval)


def finetune(name: str) -> dict:
    return {"apiVersion": f"{G}/{V}", "kind": "FineTune", "metadata": {"name": name, "namespace": NS},
            "spec": {"baseModel": {"uri": "s3://kubeforge/models/base"}, "dataset": {"trainUri": "s3://kubeforge/t.jsonl"},
                     "output": {"registeredModelName": name},
                     "failurePolicy": {"backoff": {"initialSeconds": 1, "maxSeconds": 1}}}}


def rayjob(api, name):
    try:
        return api.get_namespaced_custom_object("ray.io", "v1", NS, "rayjobs", name)
    except client.exceptions.ApiException as error:
        if error.status == 404:
            return None
        raise


def set_job_status(api, name, **status):
    api.patch_namespaced_custom_object_status("ray.io", "v1", NS, "rayjobs", name, {"status": status})


def owner_status(api, name):
    return api.get_namespaced_custom_object(G, V, NS, "finetunes", name).get("status") or {}


def test_a_child_status_change_reaches_its_owner_without_waiting_for_the_resync(cluster):
    state, api = cluster
    api.create_namespaced_custom_object(G, V, NS, "finetunes", finetune("evented"))
    eventually(lambda: rayjob(api, "evented-1"))

    started = time.monotonic()
    set_job_status(api, "evented-1", jobDeploymentStatus="Running", jobStatus="RUNNING")
    eventually(lambda: owner_status(api, "evented")["conditions"][0]["reason"] == "Running")
    assert time.monotonic() - started < 5  # the resync is 60 s: only the watch event explains this

    started = time.monotonic()
    set_job_status(api, "evented-1", jobDeploymentStatus="Failed", jobStatus="FAILED", message="node lost")
    eventually(lambda: rayjob(api, "evented-2"))  # failure seen, 1 s backoff, next attempt recorded and created
    assert time.monotonic() - started < 10
    assert owner_status(api, "evented")["attempts"][0]["outcome"] == "Failed"


def test_a_running_resource_costs_no_api_requests_while_nothing_changes(cluster):
    state, api = cluster
    api.create_namespaced_custom_object(G, V, NS, "finetunes", finetune("quiet"))
    eventually(lambda: rayjob(api, "quiet-1"))
    set_job_status(api, "quiet-1", jobDeploymentStatus="Running", jobStatus="RUNNING")
    eventually(lambda: owner_status(api, "quiet")["conditions"][0]["reason"] == "Running")
    before = owner_status(api, "quiet")
    version = api.get_namespaced_custom_object(G, V, NS, "finetunes", "quiet")["metadata"]["resourceVersion"]
    time.sleep(8)  # four heartbeat polls (2 s in the sandbox), no heartbeat written: nothing to record
    after = api.get_namespaced_custom_object(G, V, NS, "finetunes", "quiet")
    assert after["status"] == before
    assert after["metadata"]["resourceVersion"] == version, after["metadata"]


def test_a_rayservice_child_is_server_side_applied_and_an_unchanged_spec_changes_nothing(cluster):
    state, api = cluster
    children = Cluster(api)
    body = {"apiVersion": "ray.io/v1", "kind": "RayService",
            "metadata": {"name": "applied", "namespace": NS, "labels": {"kubeforge.dev/owner-uid": "u1"}},
            "spec": {"serveConfigV2": "applications: []\n", "rayClusterConfig": {
                "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [
                    {"name": "ray-head", "image": "rayproject/ray:2.60.0"}]}}}}}}
    first = children.apply(body)
    again = children.apply(body)
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert [m["manager"] for m in again["metadata"]["managedFields"] if m["operation"] == "Apply"] == ["kubeforge"]
    # Another manager's field survives Kubeforge's next apply; a field Kubeforge changes is changed.
    api.patch_namespaced_custom_object("ray.io", "v1", NS, "rayservices", "applied",
                                       {"metadata": {"annotations": {"platform/team": "ml"}}})
    body["spec"]["serveConfigV2"] = "applications:\n- name: llm\n  import_path: app:deployment\n"
    changed = children.apply(body)
    assert changed["metadata"]["annotations"] == {"platform/team": "ml"}
    assert changed["spec"]["serveConfigV2"].startswith("applications:\n- name: llm")
    assert list(children.children_of("rayservices", NS, "u1")) == ["applied"]
    children.delete_child("rayservices", NS, "applied")
    assert children.children_of("rayservices", NS, "u1") == {}
