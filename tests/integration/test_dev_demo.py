"""`kubeforge dev demo` as scripts/demo.sh runs it, in the sandbox: it shows each applied resource's phase and
progress while it trains, ends when every one is final, and exits non-zero naming the one that Failed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_demo_shows_progress_and_exits_non_zero_for_a_failed_resource(sandbox, tmp_path):
    trains = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
    trains["metadata"]["name"] = "demo-trains"
    trains["spec"]["training"].update(maxSteps=12, checkpointEverySteps=6)
    fails = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
    fails["metadata"]["name"] = "demo-fails"
    fails["spec"]["baseModel"]["uri"] = "s3://kubeforge/seed/models/no-such-model"
    fails["spec"]["failurePolicy"]["maxRestarts"] = 0
    manifest = tmp_path / "demo.yaml"
    manifest.write_text(yaml.safe_dump_all([trains, fails]))

    demo = subprocess.run([sys.executable, "-m", "kubeforge", "dev", "demo", "--state-dir", sandbox.state.state_dir,
                           "-f", str(manifest), "--timeout", "600"], capture_output=True, text=True,
                          env={**os.environ, **sandbox.state.client_env()}, timeout=700)
    shown = demo.stdout + demo.stderr
    assert "you may only specify a single resource type" not in shown
    rows = [line.split() for line in demo.stdout.splitlines() if "FineTune/demo-" in line and line.split()[0][-1:] == "s"]
    trained = [r for r in rows if r[1] == "FineTune/demo-trains"]
    assert any(r[2] == "Running" and "/12" in r[3] for r in trained), shown  # progress while it trains
    assert trained[-1][2:4] == ["Succeeded", "12/12"], shown
    assert [r for r in rows if r[1] == "FineTune/demo-fails"][-1][2] == "Failed", shown
    assert demo.returncode != 0, shown
    assert "FineTune/demo-fails failed" in demo.stderr.strip().splitlines()[-1], shown
    assert "demo-trains" not in demo.stderr.strip().splitlines()[-1], shown
