"""The kind script's MLflow server, as tests/e2e-kind/run.sh configures it, answers the workloads' client the
way they reach it in the cluster (by its Service's DNS name). MLflow 3 refuses Host headers that are not
localhost or an IP address (403) unless `--allowed-hosts` names them; kind itself cannot run here, so the
server runs locally with the script's own arguments, from the locked MLflow (the client's version)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT
from tests.moto_s3 import free_port

RUN_SH = REPO_ROOT / "tests" / "e2e-kind" / "run.sh"


def script_variables() -> dict[str, str]:
    text = RUN_SH.read_text()
    return {name: value for name, value in re.findall(r'^([A-Z_]+)="?([^"\n$]*)"?$', text, re.M)} | {
        name: value for name, value in re.findall(r'^([A-Z_]+)="\$\{[A-Z_]+:-([^}$]*)\}"$', text, re.M)}


def mlflow_deployment() -> tuple[dict, str]:
    text = RUN_SH.read_text()
    manifests = text.split('kubectl apply -n "${DEPS_NS}" -f - <<YAML\n', 1)[1].split("\nYAML\n", 1)[0]
    variables = script_variables()
    url = re.search(r'^MLFLOW_URL="(.*)"$', text, re.M).group(1)
    expand = lambda s: re.sub(r"\$\{([A-Z_]+)\}", lambda m: variables.get(m.group(1), m.group(0)), s)  # noqa: E731
    deployment = next(doc for doc in yaml.safe_load_all(expand(manifests))
                      if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "mlflow")
    return deployment, expand(url)


def status_with_host(url: str, host: str) -> int:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except urllib.error.URLError:
        return 0  # not listening yet


def test_kind_mlflow_server_answers_clients_that_use_its_service_name(tmp_path: Path):
    deployment, in_cluster_url = mlflow_deployment()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = list(container["command"])
    assert command[:2] == ["mlflow", "server"]
    port = free_port()
    replaced = {"--host": "127.0.0.1", "--port": str(port), "--backend-store-uri": f"sqlite:///{tmp_path}/mlflow.db",
                "--artifacts-destination": str(tmp_path / "artifacts")}
    args = [replaced.get(command[i - 1], word) for i, word in enumerate(command)][2:]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", *args, "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "MLFLOW_TRACKING_URI": "",
                                   "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job runners needed
    try:
        local = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while status_with_host(local + "/health", f"127.0.0.1:{port}") != 200:
            assert server.poll() is None, "the MLflow server exited"
            assert time.monotonic() < deadline, "the MLflow server did not answer /health within 120 s"
            time.sleep(0.5)
        host = in_cluster_url.split("://", 1)[1]
        search = local + "/api/2.0/mlflow/experiments/search?max_results=1"
        assert status_with_host(search, host) == 200, f"the server refuses clients that reach it as {host}"
        assert status_with_host(search, "attacker.example:5000") == 403  # the allow-list is a list, not "*"
    finally:
        stop_session(server)


def stop_session(process: subprocess.Popen) -> None:
    """MLflow's server runs uvicorn and job runners as children: end the whole process group."""
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    process.wait()
