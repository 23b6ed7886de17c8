"""The sandbox's local KubeRay against a real Ray head and the API emulator: RayJob status transitions, env from
Secrets/ConfigMaps, failure messages with exit codes, deletion, deadline, restart adoption, chaos kill/hang/resume,
and a RayService deployed to Serve."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import KUBERAY_CRDS, REPO_ROOT

pytestmark = pytest.mark.slow
NS = "default"
G, V, P = "ray.io", "v1", "rayjobs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    from kubeforge.dev import ray_head as head

    state = tmp_path_factory.mktemp("ray")
    from tests.integration.sandbox_fixtures import free_port_block

    base = free_port_block()  # Ray pins ~100 ports above the GCS port
    address = head.start(state, gcs_port=base, dashboard_port=base + 98, serve_port=base + 99, num_cpus=2)
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    os.environ.update(head.client_env(state))
    try:
        yield {"address": address, "state": state, "serve_port": int((state / "serve_port").read_text())}
    finally:
        head.stop(state, timeout=8)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def cluster(ray_head, tmp_path_factory):
    from kubernetes import client, config

    from kubeforge.dev.apiserver import ApiServer, kubeconfig

    tmp = tmp_path_factory.mktemp("kuberay")
    with ApiServer(crd_dirs=[REPO_ROOT / "crds", KUBERAY_CRDS]) as server:
        kubeconfig_path = tmp / "kubeconfig"
        kubeconfig_path.write_text(yaml.safe_dump(kubeconfig(server.url)))
        api_client = config.new_client_from_config(str(kubeconfig_path))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT)])}
        log_path = tmp / "kuberay.log"
        argv = [sys.executable, "-m", "kubeforge.dev.kuberay", "--kubeconfig", str(kubeconfig_path), "--ray-address",
                ray_head["address"], "--serve-port", str(ray_head["serve_port"]), "--interval", "0.5",
                "--ray-token-file", os.environ["RAY_AUTH_TOKEN_PATH"]]

        def start():
            return subprocess.Popen(argv, env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)

        ctx = {"api": client.CustomObjectsApi(api_client), "core": client.CoreV1Api(api_client),
               "proc": start(), "start": start, "log": log_path, "tmp": tmp, **ray_head}
        try:
            yield ctx
        finally:
            ctx["proc"].terminate()
            ctx["proc"].wait(10)


@pytest.fixture(scope="module")
def jobs(ray_head):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(ray_head["address"])


def rayjob(name: str, entrypoint: str, container: dict | None = None, **spec) -> dict:
    head = {"name": "ray-head", "image": "rayproject/ray:2.60.0", **(container or {})}
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name, "namespace": NS},
            "spec": {"entrypoint": entrypoint, "rayClusterSpec": {"headGroupSpec": {
                "rayStartParams": {}, "template": {"spec": {"containers": [head]}}}}, **spec}}


def get(cluster, name: str, plural: str = P) -> dict:
    return cluster["api"].get_namespaced_custom_object(G, V, NS, plural, name)


def wait_for(cluster, predicate, what: str, timeout: float = 60, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as error:  # noqa: BLE001 (404 while being created/deleted)
            last = error
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last}); controller log:\n"
                         f"{cluster['log'].read_text()[-3000:]}")


def status_is(cluster, name: str, deployment: str):
    return lambda: (lambda s: s if s.get("jobDeploymentStatus") == deployment else None)(
        get(cluster, name).get("status") or {})


class StatusRecorder:
    """Every status a RayJob goes through, seen through a watch."""

    def __init__(self, cluster, name: str):
        from kubernetes import watch

        self.cluster, self.name = cluster, name
        self.seen: list[str] = []
        self._watch = watch.Watch()

        def run():
            try:
                for event in self._watch.stream(cluster["api"].list_namespaced_custom_object, G, V, NS, P,
                                                field_selector=f"metadata.name={name}", timeout_seconds=120):
                    state = (event["object"].get("status") or {}).get("jobDeploymentStatus")
                    if state and (not self.seen or self.seen[-1] != state):
                        self.seen.append(state)
            except Exception:  # noqa: BLE001 (stopped)
                pass

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        time.sleep(0.3)

    def stop(self):
        """Stop the watch: flag it, then cause one more event so the stream returns to the flag."""
        self._watch.stop()
        self.cluster["api"].patch_namespaced_custom_object(G, V, NS, P, self.name,
                                                           {"metadata": {"labels": {"recorded": "done"}}})
        self._thread.join(10)


def test_rayjob_runs_with_env_from_secret_and_configmap(cluster, jobs):
    from kubernetes import client

    core = cluster["core"]
    core.create_namespaced_secret(NS, client.V1Secret(metadata=client.V1ObjectMeta(name="s3-creds"),
                                                      string_data={"AWS_SECRET_ACCESS_KEY": "sekret-123"}))
    core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings"),
                                                             data={"MLFLOW_TRACKING_URI": "http://mlflow:5000"}))
    container = {"env": [{"name": "LITERAL", "value": "lit"},
                         {"name": "SECRET_KEY", "valueFrom": {"secretKeyRef": {"name": "s3-creds",
                                                                               "key": "AWS_SECRET_ACCESS_KEY"}}}],
                 "envFrom": [{"configMapRef": {"name": "settings"}}, {"secretRef": {"name": "s3-creds"}, "prefix": "X_"}]}
    code = ("import os; print('ENV', os.environ['LITERAL'], os.environ['SECRET_KEY'], "
            "os.environ['MLFLOW_TRACKING_URI'], os.environ['X_AWS_SECRET_ACCESS_KEY'], os.environ['FROM_RUNTIME'])")
    recorder = StatusRecorder(cluster, "env-job")
    cluster["api"].create_namespaced_custom_object(G, V, NS, P, rayjob(
        "env-job", f'python -c "{code}"', container, runtimeEnvYAML="env_vars:\n  FROM_RUNTIME: rt\n"))
    status = wait_for(cluster, status_is(cluster, "env-job", "Complete"), "env-job Complete")
    recorder.stop()
    assert status["jobStatus"] == "SUCCEEDED" and status["succeeded"] == 1 and not status.get("failed")
    assert status["jobId"].startswith("env-job-") and status["rayClusterName"] == "env-job-raycluster"
    assert status["dashboardURL"] and status["startTime"] and status["endTime"]
    assert status["rayJobInfo"]["startTime"] and status["rayJobInfo"]["endTime"]
    assert status["observedGeneration"] == 1
    assert recorder.seen[:1] == ["Initializing"] and recorder.seen[-1] == "Complete", recorder.seen
    obj = get(cluster, "env-job")
    assert "ray.io/rayjob-finalizer" in obj["metadata"]["finalizers"]
    logs = jobs.get_job_logs(status["jobId"])
    assert "ENV lit sekret-123 http://mlflow:5000 sekret-123 rt" in logs


def test_failing_entrypoint_reports_exit_code(cluster):
    cluster["api"].create_namespaced_custom_object(G, V, NS, P, rayjob(
        "exit-job", "python -c \"import sys; print('boom'); sys.exit(7)\""))
    status = wait_for(cluster, status_is(cluster, "exit-job", "Failed"), "exit-job Failed")
    assert status["jobStatus"] == "FAILED" and status["reason"] == "AppFailed" and status["failed"] == 1
    assert "exit code 7" in status["message"] and "boom" in status["message"]


def test_missing_secret_fails_without_crash_loop(cluster):
    container = {"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]}
    cluster["api"].create_namespaced_custom_object(G, V, NS, P, rayjob("nosecret-job", "python -c 1", container))
    status = wait_for(cluster, status_is(cluster, "nosecret-job", "Failed"), "nosecret-job Failed")
    assert status["reason"] == "SubmissionFailed" and '"nope" not found' in status["message"]
    bad = rayjob("badenv-job", "python -c 1", runtimeEnvYAML="- not\n- a mapping\n")
    cluster["api"].create_namespaced_custom_object(G, V, NS, P, bad)
    status = wait_for(cluster, status_is(cluster, "badenv-job", "ValidationFailed"), "badenv-job ValidationFailed")
    assert "failed to unmarshal RuntimeEnvYAML" in status["message"]
    assert cluster["proc"].poll() is None  # still running


def _running(cluster, name, jobs):
    status = wait_for(cluster, lambda: (lambda s: s if s.get("jobStatus") == "RUNNING" else None)(
        get(cluster, name).get("status") or {}), f"{name} RUNNING")
    return status["jobId"]


def test_delete_stops_the_ray_job(cluster, jobs):
    cluster["api"].create_namespaced_custom_object(G, V, NS, P, rayjob("del-job", "python -c 'import time; time.sleep(300)'"))
    job_id = _running(cluster, "del-job", jobs)
    cluster["api"].delete_namespaced_custom_object(G, V, NS, P, "del-job")
    wait_for(cluster, lambda: jobs.get_job_info(job_id).status.value == "STOPPED", "Ray job STOPPED")

    def gone():
        try:
            get(cluster, "del-job")
            return False
        except Exception as error:  # noqa: BLE001
            return getattr(error, "status", None) == 404
    wait_for(cluster, gone, "RayJob deleted after its finalizer")


def test_active_deadline_and_delete_self(cluster, jobs):
    cluster["api"].create_namespaced_custom_object(G, V, NS, P, rayjob(
        "deadline-job", "python -c 'import time; time.sleep(300)'", activeDeadlineSeconds=4))
    status = wait_for(cluster, status_is(cluster, "deadline-job", "Failed"), "deadline Failed", timeout=40)
    assert status["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds" in status["message"]
    wait_for(cluster, lambda: jobs.get_job_info(status["jobId"]).status.value == "STOPPED", "deadline job stopped")
    cluster["api"].create_namespaced_custom_object(G, V, NS, P, rayjob(
        "ttl-job", "python -c 1", shutdownAfterJobFinishes=True, ttlSecondsAfterFinished=1,
        deletionStrategy={"onSuccess": {"policy": "DeleteSelf"}, "onFailure": {"policy": "DeleteCluster"}}))

    def gone():
        try:
            get(cluster, "ttl-job")
            return False
        except Exception as error:  # noqa: BLE001
            return getattr(error, "status", None) == 404
    wait_for(cluster, gone, "ttl-job deleted (DeleteSelf)", timeout=60)


def test_restart_adopts_running_job(cluster, jobs):
    cluster["api"].create_namespaced_custom_object(G, V, NS, P, rayjob("adopt-job", "python -c 'import time; time.sleep(6)'"))
    job_id = _running(cluster, "adopt-job", jobs)
    cluster["proc"].kill()
    cluster["proc"].wait(10)
    cluster["proc"] = cluster["start"]()
    status = wait_for(cluster, status_is(cluster, "adopt-job", "Complete"), "adopt-job Complete", timeout=60)
    assert status["jobId"] == job_id and status["succeeded"] == 1
    assert [j.submission_id for j in jobs.list_jobs() if (j.submission_id or "").startswith("adopt-job")] == [job_id]


def test_chaos_kill_status_comes_from_what_ray_saw(cluster, jobs):
    """kill only SIGKILLs the job's processes; the Failed status and its message are Ray's account of the dead
    driver, and the operator's classifier calls that Infrastructure."""
    from kubeforge.api.shared import FailureReason
    from kubeforge.dev import chaos
    from kubeforge.resilience.classify import ObservedFailure, classify

    cluster["api"].create_namespaced_custom_object(G, V, NS, P, rayjob("kill-job", "python -c 'import time; time.sleep(300)'"))
    job_id = _running(cluster, "kill-job", jobs)
    chaos.kill(cluster["api"], NS, "kill-job")
    status = wait_for(cluster, status_is(cluster, "kill-job", "Failed"), "kill-job Failed")
    info = jobs.get_job_info(job_id)
    assert info.status.value == "FAILED"
    assert status["jobStatus"] == "FAILED" and status["reason"] == "AppFailed" and status["message"] == info.message
    assert "NodeLost" not in status["message"]  # nothing of the injector's in the verdict
    assert classify(ObservedFailure(message=status["message"])) == FailureReason.INFRASTRUCTURE, status["message"]
    annotations = get(cluster, "kill-job")["metadata"].get("annotations") or {}
    assert "chaos.kubeforge.dev/action" not in annotations and "kill:NodeLost" in annotations["chaos.kubeforge.dev/last"]


def test_memory_limit_is_enforced_as_oomkilled(cluster, jobs):
    """chaos oom makes the entrypoint allocate; the local KubeRay's memory monitor, not the chaos, kills it at the
    head container's resources.limits.memory, and the status says OOMKilled / exit code 137 first."""
    from kubeforge.api.shared import FailureReason
    from kubeforge.dev import chaos
    from kubeforge.resilience.classify import ObservedFailure, classify

    loop = cluster["tmp"] / "oom_loop.py"
    loop.write_text("import time\nfrom kubeforge_workloads.common.chaos import stall_point\n"
                    "while True:\n    stall_point()\n    time.sleep(0.05)\n")
    container = {"resources": {"limits": {"cpu": "1", "memory": "400Mi"}}}
    cluster["api"].create_namespaced_custom_object(G, V, NS, P, rayjob("oom-job", f"python {loop}", container))
    job_id = _running(cluster, "oom-job", jobs)
    time.sleep(2)
    assert get(cluster, "oom-job")["status"]["jobDeploymentStatus"] == "Running"  # under its limit
    chaos.oom(cluster["api"], NS, "oom-job")
    status = wait_for(cluster, status_is(cluster, "oom-job", "Failed"), "oom-job Failed", timeout=60)
    assert status["reason"] == "AppFailed" and status["jobStatus"] == "FAILED"
    assert status["message"].startswith("Ray head pod container ray-head terminated with exit code 137: OOMKilled\n")
    assert jobs.get_job_info(job_id).message in status["message"]
    assert classify(ObservedFailure(message=status["message"])) == FailureReason.OUT_OF_MEMORY
    assert "OOMKilled" in [e.reason for e in events_about(cluster, "oom-job")]


def events_about(cluster, name: str, namespace: str = NS) -> list:
    return cluster["core"].list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items


@pytest.mark.parametrize("name,needle", [
    ("a" * 48, "RayJob name should be no more than 47 characters"),
    ("7th-run", "RayJob name should be a valid DNS1035 label"),
])
def test_refused_name_is_validation_failed_with_an_event(cluster, jobs, name, needle):
    cluster["api"].create_namespaced_custom_object(G, V, NS, P, rayjob(name, "python -c 1"))
    status = wait_for(cluster, status_is(cluster, name, "ValidationFailed"), f"{name} ValidationFailed")
    assert status["reason"] == "ValidationFailed" and status["message"].startswith("The RayJob metadata is invalid: ")
    assert needle in status["message"] and "jobId" not in status
    events = wait_for(cluster, lambda: events_about(cluster, name), "the Warning event")
    assert [(e.type, e.reason, e.message) for e in events] == [
        ("Warning", "InvalidRayJobMetadata", f"{NS}/{name}: {status['message']}")]
    assert not [j for j in jobs.list_jobs() if (j.submission_id or "").startswith(name)]
    cluster["api"].delete_namespaced_custom_object(G, V, NS, P, name)


def test_unschedulable_gpu_job_stays_initializing(cluster, jobs):
    worker = {"groupName": "gpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 1, "rayStartParams": {},
              "template": {"spec": {"containers": [{"name": "ray-worker", "image": "ray", "resources": {
                  "limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": 64}}}]}}}
    body = rayjob("gpu-job", "python -c 1")
    body["spec"]["rayClusterSpec"]["workerGroupSpecs"] = [worker]
    cluster["api"].create_namespaced_custom_object(G, V, NS, P, body)
    events = wait_for(cluster, lambda: events_about(cluster, "gpu-job"), "FailedScheduling")
    assert events[0].reason == "FailedScheduling"
    assert events[0].message.startswith("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
    time.sleep(3)
    status = get(cluster, "gpu-job")["status"]
    assert status["jobDeploymentStatus"] == "Initializing" and "jobStatus" not in status
    assert not [j for j in jobs.list_jobs() if (j.submission_id or "").startswith("gpu-job")]
    cluster["api"].delete_namespaced_custom_object(G, V, NS, P, "gpu-job")


def test_namespace_annotation_holds_starts(cluster, jobs):
    from kubernetes import client

    cluster["core"].create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name="held", annotations={"kuberay.kubeforge.dev/hold-start-seconds": "6"})))
    cluster["api"].create_namespaced_custom_object(G, V, "held", P, {**rayjob("held-job", "python -c 1"),
                                                                     "metadata": {"name": "held-job"}})
    created = time.monotonic()
    seen = []
    while time.monotonic() - created < 40:
        state = (cluster["api"].get_namespaced_custom_object(G, V, "held", P, "held-job").get("status") or {}).get(
            "jobDeploymentStatus")
        if state and (not seen or seen[-1][0] != state):
            seen.append((state, time.monotonic() - created))
        if state == "Complete":
            break
        time.sleep(0.3)
    assert [s for s, _ in seen][:1] == ["Initializing"] and seen[-1][0] == "Complete", seen
    running_at = next(t for s, t in seen if s != "Initializing")
    assert running_at >= 5, seen


def test_chaos_stall_keeps_the_heartbeat_and_freezes_the_step(cluster, jobs):
    """stall blocks the training loop at its chaos point while the process and its heartbeat thread go on: the
    progress file's updatedAt advances, its step does not; resume lets the step advance again."""
    import json

    from kubeforge.dev import chaos

    progress = cluster["tmp"] / "progress.json"
    loop = cluster["tmp"] / "stall_loop.py"
    loop.write_text(
        "import json, sys, time\nfrom kubeforge_workloads.common.chaos import stall_point\n"
        "from kubeforge_workloads.common.heartbeat import Heartbeat\n"
        "def write(p):\n    open(sys.argv[1] + '.tmp', 'w').write(p.model_dump_json(by_alias=True))\n"
        "    import os; os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
        "beat = Heartbeat(write, attempt=1, interval=0.3).start()\n"
        "for step in range(1, 100000):\n    stall_point()\n    beat.update(step=step)\n    time.sleep(0.1)\n")
    cluster["api"].create_namespaced_custom_object(G, V, NS, P, rayjob("stall-job", f"python {loop} {progress}"))
    _running(cluster, "stall-job", jobs)

    def read():
        return json.loads(progress.read_text())

    wait_for(cluster, lambda: progress.exists() and read()["step"] > 2, "steps", timeout=60)
    chaos.stall(cluster["api"], NS, "stall-job", wait=True)
    time.sleep(1)
    before = read()
    time.sleep(2.5)
    after = read()
    assert after["step"] == before["step"] and after["updatedAt"] > before["updatedAt"], (before, after)
    assert get(cluster, "stall-job")["status"]["jobStatus"] == "RUNNING"
    chaos.resume(cluster["api"], NS, "stall-job", wait=True)
    wait_for(cluster, lambda: read()["step"] > after["step"], "steps after resume")
    cluster["api"].delete_namespaced_custom_object(G, V, NS, P, "stall-job")


def test_chaos_hang_and_resume(cluster, jobs):
    """The driver calls ray.init (token auth reaches it through the head) and an actor does the work: hang must
    stop the actor's worker process too, found through Ray's state API and the job's marker env."""
    from ray.util.state import list_actors

    from kubeforge.dev import chaos
    from kubeforge.dev.kuberay import processes

    ticks = cluster["tmp"] / "ticks"
    script = cluster["tmp"] / "ticker.py"
    script.write_text(
        "import time\nimport ray\nray.init()\n\n@ray.remote(num_cpus=0)\nclass Ticker:\n"
        "    def run(self, path):\n        while True:\n            open(path, 'a').write('x')\n"
        "            time.sleep(0.1)\n\n"
        f"ray.get(Ticker.remote().run.remote({str(ticks)!r}))\n")
    cluster["api"].create_namespaced_custom_object(G, V, NS, P, rayjob("hang-job", f"python {script}"))
    job_id = _running(cluster, "hang-job", jobs)
    wait_for(cluster, lambda: ticks.exists() and ticks.stat().st_size > 3, "ticks", timeout=90)
    info = jobs.get_job_info(job_id)
    actor_pids = {a.pid for a in list_actors(address=cluster["address"], filters=[("job_id", "=", info.job_id)])
                  if a.state == "ALIVE"}
    assert actor_pids and actor_pids <= processes.ray_pids(jobs, cluster["address"], job_id)
    assert int(info.driver_info.pid) in processes.job_pids(job_id, jobs, cluster["address"])
    chaos.hang(cluster["api"], NS, "hang-job")
    wait_for(cluster, lambda: "chaos.kubeforge.dev/action" not in (get(cluster, "hang-job")["metadata"].get("annotations") or {}),
             "hang applied")
    time.sleep(0.5)
    size = ticks.stat().st_size
    time.sleep(2)
    assert ticks.stat().st_size == size, "the job kept running while hung"
    assert set(processes.process_states(actor_pids).values()) == {"stopped"}
    assert get(cluster, "hang-job")["status"]["jobStatus"] == "RUNNING"  # a hang is invisible to Ray and KubeRay
    chaos.resume(cluster["api"], NS, "hang-job")
    wait_for(cluster, lambda: ticks.stat().st_size > size + 3, "progress after resume")
    chaos.hang(cluster["api"], NS, "hang-job")  # deleting a hung job still stops it
    time.sleep(1.5)
    cluster["api"].delete_namespaced_custom_object(G, V, NS, P, "hang-job")
    wait_for(cluster, lambda: jobs.get_job_info(job_id).status.is_terminal(), "hung job stopped on delete")


def test_suspend_and_resume(cluster, jobs):
    api = cluster["api"]
    api.create_namespaced_custom_object(G, V, NS, P, rayjob("susp-job", "python -c 'import time; time.sleep(3)'",
                                                            shutdownAfterJobFinishes=True))
    first = _running(cluster, "susp-job", jobs)
    api.patch_namespaced_custom_object(G, V, NS, P, "susp-job", {"spec": {"suspend": True}})
    status = wait_for(cluster, status_is(cluster, "susp-job", "Suspended"), "Suspended")
    assert "jobId" not in status
    wait_for(cluster, lambda: jobs.get_job_info(first).status.value == "STOPPED", "suspended job stopped")
    api.patch_namespaced_custom_object(G, V, NS, P, "susp-job", {"spec": {"suspend": False}})
    status = wait_for(cluster, status_is(cluster, "susp-job", "Complete"), "Complete after resume", timeout=60)
    assert status["jobId"] == f"{first}-1" and status["jobStatus"] == "SUCCEEDED"


def test_rayservice_deploys_to_serve(cluster):
    app_dir = cluster["tmp"] / "app"
    app_dir.mkdir()
    (app_dir / "hello_app.py").write_text(
        "import os\nfrom ray import serve\n\n@serve.deployment(num_replicas=1, ray_actor_options={'num_cpus': 0})\n"
        "class Hello:\n    def __call__(self, request):\n        return 'hello ' + os.environ.get('GREETING', '?')\n\n"
        "app = Hello.bind()\n")
    serve_config = {"applications": [{"name": "hello", "import_path": "hello_app:app", "route_prefix": "/hello",
                                      "runtime_env": {"env_vars": {"PYTHONPATH": str(app_dir)}}}]}
    body = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "hello-svc", "namespace": NS},
            "spec": {"serveConfigV2": yaml.safe_dump(serve_config), "rayClusterConfig": {"headGroupSpec": {
                "rayStartParams": {}, "template": {"spec": {"containers": [
                    {"name": "ray-head", "image": "rayproject/ray:2.60.0",
                     "env": [{"name": "GREETING", "value": "kubeforge"}]}]}}}}}}
    cluster["api"].create_namespaced_custom_object(G, V, NS, "rayservices", body)
    status = wait_for(cluster, lambda: (lambda s: s if s.get("serviceStatus") == "Running" else None)(
        get(cluster, "hello-svc", "rayservices").get("status") or {}), "RayService Running", timeout=120, interval=1)
    app = status["activeServiceStatus"]["applicationStatuses"]["hello"]
    assert app["status"] == "RUNNING" and app["serveDeploymentStatuses"]["Hello"]["status"] == "HEALTHY"
    ready = {c["type"]: c for c in status["conditions"]}
    assert ready["Ready"]["status"] == "True" and ready["UpgradeInProgress"]["status"] == "False"
    url = get(cluster, "hello-svc", "rayservices")["metadata"]["annotations"]["kubeforge.dev/local-serve-url"]
    assert url == f"http://127.0.0.1:{cluster['serve_port']}/hello"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read().decode() == "hello kubeforge"
    service = cluster["core"].read_namespaced_service("hello-svc-serve-svc", NS)
    assert service.metadata.annotations["kubeforge.dev/local-serve-url"] == url
    assert service.metadata.owner_references[0].kind == "RayService"
    # A RayService Serve refuses is not Ready, and does not disturb the one already running.
    bad = {**body, "metadata": {"name": "bad-svc", "namespace": NS},
           "spec": {**body["spec"], "serveConfigV2": yaml.safe_dump({"applications": [
               {"name": "bad", "import_path": "hello_app:app", "route_prefix": "no-slash"}]})}}
    cluster["api"].create_namespaced_custom_object(G, V, NS, "rayservices", bad)
    status = wait_for(cluster, lambda: (get(cluster, "bad-svc", "rayservices").get("status") or {}).get("conditions"),
                      "bad-svc conditions")
    ready = {c["type"]: c for c in status}["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "ValidationFailed" and "route_prefix" in ready["message"]
    assert get(cluster, "hello-svc", "rayservices")["status"]["serviceStatus"] == "Running"
    cluster["api"].delete_namespaced_custom_object(G, V, NS, "rayservices", "bad-svc")
    cluster["api"].delete_namespaced_custom_object(G, V, NS, "rayservices", "hello-svc")

    def undeployed():
        try:
            urllib.request.urlopen(url, timeout=5)
            return False
        except Exception:  # noqa: BLE001 (404 or proxy gone)
            return True
    wait_for(cluster, undeployed, "Serve application removed", timeout=60, interval=1)


def test_kill_after_checkpoint_waits_for_the_owners_checkpoint(cluster, jobs):
    """`chaos kill --after-checkpoint 8` kills only once the owning FineTune's status reports a checkpoint at
    step >= 8 (status written here as the operator writes it)."""
    ft = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
    ft["metadata"] = {"name": "ckpt-owner", "namespace": NS}
    owner = cluster["api"].create_namespaced_custom_object("kubeforge.dev", "v1alpha1", NS, "finetunes", ft)
    body = rayjob("ckpt-job", "python -c 'import time; time.sleep(300)'")
    body["metadata"]["ownerReferences"] = [{"apiVersion": "kubeforge.dev/v1alpha1", "kind": "FineTune",
                                            "name": "ckpt-owner", "uid": owner["metadata"]["uid"],
                                            "controller": True}]
    cluster["api"].create_namespaced_custom_object(G, V, NS, P, body)
    _running(cluster, "ckpt-job", jobs)

    def report(step):
        cluster["api"].patch_namespaced_custom_object_status(
            "kubeforge.dev", "v1alpha1", NS, "finetunes", "ckpt-owner",
            {"status": {"progress": {"lastCheckpoint": f"s3://kubeforge/ns/ckpt-owner/checkpoints/step-{step}/"}}})

    env = {**os.environ, "KUBECONFIG": str(cluster["tmp"] / "kubeconfig"),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT)])}
    killer = subprocess.Popen([sys.executable, "-m", "kubeforge", "dev", "chaos", "kill", "ckpt-job",
                               "--after-checkpoint", "8", "--checkpoint-timeout", "60"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        report(4)
        time.sleep(3)
        assert killer.poll() is None and get(cluster, "ckpt-job")["status"]["jobStatus"] == "RUNNING"
        report(8)
        output, _ = killer.communicate(timeout=60)
    finally:
        if killer.poll() is None:
            killer.kill()
            killer.wait()
    assert killer.returncode == 0, output
    assert "checkpoints/step-8/ reported" in output and "kill (NodeLost) done" in output
    status = wait_for(cluster, status_is(cluster, "ckpt-job", "Failed"), "ckpt-job Failed")
    assert status["jobStatus"] == "FAILED"
