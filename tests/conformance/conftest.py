import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from kubeforge.dev.apiserver import ApiServer, kubeconfig
from tests.conftest import KUBERAY_CRDS, REPO_ROOT


@pytest.fixture(scope="module")
def server():
    with ApiServer(crd_dirs=[REPO_ROOT / "crds", KUBERAY_CRDS]) as srv:
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
