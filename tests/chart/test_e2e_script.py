"""tests/e2e-kind/run.sh cannot run here (no kind, no container engine): check it statically."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "tests" / "e2e-kind" / "run.sh"


def test_bash_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("path", [SCRIPT, REPO_ROOT / "scripts" / "sync-chart-crds.sh"])
def test_shellcheck_clean(path):
    result = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_helm_set_keys_exist_in_values():
    values = yaml.safe_load((REPO_ROOT / "charts" / "kubeforge" / "values.yaml").read_text())
    keys = re.findall(r"--set ([A-Za-z0-9_.]+)=", SCRIPT.read_text())
    assert keys
    for key in keys:
        node = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"run.sh sets unknown value {key}"
            node = node[part]


def test_waits_for_the_quickstart_ready_condition():
    text = SCRIPT.read_text()
    assert "examples/quickstart.yaml" in text and (REPO_ROOT / "examples" / "quickstart.yaml").exists()
    assert "kubectl -n \"${WORK_NS}\" wait --for=condition=Ready finetune/quickstart" in text
    assert "helm upgrade --install kuberay-operator kuberay/kuberay-operator" in text
