"""LocalKubeRay.sync against fakes of the API and of Ray's JobSubmissionClient: ids recorded before submission,
adoption after a restart, transient Ray trouble retried, odd input failed with a message (no crash loop)."""

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from kubeforge.dev.kuberay.controller import FINALIZER, LocalKubeRay


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


def rayjob(**spec):
    return {"metadata": {"name": "j", "namespace": "ns", "uid": "0123456789abcdef", "generation": 1,
                         "resourceVersion": "1"},
            "spec": {"entrypoint": "python -c 1", "runtimeEnvYAML": "env_vars:\n  A: b\n", **spec}}


def controller(obj, **jobs_kwargs):
    api = FakeApi(obj)
    jobs = FakeJobs(api, **jobs_kwargs)
    return LocalKubeRay(api, None, jobs, "http://127.0.0.1:8265",
                        clock=lambda: datetime(2026, 1, 1, tzinfo=timezone.utc)), api, jobs


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


@pytest.mark.parametrize("spec,needle", [
    ({"entrypoint": ""}, "spec.entrypoint is required"),
    ({"runtimeEnvYAML": "[1, 2]"}, "runtimeEnvYAML"),
    ({"runtimeEnvYAML": "a: [unclosed"}, "failed to submit"),
])
def test_odd_input_fails_with_a_message(spec, needle):
    kuberay, api, jobs = controller(rayjob(**spec))
    kuberay.sync(api.obj)
    status = api.obj["status"]
    assert status["jobDeploymentStatus"] == "Failed" and needle in status["message"] and jobs.submitted == []


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
