"""Operator at scale: N FineTunes on the sandbox's API emulator, Kubeforge against a bare kopf handler, one run.

Started here (each in its own session, all stopped when the bench ends, and killed with it if it is killed): the
API emulator with the CRDs, moto (S3), the local KubeRay in its --status-only mode (each RayJob validated and
recorded as usual, then reported Running, jobStatus RUNNING; no Ray, which could not run 2 x 200 jobs here), the
Kubeforge operator (`python -m kubeforge operator` from --operator-src, default settings, watching its own
namespace) and the baseline: a bare kopf operator in another namespace whose @kopf.on.create creates one RayJob per
FineTune with the operator's own body builder (`build_rayjob`), and whose @kopf.on.event on RayJobs copies a
finished child into its owner's status.phase (the least an event-driven operator must do).

Heartbeats: once a FineTune's RayJob runs, the bench writes its progress.json with the workload's own writer, so
the operator's object-store reads find what they find in a real run. Two steady windows follow: in the first the
heartbeats stay still (the issue's "while nothing changes"); in the second every heartbeat moves one step each
--heartbeat-every seconds (default 5; a training run beats every 2 s, and any cadence shorter than the operator's
reads gives it the same changes to see).

Measured, both sides in the same run (the baseline first, so neither works while the other is timed):
  1. time from the first create until all N RayJobs exist (ratio baseline / kubeforge; goal >= 0.8);
  2. at steady state (all RayJobs Running), over each --window: API requests and status writes of each operator
     per active resource per minute, from the emulator's /metrics split by namespace (the bench's own and the
     local KubeRay's requests left out by client), and object-store reads (GET/HEAD under the namespace's
     prefixes, from moto's access log); goal <= 1 status write while nothing changes;
  3. latency from a RayJob's status change (the bench writes what KubeRay writes when a job ends: Complete,
     SUCCEEDED) to its owner's status.phase Succeeded, for --samples resources per side, p50 and p95
     (goal p50 <= 1 s).
Ratios are baseline / kubeforge throughout: below 1 means Kubeforge takes more time or more requests.

    .venv/bin/python bench/operator_scale.py [--n 200] [--window 60] [--samples 20] [--operator-src PATH] [--json]

To measure another commit of the operator: `git worktree add /tmp/kf-before <commit>` and pass
`--operator-src /tmp/kf-before/operator` (its CRDs, /tmp/kf-before/crds, are loaded too); the emulator, KubeRay
and the baseline always come from this checkout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Optional

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL, KIND = "kubeforge.dev", "v1alpha1", "finetunes", "FineTune"
RAY_GROUP, RAY_VERSION, RAYJOBS = "ray.io", "v1", "rayjobs"
KUBEFORGE_NS, BASELINE_NS = "scale-kubeforge", "scale-baseline"
BENCH_CLIENT = "kubeforge-bench"
KUBERAY_CLIENT = "kuberay-operator"
BUCKET = "kubeforge"
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"}
TOTAL_STEPS = 1000


def log(message: str) -> None:
    print(f"[operator_scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def finetune(name: str) -> dict:
    """The smallest valid FineTune, with resources that fit this machine and watchdogs longer than the run."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name},
            "spec": {"baseModel": {"uri": "s3://kubeforge/seed/models/tiny-llama"},
                     "dataset": {"trainUri": "s3://kubeforge/seed/datasets/qa/train.jsonl"},
                     "output": {"registeredModelName": name},
                     "resources": {"workers": 1, "cpusPerWorker": 1, "memory": "1Gi"},
                     "failurePolicy": {"hangTimeout": "2h", "startTimeout": "2h"}}}


# ---- processes ---------------------------------------------------------------------------------------------------
class Processes:
    """Every process the bench starts: each leads a session of its own (stopped whole by dev.processes) and is
    SIGKILLed by the kernel should the bench die without cleaning up."""

    def __init__(self, work: Path):
        self.work = work
        self.started: list[tuple[str, subprocess.Popen, float]] = []

    def spawn(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        from kubeforge.dev.processes import die_with_parent

        log_file = open(self.work / f"{name}.log", "ab")
        began = time.time()
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=REPO, start_new_session=True, preexec_fn=die_with_parent)
        self.started.append((name, proc, began))
        return proc

    def check_alive(self) -> None:
        for name, proc, _ in self.started:
            if proc.poll() is not None:
                tail = (self.work / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{tail}")

    def tails(self, names: Iterable[str], lines: int = 25) -> str:
        """The last lines of these processes' logs, for an error message that explains itself in CI."""
        parts = []
        for name in names:
            text = (self.work / f"{name}.log").read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {name}.log (last {len(text)} lines) ---\n" + "\n".join(text))
        return "\n".join(parts)

    def stop_all(self) -> None:
        from kubeforge.dev.processes import stop_session

        for name, proc, began in reversed(self.started):
            try:
                stop_session(proc.pid, began, timeout=5)
            except Exception as error:  # keep stopping the others
                log(f"could not stop {name}: {error}")
            proc.wait(timeout=10)
        self.started.clear()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check: Callable[[], bool], what: str, timeout: float, procs: Processes, poll: float = 0.2) -> float:
    began = time.monotonic()
    while not check():
        procs.check_alive()
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what} (logs in {procs.work})")
        time.sleep(poll)
    return time.monotonic() - began


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except OSError:
        return False


# ---- the emulator's /metrics -------------------------------------------------------------------------------------
def request_counts(api_url: str) -> Counter:
    """sandbox_apiserver_request_total as {labels tuple: count}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(api_url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    counts: Counter = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sandbox_apiserver_request_total":
                counts[tuple(sorted(sample.labels.items()))] += sample.value
    return counts


def open_watches(api_url: str, namespace: str, resource: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(api_url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "sandbox_apiserver_longrunning_requests" and s.labels.get("namespace") == namespace
               and s.labels.get("resource") == resource and s.labels.get("client") != BENCH_CLIENT)


def usage(before: Counter, after: Counter, namespace: str) -> dict:
    """What the operator of `namespace` asked of the API between two snapshots (other clients left out)."""
    total, writes, status_writes = 0.0, 0.0, 0.0
    breakdown: Counter = Counter()
    for key, value in after.items():
        count = value - before.get(key, 0)
        labels = dict(key)
        if not count or labels["namespace"] != namespace or labels["client"] in (BENCH_CLIENT, KUBERAY_CLIENT):
            continue
        total += count
        resource = labels["resource"] + (f"/{labels['subresource']}" if labels["subresource"] else "")
        breakdown[f"{labels['verb']} {resource} ({labels['client']})"] += count
        if labels["verb"] in WRITE_VERBS:
            writes += count
            if labels["group"] == GROUP and labels["subresource"] == "status":
                status_writes += count
    return {"requests": total, "writes": writes, "status_writes": status_writes, "breakdown": dict(breakdown)}


def object_store_reads(access_log: Path, start: int, end: int, namespace: str) -> int:
    """GETs and HEADs under the namespace's default prefixes, from moto's access log between two offsets."""
    with open(access_log, "rb") as log_file:
        log_file.seek(start)
        text = log_file.read(end - start).decode(errors="replace")
    return sum(1 for line in text.splitlines()
               if f'"GET /{BUCKET}/{namespace}/' in line or f'"HEAD /{BUCKET}/{namespace}/' in line)


def kuberay_requests(before: Counter, after: Counter) -> float:
    return sum(v - before.get(k, 0) for k, v in after.items() if dict(k)["client"] == KUBERAY_CLIENT)


# ---- watching what happens ---------------------------------------------------------------------------------------
class Watch(threading.Thread):
    """One watch stream on a collection (restarted where it ended), calling on_event(type, object, arrival time)."""

    def __init__(self, api_url: str, path: str, on_event: Callable[[str, dict, float], None]):
        super().__init__(daemon=True, name=f"watch {path}")
        self.host, self.port = api_url.split("//", 1)[1].split(":")
        self.path, self.on_event = path, on_event
        self.ready = threading.Event()

    def run(self) -> None:
        version = None
        while True:
            query = "watch=true&timeoutSeconds=3600&allowWatchBookmarks=true"
            if version:
                query += f"&resourceVersion={version}"
            try:
                connection = http.client.HTTPConnection(self.host, int(self.port))
                connection.request("GET", f"{self.path}?{query}", headers={"User-Agent": f"{BENCH_CLIENT}/1"})
                response = connection.getresponse()
                self.ready.set()
                while line := response.readline():
                    event = json.loads(line)
                    arrived = time.monotonic()
                    if event["type"] == "ERROR":
                        version = None
                        break
                    version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self.on_event(event["type"], event["object"], arrived)
            except OSError:
                time.sleep(0.5)


class Side:
    """One operator's namespace as the bench sees it: RayJobs (first seen), FineTunes (first Succeeded)."""

    def __init__(self, label: str, namespace: str):
        self.label, self.namespace = label, namespace
        self.lock = threading.Lock()
        self.rayjobs: dict[str, dict] = {}
        self.rayjob_seen: dict[str, float] = {}
        self.owners: dict[str, dict] = {}
        self.succeeded_at: dict[str, float] = {}

    def on_rayjob(self, kind: str, obj: dict, arrived: float) -> None:
        name = obj["metadata"]["name"]
        with self.lock:
            if kind == "DELETED":
                self.rayjobs.pop(name, None)
                return
            self.rayjobs[name] = obj
            self.rayjob_seen.setdefault(name, arrived)

    def on_owner(self, kind: str, obj: dict, arrived: float) -> None:
        name = obj["metadata"]["name"]
        with self.lock:
            self.owners[name] = obj
            if (obj.get("status") or {}).get("phase") == "Succeeded":
                self.succeeded_at.setdefault(name, arrived)

    def running(self) -> int:
        with self.lock:
            return sum(1 for job in self.rayjobs.values()
                       if (job.get("status") or {}).get("jobStatus") == "RUNNING")

    def child_of(self, owner: str) -> Optional[dict]:
        with self.lock:
            for job in self.rayjobs.values():
                if any(ref.get("name") == owner for ref in job["metadata"].get("ownerReferences") or []):
                    return job
        return None


# ---- the baseline operator ---------------------------------------------------------------------------------------
def run_baseline_operator(namespace: str) -> None:
    """A bare kopf operator: one RayJob per FineTune on create (the operator's body builder), and a finished child
    copied into its owner's status.phase on the RayJob's event. Nothing else: no timers, no status contract."""
    import asyncio
    import logging
    from collections.abc import Mapping

    import kopf
    from kubernetes import client, config

    from kubeforge.api.kinds import kind_info
    from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext
    from kubeforge.launch.rayjob import build_rayjob
    from kubeforge.settings import Settings
    from kubeforge.storage.layout import ResourcePrefix

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    info, settings = kind_info(KIND), Settings()
    api = client.CustomObjectsApi(config.new_client_from_config(os.environ["KUBECONFIG"]))
    registry = kopf.OperatorRegistry()

    def first_attempt_context(obj: dict, spec) -> WorkloadContext:
        meta = obj["metadata"]
        prefix = ResourcePrefix.for_resource(spec.storage.bucket or settings.bucket, meta["namespace"], KIND,
                                             meta["name"], spec.storage.prefix)
        return WorkloadContext(kind=KIND, namespace=meta["namespace"], name=meta["name"], uid=meta["uid"],
                               generation=meta.get("generation", 1), attempt=1, spec=obj["spec"],
                               storage=StorageContext(bucket=prefix.bucket, prefix=prefix.prefix),
                               mlflow=MlflowContext(experiment=f"{meta['namespace']}/{KIND}", run_name=meta["name"]))

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_):
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="baseline.kubeforge.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="baseline.kubeforge.dev")
        settings.posting.level = logging.ERROR

    @kopf.on.login(registry=registry)
    def login(**kwargs):
        return kopf.login_via_client(**kwargs)

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def create_rayjob(body, **_):
        obj = {key: dict(value) if isinstance(value, Mapping) else value for key, value in body.items()}
        spec = info.spec_model.model_validate(obj["spec"])
        child = build_rayjob(obj, spec, first_attempt_context(obj, spec), info.workload, settings)
        api.create_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, RAYJOBS, child)

    @kopf.on.event(RAY_GROUP, RAY_VERSION, RAYJOBS, registry=registry)
    def child_changed(body, **_):
        if (body.get("status") or {}).get("jobStatus") != "SUCCEEDED":
            return
        for owner in body["metadata"].get("ownerReferences") or []:
            if owner.get("kind") == KIND:
                api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, owner["name"], {
                    "status": {"phase": "Succeeded", "message": f"RayJob {body['metadata']['name']} succeeded"}})

    asyncio.run(kopf.operator(registry=registry, standalone=True, clusterwide=False, namespaces=[namespace]))


# ---- the run -----------------------------------------------------------------------------------------------------
def quantile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def source_revision(operator_src: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(operator_src), *args], capture_output=True, text=True).stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    return revision + (" (with uncommitted changes)" if git("status", "--porcelain", "--", ".") else "")


def start_everything(args, procs: Processes, operator_src: Path) -> tuple[str, str, Path]:
    from kubeforge.dev.apiserver import kubeconfig as kubeconfig_for
    from kubeforge.dev.sandbox import kuberay_crd_dir

    import yaml

    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    s3_port, api_port = free_port(), free_port()
    s3_url, api_url = f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{api_port}"
    procs.spawn("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], base_env)
    crds = operator_src.parent / "crds"
    if not crds.is_dir():
        crds = REPO / "crds"
    procs.spawn("apiserver", [sys.executable, "-m", "kubeforge.dev.apiserver", "--host", "127.0.0.1", "--port",
                              str(api_port), "--crds", str(crds), "--crds", str(kuberay_crd_dir())], base_env)
    wait_until(lambda: http_ok(s3_url + "/moto-api/") and http_ok(api_url + "/readyz"), "S3 and the API emulator",
               90, procs)
    kubeconfig = procs.work / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(api_url)))
    os.environ.update({"KUBECONFIG": str(kubeconfig), "AWS_ENDPOINT_URL": s3_url, **S3_ENV})
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)

    client_env = {**base_env, "KUBECONFIG": str(kubeconfig), "AWS_ENDPOINT_URL": s3_url, **S3_ENV}
    procs.spawn("kuberay", [sys.executable, "-m", "kubeforge.dev.kuberay", "--kubeconfig", str(kubeconfig),
                            "--status-only"], client_env)
    # The namespaces exist before the operators start, as a platform team installs an operator into prepared
    # namespaces: the bench measures steady-state traffic, not how kopf discovers a namespace created later
    # (twice, with them created after, one operator never opened its FineTune watch within 180 s; not explained).
    create_namespaces(kubeconfig)
    operator_env = {**client_env, "PYTHONPATH": str(operator_src), "KUBEFORGE_NAMESPACE": KUBEFORGE_NS,
                    "KUBEFORGE_BUCKET": BUCKET, "KUBEFORGE_S3_ENDPOINT_URL": s3_url,
                    "KUBEFORGE_WORKLOAD_IMAGE": "local"}
    loaded = subprocess.run([sys.executable, "-c", "import kubeforge; print(kubeforge.__file__)"], env=operator_env,
                            capture_output=True, text=True, check=True).stdout.strip()
    if not Path(loaded).resolve().is_relative_to(operator_src.resolve()):
        raise RuntimeError(f"--operator-src {operator_src}: the operator would import kubeforge from {loaded}")
    procs.spawn("operator", [sys.executable, "-m", "kubeforge", "operator"], operator_env)
    procs.spawn("baseline", [sys.executable, str(Path(__file__).resolve()), "--baseline-operator", BASELINE_NS],
                client_env)
    return api_url, s3_url, kubeconfig


def create_namespaces(kubeconfig: Path) -> None:
    """Both namespaces as a platform team prepares them: with the workload Secret (Kubeforge checks for it
    before it starts a run, and waits with reason MissingSecret without it)."""
    from kubernetes import client, config

    from kubeforge.settings import Settings

    api_client = config.new_client_from_config(str(kubeconfig))
    api_client.user_agent = f"{BENCH_CLIENT}/1"
    core = client.CoreV1Api(api_client)

    for namespace in (KUBEFORGE_NS, BASELINE_NS):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        core.create_namespaced_secret(namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name=Settings().workload_env_secret), string_data=S3_ENV))


def create_finetunes(custom, side: Side, n: int) -> tuple[float, float]:
    """Creates N FineTunes one after the other; returns (monotonic time of the first create, seconds it took)."""
    began = time.monotonic()
    for index in range(n):
        custom.create_namespaced_custom_object(GROUP, VERSION, side.namespace, PLURAL, finetune(f"ft-{index:04d}"))
    return began, time.monotonic() - began


class Heartbeats:
    """The progress.json each running attempt's workload writes, with the workload's own writer, for every RayJob
    of a side (the workload context read from the RayJob, as the workload reads it)."""

    def __init__(self, side: Side):
        from kubeforge.storage.objectstore import S3ObjectStore

        self.side, self.store, self.writers = side, S3ObjectStore(), {}

    def write(self, step: int) -> None:
        import yaml

        from kubeforge.api.workload import CONTEXT_ENV, WorkloadContext
        from kubeforge.storage.progress import Progress
        from kubeforge.timefmt import rfc3339
        from kubeforge_workloads.common.storage import WorkloadStorage

        with self.side.lock:
            jobs = list(self.side.rayjobs.values())
        for job in jobs:
            name = job["metadata"]["name"]
            if name not in self.writers:
                runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
                context = WorkloadContext.model_validate_json(runtime_env["env_vars"][CONTEXT_ENV])
                self.writers[name] = (context.attempt, WorkloadStorage(context, self.store))
            attempt, storage = self.writers[name]
            storage.write_progress(Progress(attempt=attempt, phase="Training", step=step, total_steps=TOTAL_STEPS,
                                            loss=2.0, throughput=100.0, updated_at=rfc3339(datetime.now(timezone.utc))))


def progress_shown(side: Side, step: int) -> int:
    with side.lock:
        return sum(1 for obj in side.owners.values()
                   if ((obj.get("status") or {}).get("progress") or {}).get("step") == step)


def finish_children(custom, sides: list[Side], samples: int, spacing: float) -> dict[str, dict[str, float]]:
    """Ends the RayJobs of `samples` FineTunes per side as KubeRay does when a job succeeds; returns the
    monotonic time each change was sent, by side and owner. Sides alternate so drift hits both alike."""
    from kubeforge.timefmt import rfc3339

    sent: dict[str, dict[str, float]] = {side.label: {} for side in sides}
    for index in range(samples):
        for side in sides if index % 2 == 0 else list(reversed(sides)):
            owner = f"ft-{index:04d}"
            child = side.child_of(owner)
            if child is None:
                continue
            now = rfc3339(datetime.now(timezone.utc))
            status = child.get("status") or {}
            change = {"status": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "endTime": now,
                                 "succeeded": (status.get("succeeded") or 0) + 1,
                                 "message": "Job finished successfully.",
                                 "rayJobInfo": {**(status.get("rayJobInfo") or {}), "endTime": now}}}
            sent[side.label][owner] = time.monotonic()
            custom.patch_namespaced_custom_object_status(RAY_GROUP, RAY_VERSION, side.namespace, RAYJOBS,
                                                         child["metadata"]["name"], change)
            time.sleep(spacing)
    return sent


def steady_window(api_url: str, sides: list[Side], args, procs: Processes, moving: Optional[Heartbeats]) -> dict:
    """Every side's API use per active resource per minute over --window seconds; with `moving`, that side's
    heartbeats advance one step every --heartbeat-every seconds meanwhile (as a training run's do)."""
    access_log = procs.work / "s3.log"
    before, log_start = request_counts(api_url), access_log.stat().st_size
    began = time.monotonic()
    step = 10
    while (remaining := args.window - (time.monotonic() - began)) > 0:
        time.sleep(min(remaining, args.heartbeat_every) if moving else remaining)
        if moving and time.monotonic() - began < args.window:
            step += 1
            moving.write(step)
    after, log_end = request_counts(api_url), access_log.stat().st_size
    window = time.monotonic() - began
    procs.check_alive()
    found = {side.label: {**usage(before, after, side.namespace),
                          "object_store_reads": object_store_reads(access_log, log_start, log_end, side.namespace)}
             for side in sides}
    per_minute = {label: {key: value / args.n / (window / 60) for key, value in counts.items() if key != "breakdown"}
                  for label, counts in found.items()}
    log(f"{'heartbeats moving' if moving else 'nothing changing'}, {window:.0f} s: " + "; ".join(
        f"{label} {v['requests']:.2f} requests, {v['status_writes']:.2f} status writes, "
        f"{v['object_store_reads']:.2f} object-store reads per resource per minute" for label, v in per_minute.items()))
    return {"window_s": round(window, 1), "per_resource_per_minute": per_minute,
            "requests_in_window": {label: counts["breakdown"] for label, counts in found.items()},
            "local_kuberay_requests_per_min": kuberay_requests(before, after) / (window / 60)}


def measure(args) -> dict:
    from kubernetes import client, config

    operator_src = Path(args.operator_src).resolve()
    work = Path(tempfile.mkdtemp(prefix="kubeforge-scale-"))
    procs = Processes(work)
    try:
        api_url, s3_url, kubeconfig = start_everything(args, procs, operator_src)
        api_client = config.new_client_from_config(str(kubeconfig))
        api_client.user_agent = f"{BENCH_CLIENT}/1"
        custom = client.CustomObjectsApi(api_client)
        kubeforge, baseline = Side("kubeforge", KUBEFORGE_NS), Side("baseline", BASELINE_NS)
        sides = [kubeforge, baseline]
        for side in sides:
            for path, handler in ((f"/apis/{RAY_GROUP}/{RAY_VERSION}/namespaces/{side.namespace}/{RAYJOBS}",
                                   side.on_rayjob),
                                  (f"/apis/{GROUP}/{VERSION}/namespaces/{side.namespace}/{PLURAL}", side.on_owner)):
                watch = Watch(api_url, path, handler)
                watch.start()
                watch.ready.wait(30)
        try:
            started = wait_until(lambda: all(open_watches(api_url, s.namespace, PLURAL) for s in sides),
                                 "both operators to watch FineTunes", 180, procs, poll=0.5)
        except RuntimeError as error:
            idle = [s.label for s in sides if not open_watches(api_url, s.namespace, PLURAL)]
            raise RuntimeError(f"{error}; not watching: {', '.join(idle) or 'none by now'}\n"
                               + procs.tails(["operator", "baseline", "apiserver"])) from None
        log(f"emulator, S3, status-only KubeRay and both operators up (operators watching after {started:.1f} s); "
            f"Kubeforge from {operator_src} at {source_revision(operator_src)}")

        created = {}
        for side in (baseline, kubeforge):  # the baseline first: Kubeforge's timers then tick over nothing yet
            first_create, create_s = create_finetunes(custom, side, args.n)
            wait_until(lambda: len(side.rayjob_seen) >= args.n, f"{args.n} {side.label} RayJobs", args.timeout, procs)
            last_seen = max(side.rayjob_seen.values())
            created[side.label] = {"all_rayjobs_exist_s": last_seen - first_create, "create_calls_s": create_s}
            log(f"{side.label}: {args.n} FineTunes created in {create_s:.1f} s; all {args.n} RayJobs existed "
                f"{last_seen - first_create:.1f} s after the first create")

        wait_until(lambda: all(s.running() >= args.n for s in sides), "every RayJob Running", args.timeout, procs)
        heartbeats = Heartbeats(kubeforge)
        heartbeats.write(step=10)
        try:
            shown = wait_until(lambda: progress_shown(kubeforge, 10) >= args.n, "Kubeforge to show the heartbeats",
                               args.heartbeat_timeout, procs, poll=0.5)
            log(f"all RayJobs Running; heartbeats shown in Kubeforge's status after {shown:.1f} s")
        except RuntimeError as error:  # a readiness hint only: status.progress may change shape
            log(f"all RayJobs Running; {error}")
        log(f"settling {args.settle:.0f} s")
        time.sleep(args.settle)

        windows = {"still": steady_window(api_url, sides, args, procs, None),
                   "training": steady_window(api_url, sides, args, procs, heartbeats)}

        samples = min(args.samples, args.n)
        sent = finish_children(custom, sides, samples, args.spacing)
        wait_until(lambda: all(set(sent[s.label]) <= set(s.succeeded_at) for s in sides),
                   "owners to show their finished RayJobs", args.latency_timeout, procs)
        latencies = {s.label: sorted(s.succeeded_at[o] - t for o, t in sent[s.label].items()) for s in sides}
        log("latency p50: " + ", ".join(f"{k} {quantile(v, 0.5):.2f} s" for k, v in latencies.items()))
        return report(args, operator_src, created, windows, latencies)
    finally:
        procs.stop_all()
        log(f"stopped everything; logs in {work}")


def report(args, operator_src: Path, created: dict, windows: dict, latencies: dict) -> dict:
    def row(metric: str, what: str, kubeforge: Optional[float], baseline: Optional[float], goal: str = "-",
            met: Optional[bool] = None) -> dict:
        ratio = baseline / kubeforge if kubeforge and baseline is not None else None
        return {"metric": metric, "what": what, "kubeforge": kubeforge, "baseline": baseline, "ratio": ratio,
                "goal": goal, "met": met}

    def per_minute(window: str, side: str, key: str) -> float:
        return windows[window]["per_resource_per_minute"][side][key]

    kf, base = created["kubeforge"]["all_rayjobs_exist_s"], created["baseline"]["all_rayjobs_exist_s"]
    p50 = {k: quantile(v, 0.5) for k, v in latencies.items()}
    p95 = {k: quantile(v, 0.95) for k, v in latencies.items()}
    still_writes = per_minute("still", "kubeforge", "status_writes")
    rows = [
        row("rayjobs_created_s", f"all {args.n} RayJobs exist, s after the first create", kf, base,
            "ratio >= 0.8", base / kf >= 0.8),
        row("steady_requests_per_resource_min", "API requests /resource/min, nothing changing",
            per_minute("still", "kubeforge", "requests"), per_minute("still", "baseline", "requests")),
        row("steady_status_writes_per_resource_min", "status writes /resource/min, nothing changing",
            still_writes, per_minute("still", "baseline", "status_writes"), "kubeforge <= 1", still_writes <= 1),
        row("steady_object_store_reads_per_resource_min", "object-store reads /resource/min, nothing changing",
            per_minute("still", "kubeforge", "object_store_reads"),
            per_minute("still", "baseline", "object_store_reads")),
        row("training_requests_per_resource_min", "API requests /resource/min, heartbeats moving",
            per_minute("training", "kubeforge", "requests"), per_minute("training", "baseline", "requests")),
        row("training_status_writes_per_resource_min", "status writes /resource/min, heartbeats moving",
            per_minute("training", "kubeforge", "status_writes"), per_minute("training", "baseline", "status_writes")),
        row("training_object_store_reads_per_resource_min", "object-store reads /resource/min, heartbeats moving",
            per_minute("training", "kubeforge", "object_store_reads"),
            per_minute("training", "baseline", "object_store_reads")),
        row("latency_p50_s", "RayJob status change -> owner status, p50 (s)", p50["kubeforge"], p50["baseline"],
            "kubeforge <= 1", p50["kubeforge"] is not None and p50["kubeforge"] <= 1),
        row("latency_p95_s", "RayJob status change -> owner status, p95 (s)", p95["kubeforge"], p95["baseline"]),
    ]
    return {
        "n": args.n, "window_s": args.window, "heartbeat_every_s": args.heartbeat_every,
        "samples": min(args.samples, args.n), "operator_src": str(operator_src),
        "operator_revision": source_revision(operator_src),
        "ratio_is": "baseline / kubeforge (below 1: Kubeforge takes more time or more requests)",
        "metrics": rows,
        "detail": {"creation": created, "steady": windows,
                   "latency_samples_s": {k: [round(x, 3) for x in v] for k, v in latencies.items()}},
    }


def table(result: dict) -> str:
    def cell(value, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = f"{'metric':<52} {'kubeforge':>10} {'baseline':>10} {'ratio':>7}  goal"
    lines = [f"N={result['n']}, steady windows {result['window_s']:.0f} s (heartbeats moving every "
             f"{result['heartbeat_every_s']:g} s in the second), latency samples {result['samples']} per side; "
             f"Kubeforge {result['operator_revision']} ({result['operator_src']})",
             f"ratio = {result['ratio_is']}", header, "-" * len(header)]
    for row in result["metrics"]:
        verdict = "" if row["met"] is None else " (met)" if row["met"] else " (NOT met)"
        lines.append(f"{row['what']:<52} {cell(row['kubeforge']):>10} {cell(row['baseline']):>10} "
                     f"{cell(row['ratio']):>7}  {row['goal']}{verdict}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="FineTunes per side")
    parser.add_argument("--window", type=float, default=60.0, help="steady-state window (s)")
    parser.add_argument("--samples", type=int, default=20, help="RayJobs ended per side for the latency")
    parser.add_argument("--spacing", type=float, default=0.25, help="seconds between two RayJob status changes")
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds between everything running (heartbeats shown) and the steady window")
    parser.add_argument("--heartbeat-every", type=float, default=5.0,
                        help="in the second window, move every heartbeat one step this often (s)")
    parser.add_argument("--operator-src", default=str(REPO / "operator"),
                        help="directory holding the kubeforge package to measure (default: this checkout's)")
    parser.add_argument("--heartbeat-timeout", type=float, default=180.0,
                        help="seconds to wait for Kubeforge's status to show the first heartbeats before the windows "
                             "(a readiness hint; 0 starts the windows at once)")
    parser.add_argument("--timeout", type=float, default=900.0, help="limit for each wait (s)")
    parser.add_argument("--latency-timeout", type=float, default=120.0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON (the table goes to stderr)")
    parser.add_argument("--baseline-operator", metavar="NAMESPACE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_operator:
        run_baseline_operator(args.baseline_operator)
        return
    # Stop what the bench started on SIGTERM too, not only on Ctrl-C or an error.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = measure(args)
    if args.json:
        print(table(result), file=sys.stderr)
        print(json.dumps(result, indent=1))
    else:
        print(table(result))


if __name__ == "__main__":
    main()
