"""Start, stop and inspect the local sandbox: every component a background process on loopback.

State lives under one directory (default ./.kubeforge-dev): state.json (ports, pids), logs/, kubeconfig,
mlflow.db, the Ray temp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
SHARED_DIR = REPO_ROOT.parent / "shared"
DEFAULT_STATE_DIR = Path(".kubeforge-dev")
BUCKET = "kubeforge"
NAMESPACE = "default"
WORKLOAD_SECRET = "kubeforge-workload-env"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "kubeforge", "AWS_SECRET_ACCESS_KEY": "kubeforge-secret",
                  "AWS_DEFAULT_REGION": "us-east-1"}
COMPONENTS = ("s3", "apiserver", "mlflow", "ray", "kuberay", "operator")
DEFAULT_BASE_PORT = 20000
"""The sandbox takes ports DEFAULT_BASE_PORT .. +99 (six servers, then the Ray head's pinned and worker ports):
clear of Ray's default worker ports (10002-19999), its default fixed ports (6379, 8265, 10001, 52365) and the
kernel's ephemeral ports (32768-60999) that Ray's unpinned ports come from."""
PORT_BLOCK_SIZE = 100


def kuberay_crd_dir() -> Path:
    """KubeRay's published CRDs: ../shared/kuberay-crds beside the checkout (or KUBEFORGE_KUBERAY_CRDS)."""
    return Path(os.environ.get("KUBEFORGE_KUBERAY_CRDS", SHARED_DIR / "kuberay-crds"))


@dataclass
class Ports:
    apiserver: int
    s3: int
    mlflow: int
    ray_gcs: int
    ray_dashboard: int
    serve: int

    @classmethod
    def from_base(cls, base: int) -> "Ports":
        return cls(apiserver=base, s3=base + 1, mlflow=base + 2, ray_gcs=base + 3, ray_dashboard=base + 4,
                   serve=base + 5)

    def block(self) -> dict[int, str]:
        """Every port the sandbox listens on, with what listens there."""
        from kubeforge.dev import ray_head

        roles = {self.apiserver: "Kubernetes API emulator", self.s3: "S3 endpoint", self.mlflow: "MLflow",
                 self.ray_gcs: "Ray GCS", self.ray_dashboard: "Ray dashboard", self.serve: "Ray Serve"}
        roles.update({port: "Ray " + name.replace("-", " ").removeprefix("ray ")
                      for name, port in ray_head.pinned_ports(self.ray_gcs).items()})
        roles.update({port: "Ray worker" for port in ray_head.worker_ports(self.ray_gcs)})
        return roles


def first_busy_port(ports: Ports) -> Optional[tuple[int, str]]:
    """The first port of the block something already listens on (on any address), with its role, or None."""
    for port, role in sorted(ports.block().items()):
        probe = socket.socket()
        # SO_REUSEADDR: a stopped sandbox's connections lingering in TIME_WAIT do not make a port busy
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError:
            return port, role
        finally:
            probe.close()
    return None


def check_ports_free(ports: Ports) -> None:
    busy = first_busy_port(ports)
    if busy:
        port, role = busy
        raise RuntimeError(
            f"port {port} (the sandbox's {role} port) is already in use, perhaps by another sandbox: start this one "
            f"on a free block of {PORT_BLOCK_SIZE} ports with `kubeforge dev up --base-port N` (default "
            f"{DEFAULT_BASE_PORT}), or stop the other one with `kubeforge dev down`.")


@dataclass
class SandboxState:
    state_dir: str
    ports: Ports
    pids: dict[str, int] = field(default_factory=dict)
    """Each component's pid, which is also its session id (each runs in a session of its own)."""
    started: dict[str, float] = field(default_factory=dict)
    """time.time() just before each component was spawned: what `down` stops of its session is no older."""

    @property
    def root(self) -> Path:
        return Path(self.state_dir)

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.apiserver}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.mlflow}"

    @property
    def ray_dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.ray_dashboard}"

    def log_path(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.log"

    def save(self) -> None:
        (self.root / "state.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> Optional["SandboxState"]:
        path = Path(state_dir) / "state.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(state_dir=raw["state_dir"], ports=Ports(**raw["ports"]), pids=raw.get("pids", {}),
                   started=raw.get("started", {}))

    def client_env(self) -> dict[str, str]:
        """Environment for anything that talks to the sandbox: kubectl, boto3, mlflow, the operator."""
        return {
            "KUBECONFIG": str(self.kubeconfig.resolve()),
            "AWS_ENDPOINT_URL": self.s3_url,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "HF_HUB_OFFLINE": "1",
            **S3_CREDENTIALS,
        }

    def workload_env(self) -> dict[str, str]:
        """What workloads get through the workload Secret (as a real cluster's platform team would set)."""
        return {
            "AWS_ENDPOINT_URL": self.s3_url,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "HF_HUB_OFFLINE": "1",
            **S3_CREDENTIALS,
        }


def _progress(message: str) -> None:
    print(f"[kubeforge dev] {message}", flush=True)


def _wait_until(check: Callable[[], bool], what: str, timeout: float, proc: Optional[subprocess.Popen] = None,
                log: Optional[Path] = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting:\n{tail}")
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s (see {log})")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except Exception:
        return False


def _spawn(state: SandboxState, component: str, argv: list[str], env: Optional[dict] = None) -> subprocess.Popen:
    log = state.log_path(component)
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "ab")
    started = time.time()
    # A session of its own: `down` stops the whole session, helpers that left the process group included.
    proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True, cwd=REPO_ROOT)
    state.pids[component] = proc.pid
    state.started[component] = started
    state.save()
    return proc


def _alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of ours is not alive
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def write_kubeconfig(state: SandboxState) -> None:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "kubeforge-dev", "preferences": {},
        "clusters": [{"name": "kubeforge-dev", "cluster": {"server": state.api_url}}],
        "users": [{"name": "kubeforge-dev", "user": {"token": "kubeforge-dev"}}],  # accepted, not checked
        "contexts": [{"name": "kubeforge-dev",
                      "context": {"cluster": "kubeforge-dev", "user": "kubeforge-dev", "namespace": NAMESPACE}}],
    }
    state.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))


def start_s3(state: SandboxState) -> None:
    proc = _spawn(state, "s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(state.ports.s3)])
    _wait_until(lambda: _http_ok(state.s3_url + "/moto-api/"), "S3 (moto)", 60, proc, state.log_path("s3"))
    import boto3

    s3 = boto3.client("s3", endpoint_url=state.s3_url, aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if BUCKET not in existing:
        s3.create_bucket(Bucket=BUCKET)


def start_apiserver(state: SandboxState) -> None:
    ready = state.root / "apiserver.ready"
    ready.unlink(missing_ok=True)
    proc = _spawn(state, "apiserver", [
        sys.executable, "-m", "kubeforge.dev.apiserver", "--host", "127.0.0.1", "--port", str(state.ports.apiserver),
        "--crds", str(REPO_ROOT / "crds"), "--crds", str(kuberay_crd_dir()), "--ready-file", str(ready)])
    _wait_until(lambda: ready.exists() and _http_ok(state.api_url + "/readyz"), "API server", 60, proc,
                state.log_path("apiserver"))
    write_kubeconfig(state)


def start_mlflow(state: SandboxState) -> None:
    db = (state.root / "mlflow.db").resolve()
    proc = _spawn(state, "mlflow", [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
        "--artifacts-destination", f"s3://{BUCKET}/mlflow-artifacts", "--host", "127.0.0.1",
        "--port", str(state.ports.mlflow), "--workers", "1"],
        env={**S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": state.s3_url, "AWS_ENDPOINT_URL": state.s3_url})
    _wait_until(lambda: _http_ok(state.mlflow_url + "/health"), "MLflow", 120, proc, state.log_path("mlflow"))


def start_ray(state: SandboxState) -> None:
    from kubeforge.dev import ray_head

    ray_head.start(state.root / "ray", gcs_port=state.ports.ray_gcs, dashboard_port=state.ports.ray_dashboard,
                   serve_port=state.ports.serve, env=state.workload_env())


def start_kuberay(state: SandboxState) -> None:
    from kubeforge.dev import ray_head

    argv = [sys.executable, "-m", "kubeforge.dev.kuberay", "--kubeconfig", str(state.kubeconfig),
            "--ray-address", state.ray_dashboard_url, "--serve-port", str(state.ports.serve)]
    token = ray_head.token_path(state.root / "ray")
    if token.exists():
        argv += ["--ray-token-file", str(token)]
    _spawn(state, "kuberay", argv, env={**state.client_env(), **ray_head.client_env(state.root / "ray")})


def start_operator(state: SandboxState) -> None:
    _spawn(state, "operator", [sys.executable, "-m", "kubeforge", "operator"], env={
        **state.client_env(), "KUBEFORGE_BUCKET": BUCKET, "KUBEFORGE_S3_ENDPOINT_URL": state.s3_url,
        "KUBEFORGE_RECONCILE_PERIOD_SECONDS": os.environ.get("KUBEFORGE_RECONCILE_PERIOD_SECONDS", "2"),
        # A sandbox is watched by a person (or a test): heartbeats read and progress shown every 2 s.
        **{f"KUBEFORGE_{name}": os.environ.get(f"KUBEFORGE_{name}", value) for name, value in (
            ("HEARTBEAT_POLL_SECONDS", "2"), ("PROGRESS_WRITE_SECONDS", "2"), ("STARTUP_JITTER_SECONDS", "1"),
            # A local Ray job is gone seconds after its stop; a sandbox deletion need not wait a pod's grace period.
            ("DELETION_QUIET_SECONDS", "8"))},
        "KUBEFORGE_WORKLOAD_IMAGE": "local"})


def create_workload_secret(state: SandboxState) -> None:
    """Namespace-level setup a platform team would do: the Secret workloads get their S3/MLflow env from."""
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(str(state.kubeconfig)))
    body = client.V1Secret(metadata=client.V1ObjectMeta(name=WORKLOAD_SECRET, namespace=NAMESPACE),
                           string_data=state.workload_env())
    try:
        api.create_namespaced_secret(NAMESPACE, body)
    except client.exceptions.ApiException as error:
        if error.status != 409:
            raise
        api.replace_namespaced_secret(WORKLOAD_SECRET, NAMESPACE, body)


def seed(state: SandboxState) -> None:
    """The tiny Llama, datasets, docs, the examples/corpus documents, the reviews table and the EvalRun question
    sets the examples use, uploaded to the bucket."""
    log = state.log_path("seed")
    with open(log, "ab") as handle:
        result = subprocess.run([sys.executable, "-m", "kubeforge_workloads.seed", "--bucket", BUCKET,
                                 "--corpus", str(REPO_ROOT / "examples" / "corpus"),
                                 "--reviews", str(REPO_ROOT / "examples" / "data" / "reviews.jsonl"),
                                 "--eval", str(REPO_ROOT / "examples" / "data" / "eval")],
                                env={**os.environ, **state.client_env()}, stdout=handle, stderr=subprocess.STDOUT,
                                cwd=REPO_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"seeding failed (exit {result.returncode}); see {log}")


def up(state_dir: Path = DEFAULT_STATE_DIR, base_port: int = DEFAULT_BASE_PORT, with_operator: bool = True,
       with_seed: bool = True) -> SandboxState:
    state_dir = Path(state_dir).resolve()
    existing = SandboxState.load(state_dir)
    if existing and any(_alive(p) for p in existing.pids.values()):
        raise RuntimeError(f"a sandbox is already running from {state_dir}; run `kubeforge dev down` first")
    ports = Ports.from_base(base_port)
    check_ports_free(ports)  # before anything starts: clients would otherwise reach another sandbox's servers
    state_dir.mkdir(parents=True, exist_ok=True)
    state = SandboxState(state_dir=str(state_dir), ports=ports)
    state.save()
    steps: list[tuple[str, Callable[[SandboxState], None]]] = [
        ("S3 endpoint (moto)", start_s3), ("Kubernetes API emulator", start_apiserver),
        ("MLflow tracking server", start_mlflow), ("Ray head", start_ray), ("local KubeRay", start_kuberay),
        ("workload Secret", create_workload_secret)]
    if with_seed:
        steps.append(("seed data (tiny Llama, datasets, docs)", seed))
    if with_operator:
        steps.append(("Kubeforge operator", start_operator))
    began = time.monotonic()
    try:
        for label, step in steps:
            started = time.monotonic()
            _progress(f"starting {label} ...")
            step(state)
            _progress(f"  {label} ready in {time.monotonic() - started:.1f}s")
    except Exception:
        try:
            down(state_dir)
        except RuntimeError as error:  # the start-up failure is the one to report
            _progress(str(error))
        raise
    _progress(f"sandbox up in {time.monotonic() - began:.1f}s; export KUBECONFIG={state.kubeconfig}")
    return state


def down(state_dir: Path = DEFAULT_STATE_DIR) -> bool:
    """Stop every process the sandbox started, in reverse start order, and wait until each is gone."""
    from kubeforge.dev import processes, ray_head

    state = SandboxState.load(Path(state_dir).resolve())
    if state is None:
        return False
    problems = []
    for component in reversed(COMPONENTS):
        try:  # stopping must not stop at the first problem
            if component == "ray":
                ray_head.stop(state.root / "ray")
            elif state.pids.get(component):
                processes.stop_session(state.pids[component], state.started.get(component))
        except Exception as error:
            problems.append(f"{component}: {error}")
    state.pids, state.started = {}, {}
    state.save()
    if problems:
        raise RuntimeError(f"could not stop every sandbox process ({'; '.join(problems)})")
    return True


def status(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, str]:
    state = SandboxState.load(Path(state_dir).resolve())
    if state is None:
        return {}
    health = {
        "s3": _http_ok(state.s3_url + "/moto-api/"),
        "apiserver": _http_ok(state.api_url + "/readyz"),
        "mlflow": _http_ok(state.mlflow_url + "/health"),
    }
    from kubeforge.dev import ray_head

    health["ray"] = ray_head.status(state.root / "ray")["running"]
    report = {}
    for component in COMPONENTS:
        pid = state.pids.get(component)
        ok = health.get(component, _alive(pid))
        report[component] = ("running" if ok else "down") + (f" (pid {pid})" if pid else "")
    return report


def remove_state(state_dir: Path) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)
