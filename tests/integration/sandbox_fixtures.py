"""A session-wide local sandbox (API emulator, local KubeRay, Ray, S3, MLflow, operator) and kubectl."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from kubeforge.dev import sandbox as sandbox_mod


def free_port_block(size: int = 100) -> int:
    """A base port with `size` free consecutive ports after it."""
    for base in range(21000, 30000, 100):
        sockets = []
        try:
            for port in range(base, base + size):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free port block")


def sandbox_processes(state: sandbox_mod.SandboxState) -> list[str]:
    """Live processes that belong to the sandbox, found from the outside (not the way `down` finds them): the
    command line or environment names its state dir or Ray temp dir, or it listens on a port of its block."""
    from kubeforge.dev import ray_head

    markers = (str(Path(state.state_dir).resolve()), str(ray_head.temp_dir(state.ports.ray_gcs)))
    block = range(state.ports.apiserver, state.ports.apiserver + sandbox_mod.PORT_BLOCK_SIZE)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            environ = proc.environ()
            listening = [c.laddr.port for c in proc.net_connections("inet")
                         if c.status == psutil.CONN_LISTEN and c.laddr.port in block]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        named = any(marker in text for marker in markers for text in (cmdline, *environ.values()))
        if named or listening:
            found.append(f"{proc.pid} {cmdline[:200]!r} listening on {listening}")
    return found


@dataclass
class Sandbox:
    state: sandbox_mod.SandboxState

    @property
    def env(self) -> dict:
        return {**os.environ, **self.state.client_env()}

    def s3(self):
        """A boto3 S3 client for the sandbox's object store, as a user with the sandbox credentials has."""
        import boto3

        env = self.state.client_env()
        return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120):
        result = subprocess.run(["kubectl", *args], env=self.env, capture_output=True, text=True, input=input,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def get(self, kind: str, name: str) -> dict:
        return json.loads(self.kubectl("get", kind, name, "-o", "json").stdout)

    def wait_for(self, predicate, what: str, timeout: float = 300, interval: float = 1.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; operator log tail:\n"
                             f"{self.log_tail('operator')}\nkuberay log tail:\n{self.log_tail('kuberay')}")

    def log_tail(self, component: str, size: int = 4000) -> str:
        path = self.state.log_path(component)
        return path.read_text()[-size:] if path.exists() else ""

    def restart_operator(self, kill_signal=9) -> None:
        pid = self.state.pids["operator"]
        os.killpg(pid, kill_signal)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sandbox_mod._alive(pid):
            time.sleep(0.2)
        sandbox_mod.start_operator(self.state)

    def operator_alive(self) -> bool:
        return sandbox_mod._alive(self.state.pids.get("operator"))


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory) -> Sandbox:
    state_dir = tmp_path_factory.mktemp("kubeforge-dev")
    os.environ.setdefault("KUBEFORGE_RECONCILE_PERIOD_SECONDS", "1")
    state = sandbox_mod.up(state_dir, base_port=free_port_block())
    try:
        yield Sandbox(state)
    finally:
        sandbox_mod.down(state_dir)
        leftovers = sandbox_processes(state)
        assert not leftovers, f"sandbox processes alive after `down`: {leftovers}"
