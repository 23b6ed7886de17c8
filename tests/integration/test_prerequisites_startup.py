"""The operator (`kubeforge operator`, as the container runs it) started where KubeRay's CRDs are missing and the
object store is unreachable: it says so in one log line each and on its health endpoint, and keeps running."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import yaml

from kubeforge.dev.apiserver import ApiServer, kubeconfig
from tests.conftest import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_prerequisites_are_reported_and_the_operator_stays_up(tmp_path):
    health_port, s3_port = free_port(), free_port()  # nothing listens on s3_port
    with ApiServer(crd_dirs=[REPO_ROOT / "crds"]) as server:  # no KubeRay CRDs
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig(server.url)))
        env = {**os.environ, "KUBECONFIG": str(tmp_path / "kubeconfig"),
               "KUBEFORGE_LIVENESS_ENDPOINT": f"http://127.0.0.1:{health_port}/healthz",
               "KUBEFORGE_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "AWS_ACCESS_KEY_ID": "x",
               "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}
        env.pop("KUBEFORGE_MLFLOW_TRACKING_URI", None)
        log = tmp_path / "operator.log"
        with open(log, "w") as out:
            process = subprocess.Popen([sys.executable, "-m", "kubeforge", "operator"], env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        try:
            health, deadline = None, time.monotonic() + 60
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2) as answer:
                        health = json.loads(answer.read())
                    if health.get("prerequisites", {}).get("ok") is not True and health.get("prerequisites"):
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            assert process.poll() is None, log.read_text()
            assert health is not None, log.read_text()
            problems = health["prerequisites"]
            assert set(problems) == {"KubeRayMissing", "ObjectStoreUnavailable"}, health
            assert problems["ObjectStoreUnavailable"].startswith(
                f"bucket 'kubeforge' at http://127.0.0.1:{s3_port} is unreachable")
            text = log.read_text()
            assert "prerequisite missing (KubeRayMissing): the cluster does not serve RayJob" in text
            assert "prerequisite missing (ObjectStoreUnavailable): bucket 'kubeforge'" in text
            time.sleep(2)
            assert process.poll() is None, text  # not a crash loop: still running
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
