"""tests/e2e-kind/README.md states what the kind run's pods request and the machine that needs. The numbers
Kubeforge controls are computed here from the code that sets them: the chart rendered with run.sh's own `--set`
values, the Settings its Deployment gives the operator, and the RayJobs/RayServices the operator builds for the
examples each stage of run.sh applies. The rest are other projects' defaults, cited below."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kubeforge.api import KINDS
from kubeforge.controllers import serving
from kubeforge.controllers.registry import BATCH_KINDS
from kubeforge.launch.rayjob import build_ray_cluster_spec
from kubeforge.launch.rayservice import _serving_cluster
from kubeforge.settings import Settings
from tests.chart.test_e2e_script import SCRIPT, kubeforge_objects, stages

helm = pytest.importorskip("helm_python")

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "tests" / "e2e-kind" / "README.md"

# Requests of pods Kubeforge does not create, as their projects set them:
SUBMITTER = ("500m", "200Mi")  # KubeRay's GetDefaultSubmitterTemplate (submissionMode K8sJobMode)
AUTOSCALER = ("500m", "512Mi")  # KubeRay's default autoscaler sidecar (RayServices with enableInTreeAutoscaling)
KUBERAY_OPERATOR = ("100m", "512Mi")  # kuberay-operator chart: limits only, so the requests equal them
KIND_SYSTEM = ("950m", "290Mi")  # kind node: apiserver 250m, controller-manager 200m, scheduler 100m,
#                                  etcd 100m/100Mi, CoreDNS 2 x 100m/70Mi, kindnet 100m/50Mi


def cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def gibibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(Mi|Gi)", quantity).groups()
    return float(number) / (1024 if unit == "Mi" else 1)


def script_values() -> dict:
    """The chart values run.sh sets with literal `--set key=value` (the image names are variables)."""
    values: dict = {}
    for key, raw in re.findall(r"--set ([A-Za-z0-9_.]+)=([^\s$\"\\]+)(?=\s)", SCRIPT.read_text()):
        value = int(raw) if raw.isdigit() else raw
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return values


@pytest.fixture(scope="module")
def rendered() -> dict:
    with helm.Chart.load(REPO_ROOT / "charts" / "kubeforge") as chart:
        text = chart.render(values=script_values(), name="kubeforge", namespace="kubeforge-system",
                            is_install=True)["kubeforge/templates/deployment.yaml"]
    (container,) = yaml.safe_load(text)["spec"]["template"]["spec"]["containers"]
    return container


@pytest.fixture(scope="module")
def settings(rendered) -> Settings:
    """The operator's Settings in the kind run: from its Deployment's environment, nothing else."""
    import os

    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("KUBEFORGE_")]:
            patch.delenv(name)
        for item in rendered["env"]:
            if "value" in item:
                patch.setenv(item["name"], item["value"])
        return Settings()


def requests(container: dict) -> tuple[float, float]:
    req = container["resources"]["requests"]
    return cpus(req["cpu"]), gibibytes(req["memory"])


def ray_pods(obj: dict, settings: Settings) -> tuple[float, float]:
    """CPU and GiB the Ray pods of one resource request: its cluster's head and workers (a ServingEndpoint at
    its most replicas), plus KubeRay's submitter for a RayJob or its autoscaler for an autoscaled RayService."""
    info = next(i for i in KINDS if i.kind == obj["kind"])
    spec = info.spec_model.model_validate(obj["spec"])
    if info.shape == "RayService":
        cluster = _serving_cluster(spec, settings)
        extra = [AUTOSCALER] if cluster.get("enableInTreeAutoscaling") else []
    else:
        cluster = build_ray_cluster_spec(spec, settings)
        extra = [SUBMITTER]
    pods = [(requests(next(c for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]
                           if c["name"] == "ray-head")), 1)]
    for group in cluster["workerGroupSpecs"]:
        worker = next(c for c in group["template"]["spec"]["containers"] if c["name"] == "ray-worker")
        pods.append((requests(worker), group.get("replicas", group["maxReplicas"])))
    pods += [((cpus(c), gibibytes(m)), 1) for c, m in extra]
    return sum(c * n for (c, _), n in pods), sum(m * n for (_, m), n in pods)


def dependencies(obj: dict) -> list[tuple[str, str]]:
    spec = next(i for i in KINDS if i.kind == obj["kind"]).spec_model.model_validate(obj["spec"])
    if obj["kind"] == "ServingEndpoint":
        return serving.dependencies(spec)
    return BATCH_KINDS[obj["kind"]].dependencies(spec)


def steps(objects: list[dict]) -> list[list[dict]]:
    """What runs at once within a stage: a resource starts when its dependencies are Ready, a RayJob's cluster
    goes when its job ends (rayjobTtlSeconds=0), a RayService's stays. Step n: the RayJobs n dependencies deep
    and every RayService up to that depth."""
    by_key = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    depth: dict[tuple[str, str], int] = {}

    def level(key):
        if key not in depth:
            depth[key] = 1 + max((level(d) for d in dependencies(by_key[key]) if d in by_key), default=-1)
        return depth[key]

    for key in by_key:
        level(key)
    long_running = {i.kind for i in KINDS if i.shape == "RayService"}
    return [[by_key[k] for k in by_key if depth[k] == n or (depth[k] < n and k[0] in long_running)]
            for n in range(max(depth.values()) + 1)]


def cells(cpu: float, memory: float) -> tuple[str, str]:
    return f"{cpu:g}", f"{memory:.1f}Gi".replace(".0Gi", "Gi")


def expected_rows(settings: Settings, rendered: dict) -> tuple[dict, tuple[float, float]]:
    rows = {
        "Ray head (every Ray cluster)": (str(settings.ray_head_cpus).removesuffix(".0"), settings.ray_head_memory),
        "RayJob submitter (every RayJob)": SUBMITTER,
    }
    stage_peak = (0.0, 0.0)
    for name, paths in stages():
        for step in steps(kubeforge_objects(paths)):
            totals = [ray_pods(obj, settings) for obj in step]
            cpu, memory = sum(c for c, _ in totals), sum(m for _, m in totals)
            label = f"{name}: " + " + ".join(f"{o['kind']} {o['metadata']['name']}" for o in step)
            rows[label] = cells(cpu, memory)
            stage_peak = (max(stage_peak[0], cpu), max(stage_peak[1], memory))
    operator = rendered["resources"]["requests"]
    fixed = {"Kubeforge operator": (operator["cpu"], operator["memory"]), "KubeRay operator": KUBERAY_OPERATOR,
             "kind system pods": KIND_SYSTEM}
    rows.update(fixed)
    peak = (stage_peak[0] + sum(cpus(c) for c, _ in fixed.values()),
            stage_peak[1] + sum(gibibytes(m) for _, m in fixed.values()))
    rows["peak: largest step + operators + kind"] = cells(*peak)
    return rows, peak


def readme_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in README.read_text().splitlines():
        cells_ = [cell.strip().strip("*").strip("`") for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells_) >= 3 and re.fullmatch(r"[0-9.]+m?", cells_[1]):
            rows[cells_[0]] = (cells_[1], cells_[2])
    return rows


def test_the_script_lowers_the_head_and_frees_finished_clusters(settings):
    # What the per-stage accounting below relies on.
    assert settings.rayjob_ttl_seconds == 0
    assert (settings.ray_head_cpus, settings.ray_head_memory) == (1, "4Gi")


def test_readme_states_what_each_stage_requests(settings, rendered):
    rows, _ = expected_rows(settings, rendered)
    assert readme_rows() == rows


def test_the_documented_machine_fits_the_largest_stage(settings, rendered):
    _, (peak_cpus, peak_memory) = expected_rows(settings, rendered)
    match = re.search(r"at least \*\*([0-9]+) CPUs and ([0-9]+) GiB of memory\*\*", README.read_text())
    assert match, "README.md no longer states the machine as 'at least **N CPUs and M GiB of memory**'"
    machine_cpus, machine_memory = map(int, match.groups())
    # MinIO, MLflow and the node's own processes request nothing but use some: leave them room.
    assert machine_cpus >= peak_cpus + 0.5 and machine_memory >= peak_memory + 2, (peak_cpus, peak_memory)
