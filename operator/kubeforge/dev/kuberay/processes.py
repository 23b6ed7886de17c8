"""Finding and signalling a Ray job's processes on the local head (for chaos hang/resume/kill).

A job's processes are found three ways and merged: the marker env var the local KubeRay puts in every job's
runtime env (covers the entrypoint shell and its children, even before `ray.init`), Ray's job info
`driver_info.pid`, and the state API's workers/actors whose job_id is the job's Ray JobID."""

from __future__ import annotations

import logging
import os
import signal
from typing import Iterable, Optional

log = logging.getLogger("kubeforge.dev.kuberay")
JOB_MARKER_ENV = "KUBEFORGE_LOCAL_RAYJOB"


def marker_pids(submission_id: str) -> set[int]:
    import psutil

    found = set()
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(JOB_MARKER_ENV) == submission_id:
                found.add(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def ray_pids(jobs_client, dashboard_url: str, submission_id: str) -> set[int]:
    """Driver, worker and actor pids of the job as Ray reports them (empty when Ray cannot say)."""
    pids: set[int] = set()
    try:
        info = jobs_client.get_job_info(submission_id)
    except Exception:
        return pids
    driver = getattr(info, "driver_info", None)
    if driver is not None and getattr(driver, "pid", None):
        pids.add(int(driver.pid))
    ray_job_id = getattr(info, "job_id", None)
    if not ray_job_id:
        return pids
    try:
        from ray.util.state import list_actors, list_workers

        for worker in list_workers(address=dashboard_url, detail=True, limit=10000, raise_on_missing_output=False):
            if _get(worker, "job_id") == ray_job_id and _get(worker, "is_alive") and _get(worker, "pid"):
                if _get(worker, "worker_type") in (None, "WORKER", "DRIVER"):
                    pids.add(int(_get(worker, "pid")))
        for actor in list_actors(address=dashboard_url, filters=[("job_id", "=", ray_job_id)], detail=True,
                                 limit=10000, raise_on_missing_output=False):
            if _get(actor, "state") == "ALIVE" and _get(actor, "pid"):
                pids.add(int(_get(actor, "pid")))
    except Exception as error:  # the state API is best effort; the marker env covers the rest
        log.info("state API lookup for %s failed: %s", submission_id, error)
    return pids


def _get(obj, key):
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def with_children(pids: Iterable[int]) -> set[int]:
    import psutil

    out = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            out.add(pid)
            out.update(child.pid for child in proc.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def job_pids(submission_id: str, jobs_client=None, dashboard_url: Optional[str] = None) -> set[int]:
    pids = marker_pids(submission_id)
    if jobs_client is not None and dashboard_url:
        pids |= ray_pids(jobs_client, dashboard_url, submission_id)
    pids.discard(os.getpid())
    return with_children(pids)


def signal_all(pids: Iterable[int], sig: int) -> int:
    sent = 0
    for pid in sorted(pids):
        try:
            os.kill(pid, sig)
            sent += 1
        except (ProcessLookupError, PermissionError):
            continue
    return sent


def process_states(pids: Iterable[int]) -> dict[int, str]:
    import psutil

    states = {}
    for pid in pids:
        try:
            states[pid] = psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            continue
    return states


STOP, CONT, KILL = signal.SIGSTOP, signal.SIGCONT, signal.SIGKILL


def containers_of(submission_id: str) -> dict[str, set[int]]:
    """The job's processes grouped as the containers they would run in on a cluster: "head" (the entrypoint and
    everything it starts itself, i.e. the driver) and one "worker:<pid>" per Ray worker/actor process (each stands
    for a worker pod). Ray's own JobSupervisor actor belongs to no container of the job (it runs in the head's
    dashboard agent on a cluster). Ray names its worker processes `ray::<Actor or task>` (setproctitle)."""
    import psutil

    head: set[int] = set()
    containers: dict[str, set[int]] = {}
    for pid in marker_pids(submission_id):
        try:
            title = " ".join(psutil.Process(pid).cmdline()[:1])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if title.startswith("ray::JobSupervisor"):
            continue
        if title.startswith("ray::"):
            containers[f"worker:{pid}"] = {pid}
        else:
            head.add(pid)
    in_workers = set().union(*containers.values()) if containers else set()
    head = with_children(head) - in_workers
    if head:
        containers["head"] = head
    return containers


def rss_bytes(pids: Iterable[int]) -> int:
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total
