"""The sandbox's local Ray head: `ray start --head` with explicit resources and a short temp dir."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

LOGICAL_CPUS = 8  # Ray schedules by logical CPUs; several small jobs share the machine's 2 cores
OBJECT_STORE_BYTES = 300 * 1024 * 1024


def _ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


def temp_dir(gcs_port: int) -> Path:
    # Ray's unix socket paths must stay under ~107 bytes: keep its temp dir short.
    return Path(tempfile.gettempdir()) / f"kfray-{gcs_port}"


def _extra_ports(gcs_port: int) -> list[str]:
    """Every port Ray would otherwise pick by default, pinned near the GCS port, so that two sandboxes
    (or a sandbox and the remains of a stopped one) never collide on Ray's fixed defaults."""
    base = gcs_port + 7
    return [f"--dashboard-agent-listen-port={base}", f"--dashboard-agent-grpc-port={base + 1}",
            f"--node-manager-port={base + 2}", f"--object-manager-port={base + 3}",
            f"--runtime-env-agent-port={base + 4}", f"--metrics-export-port={base + 5}",
            f"--ray-client-server-port={base + 6}",
            f"--min-worker-port={base + 20}", f"--max-worker-port={base + 90}"]


def start(state_dir: Path, gcs_port: int, dashboard_port: int, serve_port: int,
          env: Optional[dict] = None, timeout: float = 90) -> str:
    """Start the head and return its dashboard (job submission) address."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "gcs_port").write_text(str(gcs_port))
    argv = [_ray_cli(), "start", "--head", f"--port={gcs_port}", f"--dashboard-port={dashboard_port}", *_extra_ports(gcs_port),
            "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--num-cpus={LOGICAL_CPUS}",
            f"--object-store-memory={OBJECT_STORE_BYTES}", f"--temp-dir={temp_dir(gcs_port)}",
            "--disable-usage-stats"]
    log = state_dir / "ray-start.log"
    full_env = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_SERVE_HTTP_PORT": str(serve_port)}
    with open(log, "ab") as handle:
        result = subprocess.run(argv, env=full_env, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"ray start failed ({result.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(address + "/api/version", timeout=2):
                return address
        except Exception:
            time.sleep(0.5)
    raise RuntimeError(f"Ray dashboard did not answer at {address} within {timeout:.0f}s")


def stop(state_dir: Path, timeout: float = 30) -> int:
    """Stop this head's processes only (`ray stop` would stop every Ray on the machine)."""
    import psutil

    port_file = state_dir / "gcs_port"
    if not port_file.exists():
        return 0
    marker = str(temp_dir(int(port_file.read_text())))
    victims = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or []):
                victims.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in victims:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(victims, timeout=timeout / 2)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout / 2)
    return len(victims)
