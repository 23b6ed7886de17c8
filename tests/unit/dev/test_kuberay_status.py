"""Table tests for the local KubeRay's pure mappings (Ray job info / Serve details -> KubeRay-shaped status)."""

from datetime import datetime, timedelta, timezone

import pytest

from kubeforge.dev.kuberay.env import EnvError, container_env, head_container
from kubeforge.dev.kuberay.status import (deadline_exceeded, deletion_due, rayjob_status,
                                          rayservice_status)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
STAMP = "2026-01-02T03:04:05Z"
START_MS = int((NOW - timedelta(seconds=30)).timestamp() * 1000)


def rayjob(status=None, generation=3, **spec):
    return {"metadata": {"name": "j", "namespace": "ns", "generation": generation},
            "spec": spec, "status": {"jobId": "j-1", "jobDeploymentStatus": "Running",
                                     "startTime": "2026-01-02T03:00:00Z", **(status or {})}}


@pytest.mark.parametrize("ray_status,message,expect", [
    ("PENDING", "Job has not started yet.", {"jobStatus": "PENDING", "jobDeploymentStatus": "Running"}),
    ("RUNNING", "Job is currently running.", {"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"}),
    ("SUCCEEDED", "Job finished successfully.", {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete",
                                                 "succeeded": 1, "endTime": STAMP}),
    ("FAILED", "Job entrypoint command failed with exit code 7, last available logs: boom",
     {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed", "reason": "AppFailed", "failed": 1, "endTime": STAMP}),
    ("STOPPED", "Job was intentionally stopped.", {"jobStatus": "STOPPED", "jobDeploymentStatus": "Complete",
                                                   "endTime": STAMP}),
])
def test_rayjob_status_table(ray_status, message, expect):
    info = {"status": ray_status, "message": message, "start_time": START_MS,
            "end_time": START_MS + 1000 if ray_status in ("SUCCEEDED", "FAILED", "STOPPED") else None}
    status = rayjob_status(info, rayjob(), NOW)
    for key, value in expect.items():
        assert status[key] == value, key
    assert status["message"] == message and status["observedGeneration"] == 3
    assert status["rayJobInfo"]["startTime"] == "2026-01-02T03:03:35Z"
    assert ("endTime" in status["rayJobInfo"]) == (info["end_time"] is not None)
    assert status["jobId"] == "j-1" and status["startTime"] == "2026-01-02T03:00:00Z"
    if ray_status != "SUCCEEDED":
        assert "succeeded" not in status


def test_rayjob_status_accepts_job_details_objects():
    from ray.job_submission import JobDetails, JobStatus, JobType

    info = JobDetails(type=JobType.SUBMISSION, job_id="01000000", submission_id="j-1", entrypoint="x",
                      status=JobStatus.RUNNING, message="Job is currently running.", start_time=START_MS)
    assert rayjob_status(info, rayjob(), NOW)["jobStatus"] == "RUNNING"


def test_terminal_status_is_kept_and_counts_do_not_grow():
    done = rayjob({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "succeeded": 1})
    assert rayjob_status({"status": "SUCCEEDED"}, done, NOW) == done["status"]


def test_counts_accumulate_over_earlier_attempts():
    status = rayjob_status({"status": "FAILED", "message": "x"}, rayjob({"failed": 2}), NOW)
    assert status["failed"] == 3


def test_job_unknown_to_the_head_fails_as_a_lost_node():
    status = rayjob_status(None, rayjob(), NOW)
    assert status["jobDeploymentStatus"] == "Failed" and status["reason"] == "SubmissionFailed"
    assert "NodeLost" in status["message"] and status["failed"] == 1


@pytest.mark.parametrize("deadline,age,fails", [(None, 999, False), (60, 59, False), (60, 60, True), (5, 300, True)])
def test_active_deadline(deadline, age, fails):
    job = rayjob({"startTime": "2026-01-02T03:00:00Z"}, **({"activeDeadlineSeconds": deadline} if deadline else {}))
    result = deadline_exceeded(job, datetime(2026, 1, 2, 3, 0, 0, tzinfo=timezone.utc) + timedelta(seconds=age))
    if not fails:
        assert result is None
    else:
        assert result["jobDeploymentStatus"] == "Failed" and result["reason"] == "DeadlineExceeded"
        assert f"ActiveDeadlineSeconds: {deadline}" in result["message"]


def test_deadline_ignores_finished_jobs():
    job = rayjob({"jobDeploymentStatus": "Complete"}, activeDeadlineSeconds=1)
    assert deadline_exceeded(job, NOW) is None


def finished(job_status="SUCCEEDED", deployment="Complete", ended_ago=10, **spec):
    return rayjob({"jobStatus": job_status, "jobDeploymentStatus": deployment,
                   "endTime": (NOW - timedelta(seconds=ended_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")}, **spec)


ON = {"onSuccess": {"policy": "DeleteSelf"}, "onFailure": {"policy": "DeleteNone"}}


@pytest.mark.parametrize("job,expect", [
    (finished(), None),  # nothing asked
    (finished(shutdownAfterJobFinishes=True, ttlSecondsAfterFinished=60), None),  # ttl not reached
    (finished(shutdownAfterJobFinishes=True, ttlSecondsAfterFinished=5), "DeleteCluster"),  # never the RayJob
    (finished(deletionStrategy=ON, ttlSecondsAfterFinished=5), "DeleteSelf"),
    (finished(deletionStrategy=ON, ttlSecondsAfterFinished=60), None),
    (finished("FAILED", "Failed", deletionStrategy=ON), None),  # DeleteNone
    (finished("FAILED", "Failed", deletionStrategy={"deletionRules": [
        {"condition": {"jobStatus": "FAILED", "ttlSeconds": 5}, "policy": "DeleteWorkers"},
        {"condition": {"jobStatus": "FAILED", "ttlSeconds": 8}, "policy": "DeleteSelf"}]}), "DeleteSelf"),
    (finished("FAILED", "Failed", deletionStrategy={"deletionRules": [
        {"condition": {"jobDeploymentStatus": "Failed", "ttlSeconds": 20}, "policy": "DeleteSelf"}]}), None),
    (rayjob(shutdownAfterJobFinishes=True), None),  # still running
])
def test_deletion_due(job, expect):
    assert deletion_due(job, NOW) == expect


def service(status=None):
    return {"metadata": {"name": "svc", "namespace": "ns", "generation": 2}, "spec": {}, "status": status or {}}


def test_rayservice_running_when_all_apps_run():
    details = {"a": {"status": "RUNNING", "deployments": {"D": {"status": "HEALTHY", "message": ""}}},
               "b": {"status": "RUNNING", "deployments": {}}}
    status = rayservice_status(details, service(), NOW, "svc-raycluster", {"serve": "8000"})
    assert status["serviceStatus"] == "Running" and status["numServeEndpoints"] == 1
    assert status["activeServiceStatus"]["applicationStatuses"]["a"] == {
        "status": "RUNNING", "serveDeploymentStatuses": {"D": {"status": "HEALTHY"}}}
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True" and conditions["Ready"]["observedGeneration"] == 2
    assert conditions["UpgradeInProgress"]["status"] == "False"
    # Unchanged input -> unchanged status (write only on change), transition times kept.
    assert rayservice_status(details, service(status), NOW + timedelta(seconds=5), "svc-raycluster",
                             {"serve": "8000"}) == status


@pytest.mark.parametrize("details,error,reason", [
    (None, None, "Initializing"),
    ({"a": {"status": "DEPLOYING"}}, None, "Initializing"),
    ({"a": {"status": "DEPLOY_FAILED", "message": "ImportError: no module x"}}, None, "ZeroServeEndpoints"),
    ({}, "spec.serveConfigV2 must be ...", "ValidationFailed"),
])
def test_rayservice_not_ready(details, error, reason):
    status = rayservice_status(details, service(), NOW, "c", {}, error)
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert status["serviceStatus"] == "" and ready["status"] == "False" and ready["reason"] == reason
    if details and details.get("a", {}).get("message"):
        assert "ImportError" in ready["message"]


def test_rayservice_ready_transition_time_moves_only_on_change():
    running = rayservice_status({"a": {"status": "RUNNING"}}, service(), NOW, "c", {})
    later = NOW + timedelta(minutes=1)
    broken = rayservice_status({"a": {"status": "UNHEALTHY"}}, service(running), later, "c", {})
    ready = {c["type"]: c for c in broken["conditions"]}["Ready"]
    assert ready["lastTransitionTime"] == "2026-01-02T03:05:05Z" and broken["lastUpdateTime"] == ready["lastTransitionTime"]


DATA = {("ns", "creds"): {"KEY": "s3cret", "OTHER": "o"}, ("ns", "cfg"): {"URI": "http://m"}}


def lookup(namespace, name):
    return DATA.get((namespace, name))


@pytest.mark.parametrize("container,expect", [
    (None, {}),
    ({"env": [{"name": "A", "value": "1"}]}, {"A": "1"}),
    ({"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "KEY"}}}]}, {"A": "s3cret"}),
    ({"env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "URI"}}}]}, {"A": "http://m"}),
    ({"envFrom": [{"secretRef": {"name": "creds"}, "prefix": "P_"}]}, {"P_KEY": "s3cret", "P_OTHER": "o"}),
    ({"envFrom": [{"configMapRef": {"name": "cfg"}}], "env": [{"name": "URI", "value": "override"}]},
     {"URI": "override"}),
    ({"envFrom": [{"secretRef": {"name": "gone", "optional": True}}]}, {}),
    ({"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nokey", "optional": True}}}]}, {}),
    ({"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}, {}),
])
def test_container_env(container, expect):
    assert container_env(container, "ns", lookup, lookup) == expect


@pytest.mark.parametrize("container,needle", [
    ({"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]}, 'secret "gone" not found'),
    ({"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}]}, "couldn't find key k"),
    ({"envFrom": [{"configMapRef": {"name": "gone"}}]}, 'configmap "gone" not found'),
])
def test_container_env_errors(container, needle):
    with pytest.raises(EnvError, match=needle):
        container_env(container, "ns", lookup, lookup)


def test_head_container_of_rayjob_and_rayservice():
    c = {"name": "ray-head"}
    group = {"headGroupSpec": {"template": {"spec": {"containers": [c]}}}}
    assert head_container({"rayClusterSpec": group}) == c
    assert head_container({"rayClusterConfig": group}) == c
    assert head_container({"clusterSelector": {"ray.io/cluster": "x"}}) is None
