"""kubeforge.prerequisites: KubeRay CRDs, the bucket, the workload Secret and MLflow, checked against real parts
(the sandbox's API server with and without KubeRay's CRDs, moto's S3 server) with the message a user acts on."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import boto3
import pytest
import yaml
from kubernetes import client, config

from kubeforge.dev.apiserver import ApiServer, kubeconfig
from kubeforge.main import check_prerequisites_at_startup
from kubeforge.prerequisites import (KUBERAY_MISSING, MISSING_SECRET, MLFLOW_UNAVAILABLE, OBJECT_STORE_UNAVAILABLE,
                                     ClusterFacts, Unmet, missing_kuberay_kinds, mlflow_problem,
                                     object_store_problem, workload_prerequisites, workload_secret_exists)
from kubeforge.settings import Settings
from tests.conftest import KUBERAY_CRDS, REPO_ROOT
from tests.moto_s3 import free_port

SETTINGS = Settings()


def api_client_of(server) -> client.ApiClient:
    path = Path(tempfile.mkdtemp()) / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig(server.url)))
    return config.new_client_from_config(str(path))


@pytest.fixture(scope="module")
def without_kuberay():
    with ApiServer(crd_dirs=[REPO_ROOT / "crds"]) as server:
        yield api_client_of(server)


@pytest.fixture(scope="module")
def with_kuberay():
    with ApiServer(crd_dirs=[REPO_ROOT / "crds", KUBERAY_CRDS]) as server:
        yield api_client_of(server)


@pytest.fixture(scope="module")
def s3(monkeypatch_module=None):
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3_client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                                 aws_secret_access_key="testing", region_name="us-east-1")
        s3_client.create_bucket(Bucket="kubeforge")
        yield endpoint, s3_client
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------- pure

def test_nothing_unmet_when_everything_is_there():
    assert workload_prerequisites("team", SETTINGS, ClusterFacts(), True) == []


def test_each_missing_prerequisite_gives_its_stalled_reason_and_a_message_naming_it():
    facts = ClusterFacts(missing_kuberay_kinds=("rayjobs", "rayservices"),
                         object_store_problem="bucket 'kubeforge' at http://minio:9000 does not exist: create it")
    unmet = workload_prerequisites("team", SETTINGS, facts, False)
    assert [u.reason for u in unmet] == [KUBERAY_MISSING, OBJECT_STORE_UNAVAILABLE, MISSING_SECRET]
    assert unmet[0].message.startswith("the cluster does not serve RayJob (rayjobs.ray.io/v1) and RayService "
                                       "(rayservices.ray.io/v1): install the KubeRay operator")
    assert unmet[1].message == facts.object_store_problem
    assert unmet[2].message.startswith("Secret team/kubeforge-workload-env does not exist")
    assert "settings.workloadEnvSecretRequired=false" in unmet[2].message
    assert str(unmet[2]) == unmet[2].message


def test_only_the_kuberay_kinds_a_resource_uses_and_only_a_required_secret_count():
    facts = ClusterFacts(missing_kuberay_kinds=("rayservices",))
    assert workload_prerequisites("team", SETTINGS, facts, True, uses=frozenset({"rayjobs"})) == []
    optional = SETTINGS.model_copy(update={"workload_env_secret_required": False})
    assert workload_prerequisites("team", optional, ClusterFacts(), False) == []
    assert workload_prerequisites("team", SETTINGS, ClusterFacts(), None) == []  # not looked up


def test_a_resource_with_its_own_bucket_is_not_held_by_the_default_buckets_problem():
    facts = ClusterFacts(object_store_problem="bucket 'kubeforge' ... does not exist")
    assert workload_prerequisites("team", SETTINGS, facts, True, bucket="team-bucket") == []
    assert workload_prerequisites("team", SETTINGS, facts, True, bucket="kubeforge") == [
        Unmet(OBJECT_STORE_UNAVAILABLE, facts.object_store_problem)]


# ---------------------------------------------------------------------------------------------- observations

def test_kuberay_crds_found_by_discovery(without_kuberay, with_kuberay, tmp_path):
    assert missing_kuberay_kinds(without_kuberay) == ("rayjobs", "rayservices")
    assert missing_kuberay_kinds(with_kuberay) == ()
    (tmp_path / "ray.io_rayjobs.yaml").write_text((KUBERAY_CRDS / "ray.io_rayjobs.yaml").read_text())
    with ApiServer(crd_dirs=[tmp_path]) as old_kuberay:  # a KubeRay without RayService
        assert missing_kuberay_kinds(api_client_of(old_kuberay)) == ("rayservices",)


def test_the_workload_secret_looked_up_by_name(with_kuberay):
    core = client.CoreV1Api(with_kuberay)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="team-a")))
    assert workload_secret_exists(core, "team-a", SETTINGS) is False
    core.create_namespaced_secret("team-a", client.V1Secret(
        metadata=client.V1ObjectMeta(name=SETTINGS.workload_env_secret), string_data={"AWS_ACCESS_KEY_ID": "x"}))
    assert workload_secret_exists(core, "team-a", SETTINGS) is True


def test_object_store_checked_with_a_head_of_the_bucket(s3):
    endpoint, s3_client = s3
    settings = SETTINGS.model_copy(update={"s3_endpoint_url": endpoint})
    assert object_store_problem(settings, s3_client) is None
    missing = object_store_problem(settings.model_copy(update={"bucket": "nope"}), s3_client)
    assert missing == (f"bucket 'nope' at {endpoint} does not exist: create it, or point the Helm value "
                       "settings.bucket (or the resource's spec.storage.bucket) at an existing one")


def test_an_unreachable_object_store_is_named_within_seconds(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    problem = object_store_problem(SETTINGS.model_copy(update={"s3_endpoint_url": endpoint}))
    assert problem.startswith(f"bucket 'kubeforge' at {endpoint} is unreachable (")
    assert "settings.s3EndpointUrl" in problem


def test_mlflow_checked_only_when_configured():
    assert mlflow_problem(SETTINGS) is None
    endpoint = f"http://127.0.0.1:{free_port()}"
    problem = mlflow_problem(SETTINGS.model_copy(update={"mlflow_tracking_uri": endpoint}), timeout=2)
    assert problem.startswith(f"MLflow at {endpoint} is unreachable (") and "settings.mlflowTrackingUri" in problem


# ---------------------------------------------------------------------------------------------- start-up

def test_startup_logs_and_posts_one_warning_event_on_the_operator_pod_without_raising(without_kuberay, s3, caplog):
    endpoint, s3_client = s3
    settings = SETTINGS.model_copy(update={"s3_endpoint_url": endpoint, "bucket": "missing-bucket"})
    pod = {"POD_NAME": "kubeforge-operator-abc", "POD_NAMESPACE": "default", "POD_UID": "u-123"}
    with caplog.at_level(logging.INFO, logger="kubeforge.prerequisites"):
        report = check_prerequisites_at_startup(settings, without_kuberay, s3_client, environ=pod)
    assert [u.reason for u in report.unmet] == [KUBERAY_MISSING, OBJECT_STORE_UNAVAILABLE]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"prerequisite missing ({u.reason}): {u.message}" for u in report.unmet]
    assert report.as_probe() == {u.reason: u.message for u in report.unmet}
    events = client.CoreV1Api(without_kuberay).list_namespaced_event("default").items
    (event,) = [e for e in events if e.involved_object.name == "kubeforge-operator-abc"]
    assert (event.type, event.reason, event.involved_object.kind) == ("Warning", "PrerequisitesMissing", "Pod")
    assert event.message.startswith(f"{KUBERAY_MISSING}: the cluster does not serve RayJob")
    assert f"{OBJECT_STORE_UNAVAILABLE}: bucket 'missing-bucket'" in event.message


def test_startup_with_everything_there_reports_ok_and_posts_nothing(with_kuberay, s3, caplog):
    endpoint, s3_client = s3
    settings = SETTINGS.model_copy(update={"s3_endpoint_url": endpoint, "mlflow_tracking_uri": None})
    pod = {"POD_NAME": "kubeforge-operator-ok", "POD_NAMESPACE": "default", "POD_UID": "u-1"}
    report = check_prerequisites_at_startup(settings, with_kuberay, s3_client, environ=pod)
    assert report.unmet == [] and report.as_probe() == {"ok": True}
    events = client.CoreV1Api(with_kuberay).list_namespaced_event("default").items
    assert not [e for e in events if e.involved_object.name == "kubeforge-operator-ok"]
    assert any("no MLflow configured" in r.getMessage() for r in caplog.records)


def test_the_operator_runs_the_checks_at_startup_and_reports_them_on_its_health_endpoint():
    import inspect

    from kubeforge import main

    source = inspect.getsource(main.run_operator)
    assert "check_prerequisites_at_startup(" in source and "kopf.on.probe" in source


def test_doctor_prints_every_check_and_names_the_failing_one(with_kuberay, s3, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from kubeforge.cli import main

    endpoint, s3_client = s3
    server_url = with_kuberay.configuration.host
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig(server_url)))
    for name, value in {"KUBEFORGE_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KUBEFORGE_MLFLOW_TRACKING_URI", raising=False)
    core = client.CoreV1Api(with_kuberay)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="doctor")))
    core.create_namespaced_secret("doctor", client.V1Secret(metadata=client.V1ObjectMeta(
        name=SETTINGS.workload_env_secret)))
    ok = CliRunner().invoke(main, ["doctor", "--kubeconfig", str(tmp_path / "kubeconfig"), "-n", "doctor"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines() == ["ok   KubeRay CRDs (rayjobs, rayservices)",
                                      "ok   object store bucket 'kubeforge'",
                                      "ok   workload Secret doctor/kubeforge-workload-env"]
    core.delete_namespaced_secret(SETTINGS.workload_env_secret, "doctor")
    failing = CliRunner().invoke(main, ["doctor", "--kubeconfig", str(tmp_path / "kubeconfig"), "-n", "doctor"])
    assert failing.exit_code == 1
    assert failing.output.splitlines()[2].startswith(
        "FAIL workload Secret doctor/kubeforge-workload-env: Secret doctor/kubeforge-workload-env does not exist")
