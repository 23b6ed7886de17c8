"""Conformance tests of the sandbox API emulator (kubeforge.dev.apiserver) against the Kubernetes API
conventions, with real kubectl and the kubernetes Python client. One server per test module."""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from kubeforge.dev.apiserver import ApiServer, kubeconfig
from tests.conftest import KUBERAY_CRDS, REPO_ROOT

TEST_CRDS = Path(__file__).parent / "crds"


@pytest.fixture(scope="module")
def server():
    with ApiServer(crd_dirs=[REPO_ROOT / "crds", KUBERAY_CRDS, TEST_CRDS]) as srv:
        yield srv


@pytest.fixture(scope="module")
def kubeconfig_path(server):
    path = Path(tempfile.mkdtemp()) / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig(server.url)))
    return path


@pytest.fixture(scope="module")
def api_client(kubeconfig_path):
    return config.new_client_from_config(str(kubeconfig_path))


@pytest.fixture(scope="module")
def custom(api_client):
    return client.CustomObjectsApi(api_client)


@pytest.fixture(scope="module")
def core(api_client):
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="module")
def kubectl(kubeconfig_path):
    def run(*args, input=None, check=True):
        result = subprocess.run(["kubectl", *args], capture_output=True, text=True, input=input, timeout=60,
                                env={**os.environ, "KUBECONFIG": str(kubeconfig_path)})
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")
        return result
    return run


def finetune(name: str, **spec) -> dict:
    body = {"baseModel": {"uri": "s3://b/m"}, "dataset": {"trainUri": "s3://b/t.jsonl"},
            "output": {"registeredModelName": "m"}}
    body.update(spec)
    return {"apiVersion": "kubeforge.dev/v1alpha1", "kind": "FineTune", "metadata": {"name": name}, "spec": body}


def gadget(object_name: str, **spec) -> dict:
    body = {"color": "red"}
    body.update(spec)
    return {"apiVersion": "conformance.kubeforge.dev/v1", "kind": "Gadget", "metadata": {"name": object_name}, "spec": body}


def status_of(error) -> dict:
    return json.loads(error.body)


def raw(server, method: str, path: str, body=None, content_type: str = "application/json", accept="application/json",
        **query):
    """A plain HTTP request (for what the typed clients cannot send)."""
    import requests

    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    return requests.request(method, server.url + path, params=query, data=data, timeout=10,
                            headers={"Content-Type": content_type, "Accept": accept})
