"""scripts/build-images.sh cannot build here (no container engine): its --dry-run commands are checked against
the Dockerfile (targets, build arguments) and the chart (the tags its default values pull)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.test_dockerfile import DOCKERFILE, stages

helm = pytest.importorskip("helm_python")

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "build-images.sh"
CHART = REPO_ROOT / "charts" / "kubeforge"


def dry_run(*args: str, env: dict | None = None) -> tuple[list[list[str]], str]:
    result = subprocess.run([str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, check=True,
                            env=env)
    commands = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]
    return commands, result.stdout


def option(command: list[str], name: str) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == name]


def build_args(command: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in option(command, "--build-arg"))


def declared_args() -> set[str]:
    import dockerfile

    return {c.value[0].split("=", 1)[0] for c in dockerfile.parse_file(str(DOCKERFILE)) if c.cmd == "ARG"}


def chart_default_images() -> tuple[str, str]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values={}, name="kf", namespace="ns", is_install=True)
    text = rendered["kubeforge/templates/deployment.yaml"]
    deploy = yaml.safe_load(text)
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return container["image"], env["KUBEFORGE_WORKLOAD_IMAGE"]


def test_default_builds_are_the_images_the_chart_pulls_by_default():
    commands, _ = dry_run()
    tags = [option(c, "-t")[0] for c in commands]
    operator, workloads = chart_default_images()
    assert tags == [operator, workloads, workloads + "-cpu"]
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert all(tag.endswith(f":{app_version}") or tag.endswith(f":{app_version}-cpu") for tag in tags)


def test_each_build_names_a_dockerfile_target_and_only_declared_build_args():
    commands, _ = dry_run()
    targets = set(stages())
    ray_version = yaml.safe_load((CHART / "values.yaml").read_text())["settings"]["rayVersion"]
    for command in commands:
        assert command[:2] == ["docker", "build"] and command[-1] == str(REPO_ROOT)
        assert option(command, "--target")[0] in targets
        assert set(build_args(command)) <= declared_args(), command
        assert build_args(command)["RAY_VERSION"] == ray_version
    gpu, cpu = build_args(commands[1]), build_args(commands[2])
    assert (gpu["RAY_IMAGE"], gpu["WORKLOAD_EXTRAS"]) == (f"rayproject/ray:{ray_version}-py311-gpu", "workloads,gpu")
    assert (cpu["RAY_IMAGE"], cpu["WORKLOAD_EXTRAS"]) == (f"rayproject/ray:{ray_version}-py311-cpu", "workloads")


def test_registry_tag_and_push_and_the_helm_flags_that_match():
    commands, out = dry_run("--registry", "registry.example.com/ml/", "--tag", "1.2.3", "--push",
                            "--only", "operator,workloads-cpu")
    assert [c[:2] for c in commands] == [["docker", "build"]] * 2 + [["docker", "push"]] * 2
    assert [c[2] for c in commands[2:]] == ["registry.example.com/ml/kubeforge-operator:1.2.3",
                                            "registry.example.com/ml/kubeforge-workloads:1.2.3-cpu"]
    assert ("--set image.repository=registry.example.com/ml/kubeforge-operator --set image.tag=1.2.3 "
            "--set workloadImage.repository=registry.example.com/ml/kubeforge-workloads "
            "--set workloadImage.tag=1.2.3") in out


def test_the_engine_can_be_podman():
    commands, _ = dry_run("--only", "operator", env={"PATH": "/usr/bin:/bin", "CONTAINER_ENGINE": "podman"})
    assert commands[0][0] == "podman"


@pytest.mark.parametrize("args,message", [
    (["--bogus"], "unknown option '--bogus'"),
    (["--only", "operator,gpu"], "--only: unknown image 'gpu'"),
    (["--tag", "no/slash"], "--tag 'no/slash' is not a valid image tag"),
])
def test_bad_arguments_are_refused_with_one_line_naming_them(args, message):
    result = subprocess.run([str(SCRIPT), "--dry-run", *args], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip() == f"build-images.sh: {message}" + (
        " (see --help)" if args[0] == "--bogus" else " (operator, workloads, workloads-cpu)"
        if args[0] == "--only" else "")


def test_a_missing_engine_is_named():
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "CONTAINER_ENGINE": "no-such-engine"})
    assert result.returncode == 2
    assert result.stderr.strip() == ("build-images.sh: container engine 'no-such-engine' not found: install docker, "
                                     "or set CONTAINER_ENGINE (e.g. podman)")
