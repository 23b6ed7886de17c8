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


def start(state_dir: Path, gcs_port: int, dashboard_port: int, serve_port: int,
          env: Optional[dict] = None, timeout: float = 90) -> str:
    """Start the head and return its dashboard (job submission) address."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "gcs_port").write_text(str(gcs_port))
    argv = [_ray_cli(), "start", "--head", f"--port={gcs_port}", f"--dashboard-port={dashboard_port}",
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


def stop(state_dir: Path) -> None:
    subprocess.run([_ray_cli(), "stop", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=60)
