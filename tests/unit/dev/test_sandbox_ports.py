"""The sandbox's port block: what it covers, and the refusal when something already listens on a port of it."""

from __future__ import annotations

import socket
from pathlib import Path

import psutil
import pytest

from kubeforge.dev import ray_head, sandbox
from tests.integration.sandbox_fixtures import free_port_block

RAY_DEFAULT_WORKER_PORTS = range(10002, 20000)
EPHEMERAL_PORTS = range(32768, 61000)


def _ports_in_ray_argv(ports: sandbox.Ports) -> set[int]:
    """Every port `ray start` is told to use, worker range included."""
    argv = ray_head.start_argv(Path("ray"), ports.ray_gcs, ports.ray_dashboard)
    flags = dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--") and "-port=" in arg or
                 arg.startswith("--port="))
    workers = range(int(flags.pop("min-worker-port")), int(flags.pop("max-worker-port")) + 1)
    return {int(port) for port in flags.values()} | set(workers)


def test_block_is_every_port_the_sandbox_listens_on_and_nothing_beyond():
    ports = sandbox.Ports.from_base(sandbox.DEFAULT_BASE_PORT)
    block = ports.block()
    assert _ports_in_ray_argv(ports) <= set(block)
    assert {ports.apiserver, ports.s3, ports.mlflow, ports.serve} <= set(block)
    assert min(block) == sandbox.DEFAULT_BASE_PORT
    assert max(block) < sandbox.DEFAULT_BASE_PORT + sandbox.PORT_BLOCK_SIZE  # blocks side by side never overlap


def test_default_block_is_clear_of_rays_default_ranges():
    block = sandbox.Ports.from_base(sandbox.DEFAULT_BASE_PORT).block()
    for port in block:
        assert port not in RAY_DEFAULT_WORKER_PORTS and port not in EPHEMERAL_PORTS
        assert port not in (6379, 8265, 10001, 52365, 8000)


def _node_address() -> str:
    """A non-loopback IPv4 address of this machine: Ray's client server listens there, not on 127.0.0.1."""
    addresses = [a.address for entries in psutil.net_if_addrs().values() for a in entries
                 if a.family == socket.AF_INET and not a.address.startswith("127.")]
    if not addresses:
        pytest.skip("no non-loopback IPv4 address")
    return addresses[0]


@pytest.mark.parametrize("offset,address", [(0, "127.0.0.1"), (5, "0.0.0.0"), (16, "node"), (99, "127.0.0.1")])
def test_a_listener_on_any_port_of_the_block_is_refused_by_name(offset, address):
    base = free_port_block()
    squatter = socket.socket()
    squatter.bind((_node_address() if address == "node" else address, base + offset))
    squatter.listen()
    try:
        with pytest.raises(RuntimeError) as refused:
            sandbox.check_ports_free(sandbox.Ports.from_base(base))
    finally:
        squatter.close()
    message = str(refused.value)
    assert message.startswith(f"port {base + offset} (the sandbox's ")
    assert "--base-port" in message and message.count(". ") == 0  # one sentence


def test_a_free_block_passes():
    sandbox.check_ports_free(sandbox.Ports.from_base(free_port_block()))
