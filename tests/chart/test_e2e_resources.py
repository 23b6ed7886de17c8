"""tests/e2e-kind/README.md states what the kind run's pods request. The numbers Kubeforge controls are computed
here from the code that sets them (the operator's RayJob for examples/quickstart.yaml, the chart's Deployment),
so the README cannot understate them again; the rest are other projects' defaults, cited below."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kubeforge.api import KINDS
from kubeforge.controllers.batch import workload_context
from kubeforge.launch.rayjob import build_rayjob
from kubeforge.settings import Settings

helm = pytest.importorskip("helm_python")

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "tests" / "e2e-kind" / "README.md"

# Requests of pods Kubeforge does not create, as their projects set them:
SUBMITTER = ("500m", "200Mi")  # KubeRay's GetDefaultSubmitterTemplate (submissionMode K8sJobMode)
KUBERAY_OPERATOR = ("100m", "512Mi")  # kuberay-operator chart: limits only, so the requests equal them
KIND_SYSTEM = ("950m", "290Mi")  # kind node: apiserver 250m, controller-manager 200m, scheduler 100m,
#                                  etcd 100m/100Mi, CoreDNS 2 x 100m/70Mi, kindnet 100m/50Mi


def cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(Mi|Gi)", quantity).groups()
    return float(number) * (1024 if unit == "Gi" else 1)


def quickstart_rayjob() -> dict:
    obj = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
    obj["metadata"].update(namespace="kubeforge-e2e", uid="0123456789abcdef", generation=1)
    info = next(i for i in KINDS if i.kind == obj["kind"])
    spec = info.spec_model.model_validate(obj["spec"])
    settings = Settings()  # the chart's defaults (tests/chart/test_chart.py checks they are Settings' defaults)
    return build_rayjob(obj, spec, workload_context(obj, spec, 1, settings), info.workload, settings)


def ray_container(template: dict) -> dict:
    return next(c for c in template["spec"]["containers"] if c["name"].startswith("ray-"))


def operator_requests() -> dict:
    with helm.Chart.load(REPO_ROOT / "charts" / "kubeforge") as chart:
        text = chart.render(values={}, name="kubeforge", namespace="kubeforge-system",
                            is_install=True)["kubeforge/templates/deployment.yaml"]
    (container,) = yaml.safe_load(text)["spec"]["template"]["spec"]["containers"]
    return container["resources"]["requests"]


def readme_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in README.read_text().splitlines():
        cells = [cell.strip().strip("*") for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 3 and re.fullmatch(r"[0-9.]+m?", cells[1]):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def test_readme_states_what_the_quickstart_run_requests():
    cluster = quickstart_rayjob()["spec"]["rayClusterSpec"]
    head = ray_container(cluster["headGroupSpec"]["template"])["resources"]["requests"]
    (group,) = cluster["workerGroupSpecs"]
    worker = ray_container(group["template"])["resources"]["requests"]
    operator = operator_requests()
    expected = {
        "Ray head": (head["cpu"], head["memory"]),
        f"Ray workers ({group['replicas']})": (str(cpus(worker["cpu"]) * group["replicas"]).removesuffix(".0"),
                                               f"{mebibytes(worker['memory']) * group['replicas'] / 1024:g}Gi"),
        "RayJob submitter": SUBMITTER,
        "Kubeforge operator": (operator["cpu"], operator["memory"]),
        "KubeRay operator": KUBERAY_OPERATOR,
        "kind system pods": KIND_SYSTEM,
    }
    total_cpus = sum(cpus(c) for c, _ in expected.values())
    total_memory = sum(mebibytes(m) for _, m in expected.values()) / 1024
    expected["total"] = (f"{total_cpus:g}", f"{total_memory:.1f}Gi")
    assert readme_rows() == expected
