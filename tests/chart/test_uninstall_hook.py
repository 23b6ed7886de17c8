"""kubeforge.uninstall, what the chart's uninstall hook Job runs, against the sandbox's API server: afterwards no
Kubeforge resource holds kubeforge.dev/finalizer, so none blocks its namespace's (or the CRDs') deletion."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from kubeforge.api.meta import GROUP, VERSION
from kubeforge.dev.apiserver import ApiServer, kubeconfig
from kubeforge.uninstall import FINALIZER, main, run
from tests.conftest import REPO_ROOT
from tests.conformance.conftest import finetune


@pytest.fixture()
def api():
    with ApiServer(crd_dirs=[REPO_ROOT / "crds"]) as server:
        path = Path(tempfile.mkdtemp()) / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig(server.url)))
        api_client = config.new_client_from_config(str(path))
        core = client.CoreV1Api(api_client)
        for ns in ("team-a", "team-b"):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        yield client.CustomObjectsApi(api_client)


def create(api, namespace: str, name: str, finalizers: list[str]) -> None:
    body = finetune(name)
    body["metadata"]["finalizers"] = finalizers
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunes", body)


def finetunes(api, namespace: str) -> dict[str, list[str]]:
    items = api.list_namespaced_custom_object(GROUP, VERSION, namespace, "finetunes")["items"]
    return {o["metadata"]["name"]: o["metadata"].get("finalizers") or [] for o in items}


def test_orphan_removes_only_the_operators_finalizer_and_keeps_the_resources(api):
    create(api, "team-a", "a1", [FINALIZER])
    create(api, "team-a", "a2", ["example.com/keep", FINALIZER])
    create(api, "team-b", "b1", [FINALIZER])
    assert run(api, "orphan", None, timeout=10, poll=0.1) == 0
    assert finetunes(api, "team-a") == {"a1": [], "a2": ["example.com/keep"]}
    assert finetunes(api, "team-b") == {"b1": []}


def test_delete_without_an_operator_left_to_finish_them_removes_the_finalizer_after_the_timeout(api):
    create(api, "team-a", "a1", [FINALIZER])
    create(api, "team-b", "b1", [FINALIZER])
    assert run(api, "delete", None, timeout=0.5, poll=0.1) == 0
    assert finetunes(api, "team-a") == {} and finetunes(api, "team-b") == {}


def test_a_namespaced_release_touches_only_its_namespace(api):
    create(api, "team-a", "a1", [FINALIZER])
    create(api, "team-b", "b1", [FINALIZER])
    assert run(api, "delete", "team-a", timeout=0.5, poll=0.1) == 0
    assert finetunes(api, "team-a") == {} and finetunes(api, "team-b") == {"b1": [FINALIZER]}


def test_the_command_line_refuses_an_unknown_policy(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--policy", "purge"])
    assert exit_.value.code == 2 and "invalid choice: 'purge'" in capsys.readouterr().err
