"""The sandbox's local Ray head: `ray start --head` with explicit resources, pinned ports, a short temp dir and
token authentication kept on (the token lives in the sandbox state dir, not in ~/.ray).

Clients (JobSubmissionClient, the state API, the local KubeRay) need `client_env(state_dir)` in their environment:
`RAY_AUTH_MODE=token` and `RAY_AUTH_TOKEN_PATH=<state_dir>/auth_token`. Processes started by the head (job drivers,
workers) inherit it. Nothing here does I/O at import time.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

LOGICAL_CPUS = 8  # Ray schedules by logical CPUs; several small jobs share the machine's 2 cores
OBJECT_STORE_BYTES = 300 * 1024 * 1024
TOKEN_FILE = "auth_token"
SESSION_FILE = "session"  # "<session id> <time.time() before spawn>": what `stop` stops
MARKER_FILE = "kubeforge-head"  # in Ray's temp dir: "<dashboard url>\n<token path>", for clients that only know the URL


def _ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


def temp_dir(gcs_port: int) -> Path:
    # Ray's unix socket paths must stay under ~107 bytes: keep its temp dir short.
    return Path(tempfile.gettempdir()) / f"kfray-{gcs_port}"


def token_path(state_dir: Path) -> Path:
    return Path(state_dir).resolve() / TOKEN_FILE


def client_env(state_dir: Path) -> dict[str, str]:
    """Environment a Ray client needs to talk to this head (token auth)."""
    path = token_path(state_dir)
    if not path.exists():
        return {}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


def ensure_token(state_dir: Path) -> Path:
    path = token_path(state_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path


def find_token_for(dashboard_url: str) -> Optional[Path]:
    """The token file of a head started by `start`, found from its dashboard URL alone (for clients that were
    given only `--ray-address`)."""
    for marker in Path(tempfile.gettempdir()).glob(f"kfray-*/{MARKER_FILE}"):
        try:
            url, path = marker.read_text().splitlines()[:2]
        except (OSError, ValueError):
            continue
        if url.rstrip("/") == dashboard_url.rstrip("/") and Path(path).exists():
            return Path(path)
    return None


def pinned_ports(gcs_port: int) -> dict[str, int]:
    """Every port Ray would otherwise pick by default, pinned just above the GCS port, so that two sandboxes
    (or a sandbox and the remains of a stopped one) never collide on Ray's fixed or random defaults."""
    base = gcs_port + 7
    return {"dashboard-agent-listen": base, "dashboard-agent-grpc": base + 1, "node-manager": base + 2,
            "object-manager": base + 3, "runtime-env-agent": base + 4, "metrics-export": base + 5,
            "ray-client-server": base + 6}


def worker_ports(gcs_port: int) -> range:
    """The head's worker ports: gcs_port + 27 .. gcs_port + 96."""
    return range(gcs_port + 27, gcs_port + 97)


def _extra_ports(gcs_port: int) -> list[str]:
    workers = worker_ports(gcs_port)
    return [*(f"--{name}-port={port}" for name, port in pinned_ports(gcs_port).items()),
            f"--min-worker-port={workers.start}", f"--max-worker-port={workers.stop - 1}"]


def start_argv(state_dir: Path, gcs_port: int, dashboard_port: int, num_cpus: int = LOGICAL_CPUS,
               object_store_bytes: int = OBJECT_STORE_BYTES) -> list[str]:
    return [_ray_cli(), "start", "--head", f"--port={gcs_port}", f"--dashboard-port={dashboard_port}",
            *_extra_ports(gcs_port), "--dashboard-host=127.0.0.1", "--include-dashboard=true",
            f"--num-cpus={num_cpus}", f"--object-store-memory={object_store_bytes}",
            f"--temp-dir={temp_dir(gcs_port)}", "--disable-usage-stats"]


def start(state_dir: Path, gcs_port: int, dashboard_port: int, serve_port: int = 8000,
          env: Optional[dict] = None, timeout: float = 90, num_cpus: int = LOGICAL_CPUS,
          object_store_bytes: int = OBJECT_STORE_BYTES, auth: bool = True) -> str:
    """Start the head and return its dashboard (job submission) address, e.g. http://127.0.0.1:8265."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "gcs_port").write_text(str(gcs_port))
    (state_dir / "dashboard_port").write_text(str(dashboard_port))
    (state_dir / "serve_port").write_text(str(serve_port))
    auth_env = {"RAY_AUTH_MODE": "disabled"}
    if auth:
        auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(ensure_token(state_dir))}
    log = state_dir / "ray-start.log"
    full_env = {**os.environ, **(env or {}), **auth_env, "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_SERVE_HTTP_PORT": str(serve_port)}
    full_env.pop("RAY_AUTH_TOKEN", None)
    address = f"http://127.0.0.1:{dashboard_port}"
    # Its own session: the daemons `ray start` leaves behind keep its session id, and `stop` stops that session.
    started_at = time.time()
    with open(log, "ab") as handle:
        proc = subprocess.Popen(start_argv(state_dir, gcs_port, dashboard_port, num_cpus, object_store_bytes),
                                env=full_env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    (state_dir / SESSION_FILE).write_text(f"{proc.pid} {started_at}\n")
    if proc.wait() != 0:
        raise RuntimeError(f"ray start failed ({proc.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    if auth:
        (temp_dir(gcs_port) / MARKER_FILE).write_text(f"{address}\n{token_path(state_dir)}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers(address, token_path(state_dir) if auth else None):
            return address
        time.sleep(0.5)
    raise RuntimeError(f"Ray dashboard did not answer at {address} within {timeout:.0f}s")


def _answers(address: str, token_file: Optional[Path] = None) -> bool:
    """Whether the dashboard answers /api/version (with the bearer token when auth is on: without it, 401)."""
    request = urllib.request.Request(address + "/api/version")
    if token_file is not None and Path(token_file).exists():
        request.add_header("Authorization", f"Bearer {Path(token_file).read_text().strip()}")
    try:
        with urllib.request.urlopen(request, timeout=2):
            return True
    except Exception:
        return False


def status(state_dir: Path) -> dict:
    """{'running': bool, 'address': dashboard URL or None, 'gcs_address': host:port or None}."""
    state_dir = Path(state_dir).resolve()
    try:
        gcs_port = int((state_dir / "gcs_port").read_text())
        dashboard_port = int((state_dir / "dashboard_port").read_text())
    except (OSError, ValueError):
        return {"running": False, "address": None, "gcs_address": None}
    address = f"http://127.0.0.1:{dashboard_port}"
    token = token_path(state_dir)
    return {"running": _answers(address, token if token.exists() else None), "address": address, "gcs_address": f"127.0.0.1:{gcs_port}",
            "temp_dir": str(temp_dir(gcs_port))}


def stop(state_dir: Path, timeout: float = 20) -> int:
    """Stop this head's processes only (`ray stop` would stop every Ray on the machine): every process of the
    session `start` began, and any process naming this head's temp dir. Waits until they are gone."""
    import psutil

    from kubeforge.dev import processes

    state_dir = Path(state_dir)
    victims: dict[int, psutil.Process] = {}
    session_file = state_dir / SESSION_FILE
    if session_file.exists():
        session_id, started_at = session_file.read_text().split()
        victims.update((p.pid, p) for p in processes.session_members(int(session_id), float(started_at)))
    port_file = state_dir / "gcs_port"
    if port_file.exists():
        # the temp dir as a whole path component: kfray-2300 must not match kfray-23003
        names_temp_dir = re.compile(re.escape(str(temp_dir(int(port_file.read_text())))) + "(/|$)").search
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if proc.pid != os.getpid() and any(names_temp_dir(part) for part in proc.info["cmdline"] or []):
                    victims[proc.pid] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    processes.stop_processes(list(victims.values()), timeout / 2)
    session_file.unlink(missing_ok=True)
    if port_file.exists():
        (temp_dir(int(port_file.read_text())) / MARKER_FILE).unlink(missing_ok=True)
    return len(victims)
