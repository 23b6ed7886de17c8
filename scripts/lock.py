"""Write the version locks that scripts/setup.sh and the Dockerfile install with.

  .venv/bin/python scripts/lock.py cpu   constraints-cpu.txt: the versions installed in this venv (what the
                                         tests ran) of kubeforge[workloads,dev] and all it pulls in. Used by
                                         setup.sh, the operator image and the CPU workload image.
  .venv/bin/python scripts/lock.py gpu   constraints-gpu.txt: `.[workloads,gpu]` resolved by pip (a dry run
                                         against PyPI, nothing installed) under the CPU lock, less the pins
                                         vLLM requires otherwise (it pins its own torch and caps transformers).

Run `cpu` after changing dependencies in pyproject.toml and installing them, then `gpu`.
tests/unit/test_locks.py checks the locks against pyproject.toml and this venv.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CPU_LOCK = ROOT / "constraints-cpu.txt"
GPU_LOCK = ROOT / "constraints-gpu.txt"
PROJECT = "kubeforge"
CPU_EXTRAS = ("workloads", "dev")
GPU_EXTRAS = "workloads,gpu"
RAY_EXTRAS = "default,train,serve,data"
# vLLM 0.34.0 requires flashinfer-python==0.7.3, which the package index does not offer (0.7.2.post1, 0.7.4).
VLLM = "vllm==0.33.0"


def public(version: str) -> str:
    # The tests' torch is 2.13.0+cpu (a local build); the pin must also match PyPI's and PyTorch's CPU index's.
    return Version(version).public


def project_requirements(extras: tuple[str, ...]) -> list[str]:
    # From pyproject.toml, not the installed metadata: an editable install's metadata is as old as the install.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + [line for extra in extras for line in project["optional-dependencies"][extra]]


def installed_closure() -> dict[str, str]:
    """Canonical name -> installed version, for the project's requirements with CPU_EXTRAS, transitively."""
    pinned: dict[str, str] = {}
    pending = [(PROJECT, frozenset())]
    seen: set[tuple[str, frozenset]] = set()
    while pending:
        name, extras = pending.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        if name == PROJECT:
            requires = project_requirements((*CPU_EXTRAS, "gpu"))
        else:
            distribution = metadata.distribution(name)
            pinned[canonicalize_name(name)] = public(distribution.version)
            requires = distribution.requires or []
        for line in requires:
            requirement = Requirement(line)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
                continue
            try:
                metadata.distribution(requirement.name)
            except metadata.PackageNotFoundError:
                if canonicalize_name(requirement.name) in {"vllm", "bitsandbytes"}:
                    continue  # the gpu extra: not installable without a GPU
                raise SystemExit(f"{requirement.name} (required by {name}) is not installed: run scripts/setup.sh")
            pending.append((requirement.name, frozenset(requirement.extras)))
    return dict(sorted(pinned.items()))


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def write_lock(path: Path, header: str, pins: dict[str, str]) -> None:
    path.write_text(header + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    print(f"wrote {path.relative_to(ROOT)}: {len(pins)} pins")


def lock_cpu() -> None:
    write_lock(CPU_LOCK, f"""\
# The one resolved set of versions the tests run, installed by scripts/setup.sh, the operator image and the CPU
# workload image (Dockerfile). Generated from the test venv by `scripts/lock.py cpu`; do not edit by hand.
# torch 2.13.0 is the CPU build here (a wheel on this machine's disk; any other torch downloads CUDA builds of
# several GB) and in the CPU image (PyTorch's CPU index). The GPU image uses constraints-gpu.txt.
# Python {sys.version_info.major}.{sys.version_info.minor}.
""", installed_closure())


class ConstraintConflict(Exception):
    def __init__(self, names: set[str]) -> None:
        super().__init__(names)
        self.names = names


def pip_report(requirements: list[str], constraints: dict[str, str], no_deps: bool = False) -> list[dict]:
    """What pip would install (nothing is installed); ConstraintConflict names the pins that made it impossible."""
    with tempfile.TemporaryDirectory() as work:
        constraint_file = Path(work) / "constraints.txt"
        constraint_file.write_text("".join(f"{n}=={v}\n" for n, v in constraints.items()))
        report = Path(work) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                   "--report", str(report), "-c", str(constraint_file), *(["--no-deps"] if no_deps else []),
                   *requirements]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if result.returncode:
            pinned = {canonicalize_name(name) for name in
                      re.findall(r"The user requested \(constraint\) ([A-Za-z0-9_.-]+)==", result.stdout + result.stderr)}
            if pinned:
                raise ConstraintConflict(pinned)
            raise SystemExit("\n".join(line for line in (result.stdout + result.stderr).splitlines()
                                        if "is ignored" not in line)[-4000:])
        return json.loads(report.read_text())["install"]


def previous_reasons() -> dict[str, str]:
    """name -> why, from the current GPU lock's header: the pins it took against the CPU lock."""
    if not GPU_LOCK.exists():
        return {}
    return {canonicalize_name(name): why for name, why in
            re.findall(r"^#   ([A-Za-z0-9_.-]+): (.+?) \(CPU lock: ", GPU_LOCK.read_text(), re.MULTILINE)}


def lock_gpu() -> None:
    cpu = read_lock(CPU_LOCK)
    [vllm] = pip_report([VLLM], {}, no_deps=True)
    vllm_version = vllm["metadata"]["version"]
    overridden = {}
    for line in vllm["metadata"].get("requires_dist", []):
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        if name in cpu and cpu[name] not in requirement.specifier:
            overridden[name] = f"vLLM requires {requirement.specifier}"
    constraints = {name: version for name, version in cpu.items() if name not in overridden}
    # Like pip-compile, keep what the current GPU lock resolved where the CPU lock does not decide (CUDA wheels)
    # or was overridden last time, with the reason it gave: left free, pip backtracks through every CUDA wheel
    # release and gives up (resolution-too-deep). A kept pin that no longer fits is dropped by the loop below.
    previous, reasons = read_lock(GPU_LOCK), previous_reasons()
    for name, version in previous.items():
        if name not in cpu or (name in reasons and cpu[name] != version):
            constraints[name] = version
            if name in reasons:
                overridden.setdefault(name, reasons[name])
    constraints["vllm"] = vllm_version
    while True:
        try:
            installs = pip_report([f".[{GPU_EXTRAS}]", f"ray[{RAY_EXTRAS}]=={cpu['ray']}"], constraints)
            break
        except ConstraintConflict as conflict:
            for name in conflict.names:
                if name == "vllm" or name not in constraints:
                    raise SystemExit(f"cannot resolve the GPU stack around {VLLM}: {conflict.names}") from None
                print(f"{name}=={constraints.pop(name)} conflicts with {VLLM}'s requirements: left to pip")
                overridden[name] = "vLLM's own dependencies need another version"
    pins = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in installs
            if canonicalize_name(item["metadata"]["name"]) != PROJECT}
    differing = sorted(name for name in pins if name in cpu and pins[name] != cpu[name])
    notes = "".join(f"#   {name}: {why} (CPU lock: {cpu[name]}, here: {pins.get(name, 'not installed')})\n"
                    for name, why in sorted(overridden.items()))
    write_lock(GPU_LOCK, f"""\
# The GPU workload image's versions (Dockerfile, CONSTRAINTS=constraints-gpu.txt): `.[{GPU_EXTRAS}]` resolved
# under constraints-cpu.txt by `scripts/lock.py gpu`; do not edit by hand. vLLM {vllm_version} pins its own torch,
# so this stack cannot be the tests' one. vLLM's requirements that the CPU lock does not meet:
{notes}# Versions that differ from constraints-cpu.txt as a result: {", ".join(differing) or "none"}.
""", pins)


if __name__ == "__main__":
    targets = sys.argv[1:] or ["cpu", "gpu"]
    for target in targets:
        {"cpu": lock_cpu, "gpu": lock_gpu}[target]()
