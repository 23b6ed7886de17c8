"""Run the emulator: as a process (`python -m kubeforge.dev.apiserver`) or in a thread for tests."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Optional

from aiohttp import web

from kubeforge.dev.apiserver.app import ApiApp, load_crd_dirs
from kubeforge.dev.apiserver.store import Store


def kubeconfig(url: str, namespace: str = "default") -> dict:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "kubeforge-dev", "preferences": {},
        "clusters": [{"name": "kubeforge-dev", "cluster": {"server": url}}],
        "users": [{"name": "kubeforge-dev", "user": {"token": "kubeforge-dev"}}],  # accepted, not checked
        "contexts": [{"name": "kubeforge-dev", "context": {"cluster": "kubeforge-dev", "user": "kubeforge-dev",
                                                            "namespace": namespace}}],
    }


def build(crd_dirs: list[Path]) -> tuple[Store, web.Application]:
    store = Store()
    load_crd_dirs(store, crd_dirs)
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
    """The emulator on a free loopback port in a background thread (for tests)."""

    def __init__(self, crd_dirs: list[Path], port: int = 0):
        self.crd_dirs = [Path(d) for d in crd_dirs]
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.store: Optional[Store] = None

    def __enter__(self) -> "ApiServer":
        self.store, app = build(self.crd_dirs)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
