"""Fixtures for running workload entrypoints the way a RayJob does: a subprocess with KUBEFORGE_CONTEXT,
an S3 endpoint (moto server in-process), MLflow on sqlite, and the seed data uploaded by the seed CLI.

Import the fixtures explicitly from the test module:
    from tests.integration.conftest_workloads import workload_env  # noqa: F401
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from tests.conftest import REPO_ROOT
from tests.moto_s3 import moto_s3_server

BUCKET = "kubeforge"
NAMESPACE = "ns"
EXPERIMENT = f"{NAMESPACE}/FineTune"


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    killed: bool = False


@dataclass
class WorkloadEnv:
    env: dict
    tmp: Path
    tracking_uri: str
    s3: object
    runs: list = field(default_factory=list)

    def prefix(self, name: str) -> str:
        return f"{NAMESPACE}/FineTune/{name}"

    def get_json(self, key: str) -> Optional[dict]:
        try:
            return json.loads(self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        except self.s3.exceptions.NoSuchKey:
            return None

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def context(self, name: str, spec: dict, attempt: int = 1, uid: Optional[str] = None) -> dict:
        return {"kind": "FineTune", "namespace": NAMESPACE, "name": name, "uid": uid or f"uid-{name}",
                "generation": 1, "attempt": attempt, "spec": spec,
                "storage": {"bucket": BUCKET, "prefix": self.prefix(name)},
                "mlflow": {"experiment": EXPERIMENT, "run_name": name, "tracking_uri": self.tracking_uri}}

    def run(self, module: str, context: dict, extra_env: Optional[dict] = None, timeout: float = 240,
            kill_when: Optional[Callable[[], bool]] = None,
            while_running: Optional[Callable[[int], None]] = None) -> Finished:
        """Run `python -m module` in its own process group; SIGKILL the whole group once kill_when() holds;
        call while_running(pid of the entrypoint) on every poll."""
        env = {**self.env, **(extra_env or {}), "KUBEFORGE_CONTEXT": json.dumps(context)}
        log = self.tmp / f"{context['name']}-{context['attempt']}-{len(self.runs)}"
        started = time.monotonic()
        with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
            process = subprocess.Popen([sys.executable, "-m", module], env=env, cwd=self.tmp, stdout=out,
                                       stderr=err, start_new_session=True)
            killed = False
            try:
                while process.poll() is None:
                    if time.monotonic() - started > timeout:
                        os.killpg(process.pid, signal.SIGKILL)
                        raise AssertionError(f"{module} ran past {timeout}s; logs in {log}.err")
                    if while_running is not None:
                        while_running(process.pid)
                    if kill_when is not None and kill_when():
                        os.killpg(process.pid, signal.SIGKILL)
                        killed = True
                        process.wait()
                        break
                    time.sleep(0.2)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        finished = Finished(process.returncode, Path(f"{log}.out").read_text(), Path(f"{log}.err").read_text(),
                            time.monotonic() - started, killed)
        self.runs.append((context["name"], context["attempt"], round(finished.seconds, 1), finished.returncode))
        return finished


@pytest.fixture(scope="module")
def workload_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workloads")
    with moto_s3_server(BUCKET) as s3_env:
        import boto3
        import mlflow

        s3 = boto3.client("s3")
        tracking_uri = f"sqlite:///{tmp}/mlflow.db"
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.create_experiment(EXPERIMENT, artifact_location=(tmp / "mlartifacts").as_uri())
        env = {**os.environ, **s3_env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "MLFLOW_TRACKING_URI": tracking_uri, "RAY_DEDUP_LOGS": "0", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT / "workloads"),
                                              os.environ.get("PYTHONPATH", "")])}
        env.pop("RAY_ADDRESS", None)
        env.pop("KUBEFORGE_CONTEXT", None)
        seeded = subprocess.run([sys.executable, "-m", "kubeforge_workloads.seed", "--bucket", BUCKET], env=env,
                                cwd=tmp, capture_output=True, text=True, timeout=180)
        assert seeded.returncode == 0, seeded.stderr
        yield WorkloadEnv(env=env, tmp=tmp, tracking_uri=tracking_uri, s3=s3)
