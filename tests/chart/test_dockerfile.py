"""The Dockerfile cannot be built here (no container engine): parse it and check the targets' shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubeforge.settings import Settings

dockerfile = pytest.importorskip("dockerfile", reason="`dockerfile` (BuildKit's parser) is not installed")

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"


def stages() -> dict[str, list]:
    """Commands per stage name (BuildKit's own parser)."""
    result: dict[str, list] = {}
    current = None
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            value = command.value
            assert len(value) == 3 and value[1].upper() == "AS", f"unnamed stage: {command.original}"
            current = value[2]
            result[current] = [command]
        elif current is not None:
            result[current].append(command)
    return result


def args() -> dict[str, str]:
    out = {}
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            break
        if command.cmd == "ARG" and "=" in command.value[0]:
            key, value = command.value[0].split("=", 1)
            out[key] = value
    return out


def runs(commands) -> str:
    return "\n".join(" ".join(c.value) for c in commands if c.cmd == "RUN")


def last(commands, cmd: str):
    found = [c for c in commands if c.cmd == cmd]
    assert found, f"no {cmd}"
    return found[-1]


def test_targets():
    assert list(stages()) == ["build", "operator", "workloads"]


def test_base_images():
    a, s = args(), stages()
    assert a["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert s["build"][0].value[0] == s["operator"][0].value[0] == "${PYTHON_IMAGE}"
    assert s["workloads"][0].value[0] == "${RAY_IMAGE}"
    assert a["RAY_IMAGE"] == "rayproject/ray:${RAY_VERSION}-py311-gpu"


def test_ray_version_matches_settings_and_chart():
    values = yaml.safe_load((REPO_ROOT / "charts" / "kubeforge" / "values.yaml").read_text())
    assert args()["RAY_VERSION"] == Settings().ray_version == values["settings"]["rayVersion"]


def test_operator_target_has_no_ml_stack_and_runs_as_non_root():
    s = stages()
    install = runs(s["build"])
    assert "pip install ." in install and "workloads" not in install and "gpu" not in install
    operator = s["operator"]
    assert any(c.cmd == "COPY" and "--from=build" in c.flags for c in operator)
    user = last(operator, "USER").value[0]
    assert user.split(":")[0] not in ("root", "0") and user.split(":")[0].isdigit()
    entrypoint, cmd = last(operator, "ENTRYPOINT"), last(operator, "CMD")
    assert entrypoint.json and cmd.json
    assert list(entrypoint.value) + list(cmd.value) == ["kubeforge", "operator"]


def test_operator_uid_matches_chart_security_context():
    values = yaml.safe_load((REPO_ROOT / "charts" / "kubeforge" / "values.yaml").read_text())
    user = last(stages()["operator"], "USER").value[0]
    assert user == f"{values['podSecurityContext']['runAsUser']}:{values['podSecurityContext']['runAsGroup']}"


def test_workloads_target_installs_workloads_and_gpu_extras():
    s = stages()["workloads"]
    install = runs(s)
    assert '".[${WORKLOAD_EXTRAS}]"' in install
    extras = [c.value[0] for c in s if c.cmd == "ARG" and c.value[0].startswith("WORKLOAD_EXTRAS=")]
    assert extras == ["WORKLOAD_EXTRAS=workloads,gpu"]
    assert "ray[default,train,serve,data]==${RAY_VERSION}" in install
    assert last(s, "USER").value[0] == "1000:100"  # numeric: runAsNonRoot is verifiable (Ray pods' default)


def test_sources_copied_are_what_pyproject_packages():
    text = (REPO_ROOT / "pyproject.toml").read_text()
    assert 'where = ["operator", "workloads"]' in text and 'readme = "README.md"' in text
    for stage in ("build", "workloads"):
        copied = {p for c in stages()[stage] if c.cmd == "COPY" and not any("--from" in f for f in c.flags)
                  for p in c.value[:-1]}
        assert {"pyproject.toml", "README.md", "operator/", "workloads/"} <= copied, stage


def test_dockerignore_keeps_the_build_context_small_but_complete():
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "tests"} <= ignored
    assert not {"operator", "workloads", "pyproject.toml", "README.md"} & ignored
