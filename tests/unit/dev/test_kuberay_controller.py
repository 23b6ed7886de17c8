"""LocalKubeRay.sync against fakes of the API and of Ray's JobSubmissionClient: ids recorded before submission,
adoption after a restart, transient Ray trouble retried, odd input failed with a message (no crash loop)."""

import json
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from kubeforge.dev.kuberay.controller import FINALIZER, LocalKubeRay
from kubeforge.dev.kuberay.scheduling import Node


class FakeApi:
    def __init__(self, obj):
        self.obj, self.status_writes, self.deleted = obj, [], False

    def patch_namespaced_custom_object_status(self, g, v, ns, plural, name, body):
        status = {k: v for k, v in {**(self.obj.get("status") or {}), **body["status"]}.items() if v is not None}
        self.obj["status"] = status
        self.status_writes.append(dict(status))

    def patch_namespaced_custom_object(self, g, v, ns, plural, name, body):
        self.obj["metadata"].update({k: v for k, v in body["metadata"].items() if k != "resourceVersion"})

    def delete_namespaced_custom_object(self, g, v, ns, plural, name):
        self.deleted = True


class FakeJobs:
    def __init__(self, api=None, existing=None, fail_with=None):
        self.api, self.jobs, self.submitted, self.fail_with = api, dict(existing or {}), [], fail_with

    def get_job_info(self, job_id):
        if self.fail_with:
            raise self.fail_with
        if job_id not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")
        return SimpleNamespace(status=SimpleNamespace(value=self.jobs[job_id]), message="m", start_time=1, end_time=None,
                               job_id="01000000", driver_info=None)

    def submit_job(self, entrypoint, submission_id, runtime_env, **kwargs):
        # The id must already be on the RayJob: a restart right now must adopt, not resubmit.
        assert self.api.obj["status"]["jobId"] == submission_id
        assert self.api.obj["status"]["jobDeploymentStatus"] == "Initializing"
        self.submitted.append((entrypoint, submission_id, runtime_env))
        self.jobs[submission_id] = "PENDING"
        return submission_id

    def stop_job(self, job_id):
        self.jobs[job_id] = "STOPPED"


class FakeCore:
    """Namespaces (with annotations) and the events the controller records."""

    def __init__(self, namespace_annotations=None, serve_services=()):
        self.namespace_annotations, self.events = dict(namespace_annotations or {}), []
        self.serve_services = [SimpleNamespace(metadata=SimpleNamespace(name=name, namespace=namespace),
                                               spec=SimpleNamespace(ports=[SimpleNamespace(port=8000)]))
                               for namespace, name in serve_services]

    def list_service_for_all_namespaces(self, label_selector):
        assert label_selector == "ray.io/serve=true"
        return SimpleNamespace(items=self.serve_services)

    def read_namespace(self, name):
        return SimpleNamespace(metadata=SimpleNamespace(annotations=self.namespace_annotations))

    def create_namespaced_event(self, namespace, body):
        self.events.append(body)


HEAD = {"name": "ray-head", "image": "ray", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}


def cluster_spec(head=None, workers=()):
    return {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [head or HEAD]}}},
            "workerGroupSpecs": list(workers)}


def rayjob(name="j", **spec):
    return {"metadata": {"name": name, "namespace": "ns", "uid": "0123456789abcdef", "generation": 1,
                         "resourceVersion": "1"},
            "spec": {"entrypoint": "python -c 1", "runtimeEnvYAML": "env_vars:\n  A: b\n",
                     "rayClusterSpec": cluster_spec(), **spec}}



def test_a_job_reaches_serve_services_by_their_cluster_dns_names_through_the_local_proxy():
    core = FakeCore(serve_services=[("team", "assistant-serve-svc")])
    kuberay, api, jobs = controller(rayjob(), core=core)
    kuberay.serve_port = 18000
    kuberay.sync(api.obj)
    (_, _, runtime_env), = jobs.submitted
    aliases = json.loads(runtime_env["env_vars"]["KUBEFORGE_SERVICE_ALIASES"])
    assert aliases == {f"assistant-serve-svc.team{suffix}:8000": "127.0.0.1:18000"
                       for suffix in ("", ".svc", ".svc.cluster.local")}


NODE = Node({"cpu": 4.0, "memory": 16.0 * 2**30, "pods": 110.0}, {"kubernetes.io/hostname": "local"})


def controller(obj, core=None, clock=None, **jobs_kwargs):
    api = FakeApi(obj)
    jobs = FakeJobs(api, **jobs_kwargs)
    return LocalKubeRay(api, core or FakeCore(), jobs, "http://127.0.0.1:8265",
                        clock=clock or (lambda: datetime(2026, 1, 1, tzinfo=timezone.utc)), node=NODE,
                        chaos_dir="/nonexistent/chaos"), api, jobs


def test_first_pass_records_ids_then_submits_and_runs():
    kuberay, api, jobs = controller(rayjob())
    kuberay.sync(api.obj)
    assert [w["jobDeploymentStatus"] for w in api.status_writes] == ["Initializing", "Running"]
    assert api.obj["status"]["jobId"] == "j-01234567" and api.obj["status"]["rayClusterName"] == "j-raycluster"
    (entrypoint, job_id, runtime_env), = jobs.submitted
    assert runtime_env["env_vars"]["A"] == "b" and runtime_env["env_vars"]["KUBEFORGE_LOCAL_RAYJOB"] == job_id
    assert FINALIZER in api.obj["metadata"]["finalizers"]
    jobs.jobs[job_id] = "SUCCEEDED"
    kuberay.sync(api.obj)
    assert api.obj["status"]["jobDeploymentStatus"] == "Complete" and api.obj["status"]["succeeded"] == 1
    writes = len(api.status_writes)
    kuberay.sync(api.obj)
    assert len(api.status_writes) == writes  # write only on change


def test_restart_between_record_and_submit_adopts_the_existing_job():
    obj = rayjob()
    obj["status"] = {"jobId": "j-01234567", "jobDeploymentStatus": "Initializing", "startTime": "2026-01-01T00:00:00Z"}
    kuberay, api, jobs = controller(obj, existing={"j-01234567": "RUNNING"})
    kuberay.sync(api.obj)
    assert jobs.submitted == [] and api.obj["status"]["jobDeploymentStatus"] == "Running"


def test_ray_head_trouble_is_retried_not_failed():
    obj = rayjob()
    obj["status"] = {"jobId": "j-01234567", "jobDeploymentStatus": "Running", "startTime": "2026-01-01T00:00:00Z"}
    kuberay, api, jobs = controller(obj, fail_with=ConnectionError("connection refused"))
    kuberay.api.list_cluster_custom_object = lambda *a: {"items": [api.obj]} if a[-1] == "rayjobs" else {"items": []}
    kuberay.sync_all()
    assert api.obj["status"]["jobDeploymentStatus"] == "Running"


@pytest.mark.parametrize("spec,deployment,needle", [
    ({"entrypoint": ""}, "Failed", "spec.entrypoint is required"),
    ({"runtimeEnvYAML": "[1, 2]"}, "ValidationFailed", "failed to unmarshal RuntimeEnvYAML"),
    ({"runtimeEnvYAML": "a: [unclosed"}, "ValidationFailed", "failed to unmarshal RuntimeEnvYAML"),
])
def test_odd_input_fails_with_a_message(spec, deployment, needle):
    kuberay, api, jobs = controller(rayjob(**spec))
    kuberay.sync(api.obj)
    status = api.obj["status"]
    assert status["jobDeploymentStatus"] == deployment and needle in status["message"] and jobs.submitted == []


def test_unexpected_shape_is_failed_by_sync_all():
    obj = rayjob(rayClusterSpec="not-a-mapping")
    obj["status"] = {"jobId": "j-01234567", "jobDeploymentStatus": "Running", "startTime": "2026-01-01T00:00:00Z"}
    kuberay, api, jobs = controller(obj, existing={"j-01234567": "RUNNING"})
    kuberay.sync = lambda o: (_ for _ in ()).throw(TypeError("string indices must be integers"))
    kuberay.api.list_cluster_custom_object = lambda *a: {"items": [api.obj]} if a[-1] == "rayjobs" else {"items": []}
    kuberay.sync_all()
    assert api.obj["status"]["jobDeploymentStatus"] == "Failed"
    assert "cannot run this RayJob" in api.obj["status"]["message"]


def test_deleted_rayjob_stops_its_job_and_drops_the_finalizer():
    obj = rayjob()
    obj["metadata"].update(deletionTimestamp="2026-01-01T00:00:00Z", finalizers=[FINALIZER, "other"])
    obj["status"] = {"jobId": "j-01234567", "jobDeploymentStatus": "Running"}
    kuberay, api, jobs = controller(obj, existing={"j-01234567": "RUNNING"})
    kuberay.sync(api.obj)
    assert jobs.jobs["j-01234567"] == "STOPPED" and api.obj["metadata"]["finalizers"] == ["other"]


def test_delete_self_after_ttl():
    obj = rayjob(ttlSecondsAfterFinished=5, deletionStrategy={"onSuccess": {"policy": "DeleteSelf"},
                                                               "onFailure": {"policy": "DeleteNone"}})
    obj["metadata"]["finalizers"] = [FINALIZER]
    obj["status"] = {"jobId": "j-01234567", "jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED",
                     "endTime": "2025-12-31T23:59:50Z"}
    kuberay, api, jobs = controller(obj)
    kuberay.sync(api.obj)
    assert api.deleted


@pytest.mark.parametrize("name,needle", [
    ("a" * 48, "The RayJob metadata is invalid: RayJob name should be no more than 47 characters"),
    ("7th-run", "RayJob name should be a valid DNS1035 label: [a DNS-1035 label must consist of lower case"),
    ("team.docs", "RayJob name should be a valid DNS1035 label"),
])
def test_name_refused_as_kuberay_refuses_it(name, needle):
    core = FakeCore()
    kuberay, api, jobs = controller(rayjob(name=name), core=core)
    kuberay.sync(api.obj)
    kuberay.sync(api.obj)
    status = api.obj["status"]
    assert status["jobDeploymentStatus"] == "ValidationFailed" and status["reason"] == "ValidationFailed"
    assert needle in status["message"] and jobs.submitted == [] and "jobId" not in status
    (event,) = core.events  # once, not every pass
    assert (event.type, event.reason, event.action) == ("Warning", "InvalidRayJobMetadata", "Validate")
    assert event.message == f"ns/{name}: {status['message']}" and event.involved_object.kind == "RayJob"
    assert FINALIZER not in (api.obj["metadata"].get("finalizers") or [])


def test_longest_valid_name_runs():
    kuberay, api, jobs = controller(rayjob(name="a" * 47))
    kuberay.sync(api.obj)
    assert api.obj["status"]["jobDeploymentStatus"] == "Running" and len(jobs.submitted) == 1


def test_spec_refused_while_running_is_validation_failed():
    obj = rayjob()
    kuberay, api, jobs = controller(obj)
    kuberay.sync(api.obj)
    api.obj["spec"]["suspend"] = True  # without shutdownAfterJobFinishes: KubeRay refuses the suspend
    kuberay.sync(api.obj)
    assert api.obj["status"]["jobDeploymentStatus"] == "ValidationFailed"
    assert "not allowed to be suspended" in api.obj["status"]["message"]


def test_unschedulable_job_stays_initializing_with_the_schedulers_message():
    gpu_worker = {"groupName": "workers", "replicas": 1, "minReplicas": 1, "maxReplicas": 1, "template": {"spec": {
        "containers": [{"name": "w", "resources": {"limits": {"cpu": "1", "nvidia.com/gpu": 1}}}]}}}
    core = FakeCore()
    kuberay, api, jobs = controller(rayjob(rayClusterSpec=cluster_spec(workers=[gpu_worker])), core=core)
    for _ in range(3):
        kuberay.sync(api.obj)
    status = api.obj["status"]
    assert status["jobDeploymentStatus"] == "Initializing" and jobs.submitted == []
    provisioned = {c["type"]: c for c in status["rayClusterStatus"]["conditions"]}["RayClusterProvisioned"]
    assert provisioned["status"] == "False" and provisioned["reason"] == "RayClusterPodsProvisioning"
    (event,) = core.events
    assert event.reason == "FailedScheduling" and event.message.startswith(
        "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")


def test_namespace_annotation_holds_the_start_for_its_seconds():
    from datetime import timedelta

    now = [datetime(2026, 1, 1, tzinfo=timezone.utc)]
    core = FakeCore({"kuberay.kubeforge.dev/hold-start-seconds": "30"})
    kuberay, api, jobs = controller(rayjob(), core=core, clock=lambda: now[0])
    kuberay.sync(api.obj)
    now[0] += timedelta(seconds=29)
    kuberay.sync(api.obj)
    assert api.obj["status"]["jobDeploymentStatus"] == "Initializing" and jobs.submitted == []
    now[0] += timedelta(seconds=2)
    kuberay.sync(api.obj)
    assert api.obj["status"]["jobDeploymentStatus"] == "Running" and len(jobs.submitted) == 1
    assert "rayClusterStatus" not in api.obj["status"]


def test_held_start_fails_past_the_pre_running_deadline():
    from datetime import timedelta

    now = [datetime(2026, 1, 1, tzinfo=timezone.utc)]
    core = FakeCore({"kuberay.kubeforge.dev/hold-start-seconds": "600"})
    kuberay, api, jobs = controller(rayjob(preRunningDeadlineSeconds=10), core=core, clock=lambda: now[0])
    kuberay.sync(api.obj)
    now[0] += timedelta(seconds=11)
    kuberay.sync(api.obj)
    status = api.obj["status"]
    assert status["jobDeploymentStatus"] == "Failed" and status["reason"] == "PreRunningDeadlineExceeded"
    assert jobs.submitted == []


def test_runtime_env_names_the_chaos_files():
    kuberay, api, jobs = controller(rayjob())
    kuberay.sync(api.obj)
    (_, job_id, runtime_env), = jobs.submitted
    assert runtime_env["env_vars"]["KUBEFORGE_CHAOS_STALL_FILE"] == f"/nonexistent/chaos/{job_id}.stall"
    assert runtime_env["env_vars"]["KUBEFORGE_CHAOS_MEMORY_FILE"] == f"/nonexistent/chaos/{job_id}.memory"


def running(obj, kuberay, api):
    kuberay.sync(api.obj)
    assert api.obj["status"]["jobDeploymentStatus"] == "Running"
    return api.obj["status"]["jobId"]


def test_backoff_limit_retries_a_failed_job_under_a_fresh_id_then_fails_for_good():
    kuberay, api, jobs = controller(rayjob(backoffLimit=1))
    first = running(api.obj, kuberay, api)
    jobs.jobs[first] = "FAILED"
    kuberay.sync(api.obj)
    status = api.obj["status"]
    # Written Retrying, never Failed, with the failure counted and its reason kept until the retry clears it.
    assert (status["jobDeploymentStatus"], status["failed"], status["reason"]) == ("Retrying", 1, "AppFailed")
    assert all(w["jobDeploymentStatus"] != "Failed" for w in api.status_writes)
    kuberay.sync(api.obj)
    assert {"jobId", "jobDeploymentStatus", "reason", "message", "rayClusterName"}.isdisjoint(api.obj["status"])
    assert api.obj["status"]["failed"] == 1 and "startTime" in api.obj["status"]
    second = running(api.obj, kuberay, api)
    assert second == f"{first}-1" and [job_id for _, job_id, _ in jobs.submitted] == [first, second]
    jobs.jobs[second] = "FAILED"
    kuberay.sync(api.obj)
    status = api.obj["status"]
    assert (status["jobDeploymentStatus"], status["failed"], status["reason"]) == ("Failed", 2, "AppFailed")
    kuberay.sync(api.obj)
    assert len(jobs.submitted) == 2  # backoffLimit 1: two runs in all


@pytest.mark.parametrize("spec", [{}, {"backoffLimit": 0}, {"backoffLimit": 3, "activeDeadlineSeconds": 5}])
def test_no_retry_without_backoff_limit_or_after_a_deadline(spec):
    from datetime import timedelta

    now = [datetime(2026, 1, 1, tzinfo=timezone.utc)]
    kuberay, api, jobs = controller(rayjob(**spec), clock=lambda: now[0])
    job_id = running(api.obj, kuberay, api)
    if "activeDeadlineSeconds" in spec:
        jobs.jobs[job_id] = "RUNNING"
        now[0] += timedelta(seconds=6)
    else:
        jobs.jobs[job_id] = "FAILED"
    kuberay.sync(api.obj)
    kuberay.sync(api.obj)
    assert api.obj["status"]["jobDeploymentStatus"] == "Failed" and api.obj["status"]["failed"] == 1
    assert len(jobs.submitted) == 1


def test_chaos_kill_only_kills_and_the_status_comes_from_ray(monkeypatch):
    from kubeforge.dev.kuberay import processes

    signals = []
    monkeypatch.setattr(processes, "job_pids", lambda *a: {101, 102})
    monkeypatch.setattr(processes, "signal_all", lambda pids, sig: signals.append((set(pids), sig)) or len(pids))
    kuberay, api, jobs = controller(rayjob())
    job_id = running(api.obj, kuberay, api)
    api.obj["metadata"]["annotations"] = {"chaos.kubeforge.dev/action": "kill:NodeLost"}
    kuberay.sync(api.obj)
    assert signals == [({101, 102}, processes.KILL)]
    assert api.obj["status"]["jobDeploymentStatus"] == "Running"  # nothing written by the chaos itself
    jobs.jobs[job_id] = "FAILED"  # what Ray then reports for the killed driver
    kuberay.sync(api.obj)
    status = api.obj["status"]
    assert (status["jobDeploymentStatus"], status["reason"], status["message"]) == ("Failed", "AppFailed", "m")


def test_memory_monitor_oom_kills_the_container_over_its_limit(monkeypatch):
    from kubeforge.dev.kuberay import processes

    signals, core = [], FakeCore()
    monkeypatch.setattr(processes, "containers_of", lambda job_id: {"head": {7}, "worker:8": {8}})
    monkeypatch.setattr(processes, "with_children", lambda pids: set(pids))
    rss = {7: 100 * 2**20, 8: 3 * 2**30}
    monkeypatch.setattr(processes, "rss_bytes", lambda pids: sum(rss[p] for p in pids))
    monkeypatch.setattr(processes, "signal_all", lambda pids, sig: signals.append((set(pids), sig)) or len(pids))
    worker = {"groupName": "workers", "replicas": 1, "minReplicas": 1, "maxReplicas": 1, "template": {"spec": {
        "containers": [{"name": "ray-worker", "resources": {"limits": {"cpu": "1", "memory": "4Gi"}}}]}}}
    kuberay, api, jobs = controller(rayjob(rayClusterSpec=cluster_spec(workers=[worker])), core=core)
    job_id = running(api.obj, kuberay, api)
    jobs.jobs[job_id] = "RUNNING"
    kuberay.sync(api.obj)
    assert signals == []  # under the limit
    rss[8] = 4 * 2**30 + 1
    kuberay.sync(api.obj)
    assert signals == [({8}, processes.KILL)]
    assert [e.reason for e in core.events] == ["OOMKilled"]
    jobs.jobs[job_id] = "FAILED"
    kuberay.sync(api.obj)
    status = api.obj["status"]
    assert status["jobDeploymentStatus"] == "Failed" and status["reason"] == "AppFailed"
    assert status["message"] == "Ray worker pod container ray-worker terminated with exit code 137: OOMKilled\nm"


def test_chaos_stall_resume_and_oom_write_the_files_the_workload_watches(tmp_path, monkeypatch):
    from kubeforge.dev.kuberay import processes

    monkeypatch.setattr(processes, "job_pids", lambda *a: set())
    kuberay, api, jobs = controller(rayjob())
    kuberay.chaos_dir = tmp_path
    job_id = running(api.obj, kuberay, api)
    for action, stalled in (("stall", True), ("resume", False)):
        api.obj["metadata"]["annotations"] = {"chaos.kubeforge.dev/action": action}
        kuberay.sync(api.obj)
        assert (tmp_path / f"{job_id}.stall").exists() is stalled
        assert api.obj["metadata"]["annotations"]["chaos.kubeforge.dev/action"] is None
    api.obj["metadata"]["annotations"] = {"chaos.kubeforge.dev/action": "oom"}
    kuberay.sync(api.obj)
    # head limit 1Gi (HEAD) + 1Gi: just over what the monitor allows
    assert int((tmp_path / f"{job_id}.memory").read_text()) == 2 * 2**30


def test_chaos_evict_records_the_kubelets_event_and_kills(monkeypatch):
    from kubeforge.dev.kuberay import processes

    signals, core = [], FakeCore()
    monkeypatch.setattr(processes, "job_pids", lambda *a: {101})
    monkeypatch.setattr(processes, "signal_all", lambda pids, sig: signals.append((set(pids), sig)) or len(pids))
    kuberay, api, jobs = controller(rayjob(), core=core)
    running(api.obj, kuberay, api)
    api.obj["metadata"]["annotations"] = {"chaos.kubeforge.dev/action": "kill:Evicted"}
    kuberay.sync(api.obj)
    assert signals == [({101}, processes.KILL)] and api.obj["status"]["jobDeploymentStatus"] == "Running"
    (event,) = core.events
    assert (event.type, event.reason, event.source.component) == ("Warning", "Evicted", "kubelet")


def test_refused_rayservice_is_not_deployed_and_not_ready():
    svc = {"apiVersion": "ray.io/v1", "kind": "RayService",
           "metadata": {"name": "s" * 48, "namespace": "ns", "uid": "u", "generation": 1, "resourceVersion": "1"},
           "spec": {"serveConfigV2": "applications:\n- name: a\n  import_path: m:app\n",
                    "rayClusterConfig": cluster_spec()}}
    core = FakeCore()
    kuberay, api, jobs = controller(svc, core=core)
    deployed = []
    kuberay._serve_request = lambda method, body=None: deployed.append((method, body)) or {"applications": {}}
    kuberay.ensure_serve_service = lambda *a: None
    kuberay.api.list_cluster_custom_object = lambda *a: {"items": [api.obj]}
    kuberay.sync_services()
    kuberay.sync_services()
    assert [m for m, _ in deployed if m == "PUT"] == []
    ready = {c["type"]: c for c in api.obj["status"]["conditions"]}["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "ValidationFailed"
    assert ready["message"] == ("The RayService metadata is invalid: RayService name should be no more than 47 "
                                "characters")
    assert [(e.reason, e.message) for e in core.events] == [("InvalidRayServiceMetadata", f"ns/{'s' * 48}: "
                                                             f"{ready['message']}")]


def status_only_controller(obj, core=None):
    api = FakeApi(obj)
    return LocalKubeRay(api, core or FakeCore(), None, "", clock=lambda: datetime(2026, 1, 1, tzinfo=timezone.utc),
                        node=NODE, chaos_dir="/nonexistent/chaos", status_only=True), api


def test_status_only_reports_a_valid_rayjob_running_as_kuberay_and_then_writes_nothing():
    kuberay, api = status_only_controller(rayjob())
    kuberay.sync(api.obj)
    assert [w["jobDeploymentStatus"] for w in api.status_writes] == ["Initializing", "Running"]
    status = api.obj["status"]
    assert (status["jobStatus"], status["jobId"], status["rayClusterName"]) == ("RUNNING", "j-01234567", "j-raycluster")
    assert status["startTime"] == status["rayJobInfo"]["startTime"] == "2026-01-01T00:00:00Z"
    assert FINALIZER in api.obj["metadata"]["finalizers"]
    kuberay.sync(api.obj)
    assert len(api.status_writes) == 2


def test_status_only_refuses_what_kuberay_refuses_and_keeps_an_end_written_by_others():
    refused, api = status_only_controller(rayjob(name="x" * 48))
    refused.sync(api.obj)
    assert api.obj["status"]["jobDeploymentStatus"] == "ValidationFailed"
    kuberay, api = status_only_controller(rayjob())
    kuberay.sync(api.obj)
    api.obj["status"].update(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    kuberay.sync(api.obj)
    assert api.obj["status"]["jobDeploymentStatus"] == "Complete" and len(api.status_writes) == 2
