"""Follow applied Kubeforge resources to their final state, printing a line whenever one's phase, progress,
restarts or reason changes (what `kubeforge dev demo` shows while a model trains).

`kubectl get genai -w` cannot do this: kubectl watches a single resource type, and `genai` is a category of five.
Here one watch per kind and namespace, through the kubernetes client, feeds a `ProgressBoard`, which holds what to
print and when to stop and is free of I/O.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from kubeforge.api.kinds import KINDS, kind_info

GROUP = "kubeforge.dev"
VERSION = "v1alpha1"
DONE_PHASES = ("Succeeded", "Failed")
HEADER = f"{'TIME':>6}  {'KIND/NAME':<40} {'PHASE':<10} {'PROGRESS':<18} {'RESTARTS':<8} REASON"


@dataclass(frozen=True)
class Ref:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def applied_refs(documents: Iterable[Optional[dict]], default_namespace: str) -> list[Ref]:
    """The Kubeforge resources among a manifest's documents; other kinds are not followed."""
    known = {info.kind for info in KINDS}
    refs = []
    for doc in documents:
        if not doc or str(doc.get("apiVersion", "")).split("/")[0] != GROUP or doc.get("kind") not in known:
            continue
        meta = doc.get("metadata") or {}
        refs.append(Ref(doc["kind"], meta.get("namespace") or default_namespace, meta["name"]))
    return refs


def _condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


@dataclass(frozen=True)
class Row:
    phase: str
    progress: str
    restarts: str
    reason: str

    @classmethod
    def of(cls, obj: dict) -> "Row":
        status = obj.get("status") or {}
        ready = _condition(status, "Ready")
        return cls(phase=status.get("phase") or "-", progress=(status.get("progress") or {}).get("summary") or "-",
                   restarts=str(status.get("restarts", 0)), reason=ready.get("reason") or "-")


def verdict(obj: Optional[dict]) -> Optional[str]:
    """None while the resource is still on its way; otherwise 'succeeded', 'ready' or why it failed. Only status
    written for the current generation counts, so a re-applied resource is followed until its new spec is done."""
    if obj is None:
        return "deleted"
    status = obj.get("status") or {}
    generation = obj.get("metadata", {}).get("generation")
    if generation is not None and status.get("observedGeneration") != generation:
        return None
    phase = status.get("phase")
    stalled = _condition(status, "Stalled")
    if phase == "Failed":
        return f"failed ({_condition(status, 'Ready').get('reason') or 'Failed'})"
    if stalled.get("status") == "True":
        return f"stalled ({stalled.get('reason') or 'Stalled'}): {stalled.get('message') or status.get('message', '')}"
    if phase == "Succeeded":
        return "succeeded"
    if phase == "Ready" and _condition(status, "Ready").get("status") == "True":
        return "ready"
    return None


class ProgressBoard:
    """What has been seen of each followed resource: the lines to print, and whether every one is final."""

    def __init__(self, refs: Iterable[Ref], clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._began = clock()
        self._rows: dict[Ref, Row] = {}
        self._verdicts: dict[Ref, Optional[str]] = {ref: None for ref in refs}

    def observe(self, event_type: str, obj: dict) -> Optional[str]:
        """The line to print for a watch event, or None when it changes nothing shown (or is not followed)."""
        meta = obj.get("metadata") or {}
        ref = Ref(obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))
        if ref not in self._verdicts:
            return None
        deleted = event_type == "DELETED"
        self._verdicts[ref] = verdict(None if deleted else obj)
        row = Row("Deleted", "-", "-", "-") if deleted else Row.of(obj)
        if self._rows.get(ref) == row:
            return None
        self._rows[ref] = row
        return (f"{self._clock() - self._began:>5.0f}s  {str(ref):<40} {row.phase:<10} {row.progress:<18} "
                f"{row.restarts:<8} {row.reason}")

    @property
    def done(self) -> bool:
        return all(v is not None for v in self._verdicts.values())

    def failures(self) -> dict[Ref, str]:
        return {ref: v for ref, v in self._verdicts.items() if v is not None and v not in ("succeeded", "ready")}

    def pending(self) -> list[Ref]:
        return [ref for ref, v in self._verdicts.items() if v is None]


def _watch_forever(api, plural: str, namespace: str, events: "queue.Queue", stop: threading.Event) -> None:
    """Relay every event of one kind in one namespace until told to stop; a broken stream is re-opened (its
    initial ADDED events replay the current state, which the board ignores when nothing changed)."""
    from kubernetes import watch

    while not stop.is_set():
        try:
            for event in watch.Watch().stream(api.list_namespaced_custom_object, GROUP, VERSION, namespace, plural,
                                              timeout_seconds=20):
                events.put((event["type"], event["object"]))
                if stop.is_set():
                    return
        except Exception as error:  # the API server restarting, a dropped connection: try again shortly
            events.put(("ERROR", {"error": str(error)}))
            stop.wait(2)


def follow(refs: list[Ref], kubeconfig: str, timeout: float, echo: Callable[[str], None] = print) -> ProgressBoard:
    """Print a line per change of the followed resources until each is final or `timeout` seconds pass."""
    from kubernetes import client, config

    api = client.CustomObjectsApi(config.new_client_from_config(kubeconfig))
    board = ProgressBoard(refs)
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    for plural, namespace in sorted({(kind_info(ref.kind).plural, ref.namespace) for ref in refs}):
        threading.Thread(target=_watch_forever, args=(api, plural, namespace, events, stop), daemon=True,
                         name=f"watch-{plural}-{namespace}").start()
    echo(HEADER)
    deadline = time.monotonic() + timeout
    last_error = None
    try:
        while not board.done and time.monotonic() < deadline:
            try:
                event_type, obj = events.get(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                continue
            if event_type == "ERROR":
                if obj["error"] != last_error:
                    echo(f"(watch interrupted, retrying: {obj['error'][:200]})")
                last_error = obj["error"]
                continue
            line = board.observe(event_type, obj)
            if line:
                echo(line)
    finally:
        stop.set()
    return board
