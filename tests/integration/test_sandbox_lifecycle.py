"""`kubeforge dev up` / `down` as a user runs them: `down` leaves nothing alive, and `up` refuses a port block
that something else already listens on before it starts anything."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from kubeforge.dev import sandbox as sandbox_mod
from tests.integration.sandbox_fixtures import free_port_block, sandbox_processes


def _kubeforge_dev(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBEFORGE_RECONCILE_PERIOD_SECONDS": "1"}
    return subprocess.run([sys.executable, "-m", "kubeforge", "dev", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_down_leaves_no_sandbox_process_alive(tmp_path):
    state_dir = tmp_path / "dev"
    base = free_port_block()
    try:
        up = _kubeforge_dev("up", "--state-dir", str(state_dir), "--base-port", str(base), "--no-seed", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        state = sandbox_mod.SandboxState.load(state_dir)
        assert sandbox_processes(state), "the check finds nothing even while the sandbox runs"
    finally:
        down = _kubeforge_dev("down", "--state-dir", str(state_dir), timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    leftovers = sandbox_processes(sandbox_mod.SandboxState.load(state_dir))
    assert not leftovers, f"alive after `kubeforge dev down`: {leftovers}"


@pytest.mark.parametrize("offset", [0, 16])  # the API emulator's port; the Ray client server's
def test_up_refuses_a_busy_port_before_starting_anything(tmp_path, offset):
    state_dir = tmp_path / "dev"
    base = free_port_block()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", base + offset))
    squatter.listen()
    try:
        began = time.monotonic()
        up = _kubeforge_dev("up", "--state-dir", str(state_dir), "--base-port", str(base), "--no-seed", timeout=300)
        took = time.monotonic() - began
    finally:
        squatter.close()
        if sandbox_mod.SandboxState.load(state_dir):  # only when the refusal is broken
            sandbox_mod.down(state_dir)
    assert up.returncode != 0
    error = up.stderr.strip().splitlines()[-1]
    assert f"port {base + offset} " in error and "--base-port" in error, up.stderr
    assert took < 15, f"refusal took {took:.0f}s"
    assert sandbox_mod.SandboxState.load(state_dir) is None, "state was written though nothing may start"
