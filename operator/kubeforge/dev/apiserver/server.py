"""Run the emulator: as a process (`python -m kubeforge.dev.apiserver`), in the caller's event loop
(`async with ApiServer(...)`), or in a background thread for synchronous tests (`with ApiServer(...)` or
`run_in_thread(...)`)."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence

from aiohttp import web

from kubeforge.dev.apiserver.app import ApiApp, load_crd_dirs
from kubeforge.dev.apiserver.store import Store

CONTEXT = "kubeforge-dev"


def kubeconfig(url: str, namespace: str = "default") -> dict:
    """A kubeconfig for `url` with cluster, user and context all named "kubeforge-dev"."""
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": CONTEXT, "preferences": {},
        "clusters": [{"name": CONTEXT, "cluster": {"server": url}}],
        "users": [{"name": CONTEXT, "user": {"token": CONTEXT}}],  # accepted, never checked (no authn)
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace}}],
    }


def build(crd_dirs: Sequence[Path]) -> tuple[Store, web.Application]:
    store = Store()
    load_crd_dirs(store, [Path(d) for d in crd_dirs])
    return store, ApiApp(store).app


async def serve(host: str, port: int, crd_dirs: list[Path], ready_file: Optional[Path] = None) -> None:
    _, app = build(crd_dirs)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    if ready_file:
        ready_file.write_text(f"http://{host}:{port}\n")
    await asyncio.Event().wait()


class ApiServer:
    """The emulator on a loopback port (0 = a free one).

    `async with ApiServer(crd_dirs=[...]) as srv:` serves it in the running event loop;
    `with ApiServer(crd_dirs=[...]) as srv:` serves it from a daemon thread with its own loop.
    Either way `srv.url` is its base URL and `srv.store` the live object store (for white-box tests).
    """

    def __init__(self, crd_dirs: Sequence[Path] = (), port: int = 0, host: str = "127.0.0.1"):
        self.crd_dirs = [Path(d) for d in crd_dirs]
        self.host = host
        self.port = port or _free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.store: Optional[Store] = None
        self._runner: Optional[web.AppRunner] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None

    async def start(self) -> "ApiServer":
        self.store, app = build(self.crd_dirs)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "ApiServer":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def __enter__(self) -> "ApiServer":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="kubeforge-apiserver")
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), self._loop).result(60)
        return self

    def __exit__(self, *exc) -> None:
        assert self._loop is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def run_in_thread(crd_dirs: Sequence[Path] = (), port: int = 0) -> tuple[str, Callable[[], None]]:
    """Start the emulator in a background thread; returns (url, stop). For pytest fixtures."""
    server = ApiServer(crd_dirs=crd_dirs, port=port)
    server.__enter__()
    return server.url, lambda: server.__exit__(None, None, None)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
