"""pyproject.toml declares what the code imports, and nothing that nothing uses (deptry, configured in
`[tool.deptry]`). A package that only arrives as another one's dependency can vanish with that one's next
release; one that nothing imports makes every install and image larger for nothing."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

DEPTRY = Path(sys.executable).parent / "deptry"


def deptry(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DEPTRY), *arguments, "--no-ansi"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)


def issues(result: subprocess.CompletedProcess) -> str:
    return "\n".join(line for line in (result.stdout + result.stderr).splitlines() if ": DEP0" in line)


def test_product_code_imports_exactly_its_declared_dependencies():
    # Missing (DEP001), only transitive (DEP003), declared but unused (DEP002) and dev-extra packages
    # imported by the operator or the workloads (DEP004), which their images do not install.
    result = deptry("operator", "workloads")
    assert result.returncode == 0, issues(result) or result.stderr


def test_tests_and_benchmarks_import_only_declared_dependencies():
    # Tests may use anything the extras declare (so DEP004 does not apply) and need not use all of it.
    result = deptry("tests", "bench", "--exclude", r"(^|/)\.venv/", "-kf", "kubeforge", "-kf", "kubeforge_workloads",
                    "-kf", "tests", "--ignore", "DEP002,DEP004")
    assert result.returncode == 0, issues(result) or result.stderr
