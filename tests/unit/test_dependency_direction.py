"""The project's dependency rules: api depends on nothing of ours; reconcile modules do no I/O (no kopf,
kubernetes or boto3); the operator never imports torch/ray/transformers, the workloads or the sandbox;
workloads never import kopf or kubernetes.

The rules are import-linter contracts in pyproject.toml (`[tool.importlinter]`); they see every import
statement, including those inside functions. What they cannot see, imports by name at run time (the
lazily loaded `kubeforge dev` group), is checked by running the operator's command path."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_import_contracts_hold():
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


# Runs `kubeforge operator` as the container does, up to the point where kopf would connect.
OPERATOR_COMMAND_PATH = """
import json, sys
import kopf

async def operator_returns_at_once(**_):
    return None

kopf.operator = operator_returns_at_once
from kubeforge.cli import main
main(["operator"], standalone_mode=False)
print(json.dumps(sorted(sys.modules)))
"""
NOT_IN_THE_OPERATOR = ("kubeforge.dev", "kubeforge_workloads", "torch", "ray", "transformers", "peft", "mlflow",
                       "sentence_transformers")


def test_operator_command_loads_no_sandbox_and_no_ml_stack():
    result = subprocess.run([sys.executable, "-c", OPERATOR_COMMAND_PATH], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "kubeforge.controllers.wiring" in loaded, "the operator's handlers were not registered"
    unwanted = [name for name in loaded if name.startswith(tuple(f"{top}." for top in NOT_IN_THE_OPERATOR))
                or name in NOT_IN_THE_OPERATOR]
    assert not unwanted, f"`kubeforge operator` loads {unwanted}"


def test_dev_group_still_loads_on_use():
    help_text = subprocess.run([sys.executable, "-m", "kubeforge", "--help"], capture_output=True, text=True,
                               timeout=120, check=True).stdout
    assert "dev " in help_text and "operator " in help_text
    dev_help = subprocess.run([sys.executable, "-m", "kubeforge", "dev", "--help"], capture_output=True, text=True,
                              timeout=120, check=True).stdout
    assert " up " in dev_help and " down " in dev_help
