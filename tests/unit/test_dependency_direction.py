"""House rule 10: api depends on nothing of ours; the operator never imports torch/ray/transformers or
the workloads or the sandbox; workloads never import kopf or kubernetes."""

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

OPERATOR = REPO_ROOT / "operator" / "kubeforge"
WORKLOADS = REPO_ROOT / "workloads" / "kubeforge_workloads"
HEAVY = {"torch", "ray", "transformers", "peft", "mlflow", "sentence_transformers", "kubeforge_workloads"}


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(root: Path):
    return sorted(p for p in root.rglob("*.py"))


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", modules(OPERATOR / "api"), ids=lambda p: p.name)
def test_api_depends_on_nothing_of_ours(path):
    ours = {n for n in imports(path) if top(n) == "kubeforge" and not n.startswith("kubeforge.api")}
    assert not ours, f"{path} imports {ours}"


OPERATOR_CORE = [p for sub in ("api", "controllers", "resilience", "launch", "storage") for p in modules(OPERATOR / sub)]
OPERATOR_CORE += [OPERATOR / "main.py", OPERATOR / "settings.py", OPERATOR / "cluster.py"]


@pytest.mark.parametrize("path", OPERATOR_CORE, ids=lambda p: str(p.relative_to(OPERATOR)))
def test_operator_core_imports_no_ml_and_no_sandbox(path):
    bad = {n for n in imports(path) if top(n) in HEAVY or n.startswith("kubeforge.dev")}
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", modules(WORKLOADS), ids=lambda p: str(p.relative_to(WORKLOADS)))
def test_workloads_never_talk_to_kubernetes(path):
    bad = {n for n in imports(path) if top(n) in {"kopf", "kubernetes"} or
           (top(n) == "kubeforge" and not n.startswith(("kubeforge.api", "kubeforge.storage")))}
    assert not bad, f"{path} imports {bad}"
