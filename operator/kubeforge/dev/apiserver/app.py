"""HTTP routes: the REST paths of kube-apiserver over the Store."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Optional

import yaml
from aiohttp import web

from kubeforge.dev.apiserver import discovery, protobuf
from kubeforge.dev.apiserver.errors import ApiError
from kubeforge.dev.apiserver.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from kubeforge.dev.apiserver.metrics import RequestLabels, RequestMetrics, client_of, reported_verb
from kubeforge.dev.apiserver.selectors import BUILTIN_FIELDS, SelectorError, field_matcher, label_matcher
from kubeforge.dev.apiserver.store import Store, WriteOptions
from kubeforge.dev.apiserver.tables import table
from kubeforge.dev.apiserver.types import ResourceType

log = logging.getLogger(__name__)
BOOKMARK_INTERVAL = 10.0
METRICS_LABELS_KEY = web.RequestKey("request_labels", RequestLabels)


def _json(body: dict, status: int = 200, warnings: list[str] = ()) -> web.Response:
    escaped = [w.replace("\\", "\\\\").replace('"', '\\"') for w in warnings]
    headers = {"Warning": ", ".join(f'299 - "{w}"' for w in escaped)} if warnings else None
    return web.Response(text=json.dumps(body), status=status, content_type="application/json", headers=headers)


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def _options(request: web.Request) -> WriteOptions:
    """fieldValidation (default Warn, as kube-apiserver ≥1.27), fieldManager (default: the User-Agent's product,
    as the real server derives it), dryRun=All, force (apply)."""
    validation = request.query.get("fieldValidation") or "Warn"
    if validation not in ("Strict", "Warn", "Ignore"):
        raise ApiError(400, f"fieldValidation must be one of Ignore, Warn or Strict, got {validation!r}")
    manager = request.query.get("fieldManager")
    if manager is None and not _is_apply(request):
        manager = (request.headers.get("User-Agent") or "unknown").split("/")[0] or "unknown"
    return WriteOptions(validation=validation, manager=manager or "", dry_run=bool(request.query.get("dryRun")),
                        force=request.query.get("force") in ("true", "1"))


def _is_apply(request: web.Request) -> bool:
    return request.headers.get("Content-Type", "").startswith("application/apply-patch")


def _matcher(request: web.Request, rtype: ResourceType):
    if rtype.schema is not None or rtype.crd_name:
        allowed, custom = {f.lstrip(".") for f in rtype.selectable_fields}, True
    else:
        allowed, custom = BUILTIN_FIELDS.get(rtype.key, set()), False
    try:
        labels = label_matcher(request.query.get("labelSelector"))
        fields = field_matcher(request.query.get("fieldSelector"), allowed, custom, rtype.key)
    except SelectorError as error:
        raise ApiError(400, str(error))
    return lambda obj: labels(obj["metadata"].get("labels") or {}) and fields(obj)


async def _body(request: web.Request, kind: Optional[str] = None) -> dict:
    raw = await request.read()
    if not raw:
        return {}
    if protobuf.is_protobuf(request.headers.get("Content-Type", "")):
        try:
            return protobuf.decode(raw, kind)
        except protobuf.ProtobufError as error:
            raise ApiError(415, f"the body of the request was in an unknown format - accepted media types include: "
                                f"application/json, application/yaml ({error})", "UnsupportedMediaType")
    try:
        parsed = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ApiError(400, f"couldn't decode body: {error}")
    if not isinstance(parsed, dict):
        raise ApiError(400, "the body must be an object")
    return parsed


class Route:
    """A parsed resource path."""

    def __init__(self, rtype: ResourceType, namespace: Optional[str], name: Optional[str], sub: Optional[str]):
        self.rtype, self.namespace, self.name, self.sub = rtype, namespace, name, sub


class ApiApp:
    def __init__(self, store: Store):
        self.store = store
        self.metrics = RequestMetrics()
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self.dispatch)

    # ---- routing -----------------------------------------------------------------------------------------------
    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            response = await self._dispatch(request)
        except ApiError as error:
            response = _json(error.status(), error.code)
        except (ConnectionResetError, asyncio.CancelledError):
            if METRICS_LABELS_KEY in request:
                self.metrics.abandoned(request[METRICS_LABELS_KEY])
            raise
        except Exception as error:  # a bug must answer 500, not kill the server
            log.exception("internal error on %s %s", request.method, request.path)
            response = _json(ApiError(500, f"internal error: {error}").status(), 500)
        if METRICS_LABELS_KEY in request:
            self.metrics.finished(request[METRICS_LABELS_KEY], response.status)
        return response

    def _start_accounting(self, request: web.Request, route: Route) -> None:
        rtype = route.rtype
        scope = "resource" if route.name else "namespace" if route.namespace else "cluster"
        labels = RequestLabels(
            verb=reported_verb(request.method, bool(route.name), request.query.get("watch") in ("true", "1"),
                               request.headers.get("Content-Type", "")),
            group=rtype.group, version=rtype.version, resource=rtype.plural, subresource=route.sub or "",
            scope=scope, namespace=route.namespace or "", client=client_of(request.headers.get("User-Agent", "")),
            dry_run="All" if request.query.get("dryRun") else "")
        request[METRICS_LABELS_KEY] = labels
        self.metrics.started(labels)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        store = self.store
        if request.path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if request.path == "/version":
            return _json(discovery.SERVER_VERSION)
        if request.path == "/metrics":
            return web.Response(body=self.metrics.render().encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})
        if request.path == "/api":
            return _json(discovery.api_versions())
        if request.path == "/apis":
            return _json(discovery.api_group_list(list(store.types.values())))
        if parts[:1] == ["openapi"]:
            return self._openapi(parts)
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "the server could not find the requested resource")
        if not rest:
            types = [t for t in store.types.values() if t.group == group and t.version == version]
            if not types:
                raise ApiError(404, "the server could not find the requested resource")
            return _json(discovery.resource_list(f"{group}/{version}" if group else version, types))
        return await self._resource(request, self._route(group, version, rest))

    def _route(self, group: str, version: str, rest: list[str]) -> Route:
        store = self.store
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
            rtype = store.find_type(group, version, rest[2])
            if not rtype.namespaced:
                raise ApiError(404, "the server could not find the requested resource")
            return Route(rtype, rest[1], rest[3] if len(rest) > 3 else None, rest[4] if len(rest) > 4 else None)
        rtype = store.find_type(group, version, rest[0])
        return Route(rtype, None, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None)

    def _openapi(self, parts: list[str]) -> web.Response:
        grouped = discovery.group_versions(list(self.store.types.values()))
        if parts == ["openapi", "v2"]:
            return _json(discovery.openapi_v2(list(self.store.types.values())))
        if parts == ["openapi", "v3"]:
            return _json(discovery.openapi_v3_index(grouped))
        if parts[:2] == ["openapi", "v3"]:
            group_version = "/".join(parts[3:]) if parts[2] == "apis" else parts[3] if len(parts) > 3 else ""
            if group_version in grouped:
                return _json(discovery.openapi_v3_document(grouped[group_version]))
        raise ApiError(404, "the server could not find the requested resource")

    # ---- verbs -------------------------------------------------------------------------------------------------
    async def _resource(self, request: web.Request, route: Route) -> web.StreamResponse:
        self._start_accounting(request, route)
        store, rtype, method = self.store, route.rtype, request.method
        dry_run = bool(request.query.get("dryRun"))
        if route.sub not in (None, "status") and not (route.sub == "finalize" and rtype.plural == "namespaces"):
            raise ApiError(404, "the server could not find the requested resource")
        if route.sub == "status" and not rtype.has_status:
            raise ApiError(404, "the server could not find the requested resource")
        if route.name is None:
            if method == "GET":
                if request.query.get("watch") in ("true", "1"):
                    return await self._watch(request, route)
                return self._list(request, route)
            if method == "POST":
                obj, warnings = store.create(rtype, route.namespace, await _body(request, rtype.kind), _options(request))
                return _json(obj, 201, warnings)
            if method == "DELETE":
                items, _ = store.list(rtype, route.namespace, _matcher(request, rtype))
                for item in items:
                    store.delete(rtype, item["metadata"].get("namespace"), item["metadata"]["name"])
                return _json({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version, "items": items,
                              "metadata": {"resourceVersion": str(store.rv)}})
            raise ApiError(405, f"method {method} not allowed", "MethodNotAllowed")
        if method == "GET":
            obj = store.get(rtype, route.namespace, route.name)
            if _wants_table(request):
                return _json(table(rtype, [obj], obj["metadata"]["resourceVersion"], request.query.get("includeObject", "Metadata")))
            return _json(obj)
        if method == "PUT":
            obj, warnings = store.update(rtype, route.namespace, route.name, await _body(request, rtype.kind),
                                         route.sub if route.sub == "status" else None, _options(request))
            return _json(obj, 200, warnings)
        if method == "PATCH":
            obj, warnings, created = store.patch(
                rtype, route.namespace, route.name, request.headers.get("Content-Type", ""), await request.read(),
                route.sub if route.sub == "status" else None, _options(request))
            return _json(obj, 201 if created else 200, warnings)
        if method == "DELETE":
            options = await _body(request, "DeleteOptions")
            propagation = request.query.get("propagationPolicy") or options.get("propagationPolicy")
            orphan = request.query.get("orphanDependents") or options.get("orphanDependents")
            if propagation is None and orphan in (True, "true"):
                propagation = "Orphan"
            if propagation not in (None, "Background", "Foreground", "Orphan"):
                raise ApiError(422, f'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: '
                                    f'"{propagation}": supported values: "Foreground", "Background", "Orphan", "nil"')
            if options.get("preconditions", {}).get("resourceVersion"):
                current = store.get(rtype, route.namespace, route.name)
                if current["metadata"]["resourceVersion"] != options["preconditions"]["resourceVersion"]:
                    raise ApiError(409, f'Operation cannot be fulfilled on {rtype.qualified} "{route.name}": '
                                        "the ResourceVersion in the precondition does not match", "Conflict")
            deleted = store.delete(rtype, route.namespace, route.name, propagation, dry_run)
            if rtype.return_deleted or deleted["metadata"].get("deletionTimestamp") and \
                    store.objects[rtype.key].get((route.namespace or "", route.name)) is not None:
                return _json(deleted)
            # Stores without ReturnDeletedObject answer a Status once the object is gone.
            return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                          "details": {"name": route.name, "group": rtype.group, "kind": rtype.plural,
                                      "uid": deleted["metadata"].get("uid")}})
        raise ApiError(405, f"method {method} not allowed", "MethodNotAllowed")

    def _list(self, request: web.Request, route: Route) -> web.Response:
        rtype = route.rtype
        items, rv = self.store.list(rtype, route.namespace, _matcher(request, rtype))
        limit = int(request.query.get("limit") or 0)
        start = int(request.query.get("continue") or 0)
        meta: dict = {"resourceVersion": rv}
        if limit:
            if start + limit < len(items):
                meta["continue"] = str(start + limit)
                meta["remainingItemCount"] = len(items) - start - limit
            items = items[start:start + limit]
        if _wants_table(request):
            result = table(rtype, items, rv, request.query.get("includeObject", "Metadata"))
            result["metadata"].update(meta)
            return _json(result)
        return _json({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version, "metadata": meta, "items": items})

    async def _watch(self, request: web.Request, route: Route) -> web.StreamResponse:
        rtype = route.rtype
        matches = _matcher(request, rtype)
        if route.name:
            name = route.name
            matches = (lambda inner: lambda obj: obj["metadata"]["name"] == name and inner(obj))(matches)
        as_table = _wants_table(request)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1")
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        try:
            watcher, backlog = self.store.watch(rtype, route.namespace, matches, request.query.get("resourceVersion"))
        except ApiError as error:
            if error.code != 410:
                raise
            # As kube-apiserver: the watch opens, then one ERROR event carries the 410 Status.
            await response.prepare(request)
            await response.write(json.dumps({"type": "ERROR", "object": error.status()}).encode() + b"\n")
            return response
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        async def send(event: dict) -> None:
            if as_table and event["type"] != "BOOKMARK" and event["object"].get("kind") != "Status":
                event = {"type": event["type"], "object": table(rtype, [event["object"]],
                                                              event["object"]["metadata"]["resourceVersion"], "Object")}
            await response.write(json.dumps(event).encode() + b"\n")

        try:
            for event in backlog:
                await send(event)
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), min(remaining, BOOKMARK_INTERVAL))
                except asyncio.TimeoutError:
                    if bookmarks:
                        await send({"type": "BOOKMARK", "object": {
                            "kind": rtype.kind, "apiVersion": rtype.api_version,
                            "metadata": {"resourceVersion": str(self.store.rv)}}})
                    continue
                if event is None:  # the type was unregistered (its CRD deleted)
                    break
                await send(event)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unwatch(rtype, watcher)
        return response


def load_crd_dirs(store: Store, directories: list[Path]) -> int:
    count = 0
    for directory in directories:
        for path in sorted(Path(directory).glob("*.y*ml")):
            for doc in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    store.load_crd(doc)
                    count += 1
    return count
