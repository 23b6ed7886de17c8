"""Stopping everything one sandbox component started.

Each component is started as the leader of a new session. Its helpers inherit that session id even when they
leave its process group or outlive their parent (Ray's `ray start` exits at once, leaving the GCS, raylet, dashboard,
its agents and the client server behind), so the session is what names "everything this component started".
"""

from __future__ import annotations

import os
import signal
from typing import Optional

import psutil

CLOCK_SLACK_SECONDS = 1.0
"""A process's create time is rounded to clock ticks; allow for it when comparing with a time taken before spawn."""


def session_members(session_id: int, started_after: Optional[float] = None) -> list[psutil.Process]:
    """Running processes of a session, other than this one. With `started_after` (a time.time() taken before the
    leader was spawned), processes older than the session are left out, so a session id reused after a reboot or a
    pid wrap names nothing of someone else's."""
    if started_after is not None and psutil.boot_time() > started_after:
        return []
    members = []
    for proc in psutil.process_iter(["create_time", "status"]):
        if proc.pid == os.getpid():
            continue
        try:
            if os.getsid(proc.pid) != session_id or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
        except (ProcessLookupError, PermissionError):
            continue
        if started_after is not None and proc.info["create_time"] < started_after - CLOCK_SLACK_SECONDS:
            continue
        members.append(proc)
    return members


def stop_processes(victims: list[psutil.Process], timeout: float = 10) -> None:
    """SIGTERM, wait up to `timeout`, SIGKILL what is left, and wait until it is gone."""
    for proc in victims:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(victims, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    _, still_alive = psutil.wait_procs(alive, timeout=timeout)
    stuck = [p for p in still_alive if _running(p)]
    if stuck:
        raise RuntimeError(f"processes {[p.pid for p in stuck]} survived SIGKILL")


def stop_session(session_id: int, started_after: Optional[float] = None, timeout: float = 10) -> int:
    """Stop every process of the session (see session_members); returns how many there were."""
    victims = session_members(session_id, started_after)
    stop_processes(victims, timeout)
    return len(victims)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ray_train_workers(driver_pid: int) -> list[psutil.Process]:
    """The Ray Train worker processes under a driver that started its own local Ray, by their process title."""
    workers = []
    for process in psutil.Process(driver_pid).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(process.cmdline()):
                workers.append(process)
        except psutil.Error:  # gone between listing and reading
            continue
    return workers


def die_with_parent() -> None:
    """A `preexec_fn` for a child that must not outlive its parent even when the parent is SIGKILLed (Linux
    PR_SET_PDEATHSIG). It reaches only that child: what the child starts in turn is still stopped by session."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
