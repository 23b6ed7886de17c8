"""Request accounting as kube-apiserver exposes it on /metrics (Prometheus text format 0.0.4).

`apiserver_request_total` and `apiserver_longrunning_requests` carry kube-apiserver's labels and values (verbs as
its metrics report them: GET, LIST, WATCH, POST, PUT, PATCH, APPLY, DELETE, DELETECOLLECTION; scope resource,
namespace or cluster). As there, only resource requests are counted, and a request is counted when it completes
(a WATCH when its stream ends), with its HTTP status code.

The `sandbox_apiserver_*` series are the emulator's own: the same counts split by the request's namespace and
client (the User-Agent's product, as the default field manager is derived), which kube-apiserver does not offer.
They let a benchmark tell apart the clients that share one emulator.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STANDARD_LABELS = ("verb", "dry_run", "group", "version", "resource", "subresource", "scope", "component", "code")
SANDBOX_LABELS = ("verb", "group", "version", "resource", "subresource", "scope", "namespace", "client", "code")
LONGRUNNING_LABELS = ("verb", "group", "version", "resource", "subresource", "scope", "component")


@dataclass(frozen=True)
class RequestLabels:
    verb: str
    group: str
    version: str
    resource: str
    subresource: str
    scope: str
    namespace: str
    client: str
    dry_run: str = ""
    component: str = "apiserver"

    def values(self, names: tuple[str, ...], code: Optional[int] = None) -> tuple[str, ...]:
        fields = {**self.__dict__, "code": "" if code is None else str(code)}
        return tuple(fields[name] for name in names)


def reported_verb(method: str, named: bool, watch: bool, content_type: str) -> str:
    """The verb as kube-apiserver's metrics report it (apiserver/pkg/endpoints/metrics CleanVerb)."""
    if method == "GET":
        return "WATCH" if watch else "GET" if named else "LIST"
    if method == "PATCH" and content_type.startswith("application/apply-patch"):
        return "APPLY"
    if method == "DELETE" and not named:
        return "DELETECOLLECTION"
    return method


def client_of(user_agent: str) -> str:
    return (user_agent or "unknown").split("/")[0].split(" ")[0] or "unknown"


class RequestMetrics:
    def __init__(self) -> None:
        self.completed: Counter[tuple[RequestLabels, int]] = Counter()
        self.in_flight: Counter[RequestLabels] = Counter()

    def started(self, labels: RequestLabels) -> None:
        if labels.verb == "WATCH":
            self.in_flight[labels] += 1

    def finished(self, labels: RequestLabels, code: int) -> None:
        self.abandoned(labels)
        self.completed[(labels, code)] += 1

    def abandoned(self, labels: RequestLabels) -> None:
        """A request that ended without a response (the client went away): no longer in flight, not counted."""
        if labels.verb == "WATCH":
            self.in_flight[labels] -= 1
            if self.in_flight[labels] <= 0:
                del self.in_flight[labels]

    def render(self) -> str:
        lines: list[str] = []
        standard: Counter[tuple[str, ...]] = Counter()
        by_client: Counter[tuple[str, ...]] = Counter()
        for (labels, code), count in self.completed.items():
            standard[labels.values(STANDARD_LABELS, code)] += count
            by_client[labels.values(SANDBOX_LABELS, code)] += count
        running: Counter[tuple[str, ...]] = Counter()
        running_by_client: Counter[tuple[str, ...]] = Counter()
        for labels, count in self.in_flight.items():
            running[labels.values(LONGRUNNING_LABELS)] += count
            running_by_client[labels.values(SANDBOX_LABELS[:-1])] += count
        _family(lines, "apiserver_request_total", "counter",
                "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, "
                "scope, component, and HTTP response code.", STANDARD_LABELS, standard)
        _family(lines, "apiserver_longrunning_requests", "gauge",
                "Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, "
                "scope and component. Not all requests are tracked this way.", LONGRUNNING_LABELS, running)
        _family(lines, "sandbox_apiserver_request_total", "counter",
                "Emulator only: apiserver_request_total by the request's namespace and client (User-Agent product).",
                SANDBOX_LABELS, by_client)
        _family(lines, "sandbox_apiserver_longrunning_requests", "gauge",
                "Emulator only: apiserver_longrunning_requests by the request's namespace and client.",
                SANDBOX_LABELS[:-1], running_by_client)
        return "\n".join(lines) + "\n"


def _family(lines: list[str], name: str, kind: str, help_text: str, label_names: tuple[str, ...],
            samples: Counter) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    for values, count in sorted(samples.items()):
        rendered = ",".join(f'{label}="{_escape(value)}"' for label, value in zip(label_names, values))
        lines.append(f"{name}{{{rendered}}} {count}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
