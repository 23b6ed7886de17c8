"""One locked ML stack: the test venv, the operator image and the CPU workload image install constraints-cpu.txt;
the GPU workload image installs constraints-gpu.txt, which differs from it only where vLLM pins otherwise, and
says so. Both are written by scripts/lock.py."""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO_ROOT

CPU_LOCK = REPO_ROOT / "constraints-cpu.txt"
GPU_LOCK = REPO_ROOT / "constraints-gpu.txt"
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
# The stack the issue names: these must be the same wherever the platform allows.
ML_STACK = ("torch", "transformers", "ray", "mlflow", "peft", "accelerate", "tokenizers", "sentence-transformers")


def read_lock(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def requirements(*extras: str) -> list[Requirement]:
    lines = PROJECT["dependencies"] + [line for extra in extras for line in PROJECT["optional-dependencies"][extra]]
    return [Requirement(line) for line in lines]


@pytest.mark.parametrize("lock,extras", [(CPU_LOCK, ("workloads", "dev")), (GPU_LOCK, ("workloads", "gpu"))],
                         ids=["cpu", "gpu"])
def test_lock_pins_every_declared_dependency_within_its_pyproject_range(lock, extras):
    pins = read_lock(lock)
    unlocked = [str(r) for r in requirements(*extras) if canonicalize_name(r.name) not in pins]
    assert not unlocked, f"{lock.name} does not pin {unlocked}: install them and run scripts/lock.py"
    outside = [f"{r} (locked {pins[canonicalize_name(r.name)]})" for r in requirements(*extras)
               if pins[canonicalize_name(r.name)] not in r.specifier]
    assert not outside, f"{lock.name} pins versions pyproject.toml refuses: {outside}; run scripts/lock.py"


def test_gpu_lock_differs_from_the_cpu_lock_only_where_it_says_vllm_requires_it():
    cpu, gpu = read_lock(CPU_LOCK), read_lock(GPU_LOCK)
    header = GPU_LOCK.read_text()
    stated = re.search(r"^# Versions that differ from constraints-cpu.txt as a result: (.*)\.$", header, re.M)
    assert stated, "constraints-gpu.txt must state which versions differ from constraints-cpu.txt"
    differing = sorted(name for name in gpu if name in cpu and gpu[name] != cpu[name])
    assert sorted(stated.group(1).split(", ")) == differing
    explained = set(re.findall(r"^#   ([a-z0-9-]+): ", header, re.M))
    assert set(differing) == explained, "each difference needs its reason (vLLM's requirement) in the header"
    assert "torch" in differing and "vllm" in gpu
    assert gpu["ray"] == cpu["ray"] and gpu["mlflow"] == cpu["mlflow"]


def test_the_test_venv_runs_the_cpu_lock():
    pins = read_lock(CPU_LOCK)
    declared = {canonicalize_name(r.name) for r in requirements("workloads", "dev")}
    drifted = {}
    for name in sorted(declared | set(ML_STACK)):
        installed = Version(metadata.version(name)).public
        if installed != pins[name]:
            drifted[name] = f"installed {installed}, locked {pins[name]}"
    assert not drifted, f"the venv is not the lock: {drifted} (scripts/setup.sh, or scripts/lock.py cpu)"


def test_setup_and_every_image_install_with_a_lock():
    assert "-c constraints-cpu.txt" in (REPO_ROOT / "scripts" / "setup.sh").read_text()
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "pip install . -c constraints-cpu.txt" in dockerfile  # the operator image
    assert "ARG CONSTRAINTS=constraints-gpu.txt" in dockerfile and '-c "${CONSTRAINTS}"' in dockerfile
    text = (REPO_ROOT / "scripts" / "build-images.sh").read_text()
    assert "CONSTRAINTS" in text and "constraints-cpu.txt" in text and "download.pytorch.org/whl/cpu" in text, \
        "build-images.sh: CPU workload images must install the CPU lock with CPU-only torch"
    # The kind e2e builds its CPU image with it (tests/chart/test_e2e_script.py checks the build it runs).
    assert "--only operator,workloads-cpu" in (REPO_ROOT / "tests" / "e2e-kind" / "run.sh").read_text()


def test_kind_mlflow_server_is_the_locked_client_version():
    run_sh = REPO_ROOT / "tests" / "e2e-kind" / "run.sh"
    assignments = "\n".join(line for line in run_sh.read_text().splitlines()
                            if line.startswith(("MLFLOW_VERSION=", "MLFLOW_IMAGE=")))
    image = subprocess.run(["bash", "-c", f'ROOT="{REPO_ROOT}"\n{assignments}\necho "$MLFLOW_IMAGE"'],
                           capture_output=True, text=True, check=True, env={}).stdout.strip()
    assert image == f"ghcr.io/mlflow/mlflow:v{read_lock(CPU_LOCK)['mlflow']}"
