"""Argo CD health checks of every kind (charts/kubeforge/files/argocd/health/<Kind>.lua), run in a real Lua
interpreter (lupa, Lua 5.1 like Argo CD's gopher-lua, with only the libraries Argo CD opens: base, table,
package, os) against statuses the real reconcile functions write in every phase; and the argocd-cm patch that
installs them, generated from the same files and applied with the real kubectl."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
from pathlib import Path

import lupa.lua51
import pytest
import yaml

from kubeforge.api.kinds import KINDS
from kubeforge.api.meta import GROUP
from tests.unit.status_samples import all_samples

REPO = Path(__file__).resolve().parents[2]
HEALTH_DIR = REPO / "charts" / "kubeforge" / "files" / "argocd" / "health"
PATCH = REPO / "docs" / "gitops" / "argocd-cm-health-patch.yaml"
ARGO_HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing"}
SAMPLES = all_samples()

_spec = importlib.util.spec_from_file_location("generate_argocd_health", REPO / "scripts" / "generate-argocd-health.py")
generator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generator)


def argo_health(script: str, obj: dict) -> dict:
    """What Argo CD computes: `obj` as a global table, the script's returned `hs` (status, message)."""
    lua = lupa.lua51.LuaRuntime(register_eval=False, register_builtins=False)
    # Argo CD's VM opens only base, table, package and a safe os (util/lua/lua.go, runLuaWithResourceActionParameters):
    # no string library, and so no string methods either.
    lua.execute("debug.setmetatable('', nil); string, math, io, debug, coroutine = nil, nil, nil, nil, nil")
    lua.globals().obj = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
    hs = lua.execute(script)
    return {"status": hs["status"], "message": hs["message"]}


def script_of(kind: str) -> str:
    return (HEALTH_DIR / f"{kind}.lua").read_text()


@pytest.mark.parametrize("sample", SAMPLES, ids=[f"{s.kind}:{s.case}" for s in SAMPLES])
def test_each_phase_of_each_kind_has_the_health_argo_cd_needs(sample):
    hs = argo_health(script_of(sample.kind), sample.obj)
    assert hs["status"] in ARGO_HEALTH
    assert hs["status"] == sample.argo, (sample.kind, sample.case, hs)
    assert sample.message in hs["message"]
    if sample.argo in ("Degraded", "Suspended"):  # the user has to act, or wait for a queue: say on what
        assert hs["message"] == sample.obj["status"]["message"]


def test_every_phase_the_mapping_names_is_sampled_for_every_kind():
    cases = {(s.kind, s.case) for s in SAMPLES}
    for kind in (info.kind for info in KINDS):
        for needed in ("no status", "Waiting/WaitingForDependency", "Waiting/DependencyFailed", "Failed/InvalidSpec",
                       "stale observedGeneration"):
            assert (kind, needed) in cases
    assert {s.argo for s in SAMPLES} == {"Healthy", "Progressing", "Degraded", "Suspended"}
    assert ("EvalRun", "Failed/GateFailed") in cases


def test_a_failed_gate_is_degraded_with_the_gate_message_and_a_passed_gate_healthy():
    gate = next(s for s in SAMPLES if s.case == "Failed/GateFailed")
    passed = next(s for s in SAMPLES if s.kind == "EvalRun" and s.case.startswith("Succeeded"))
    assert argo_health(script_of("EvalRun"), gate.obj) == {
        "status": "Degraded", "message": "gate failed: retrieval/docs/ndcg@5 0.2 (needs >= 0.5)"}
    assert argo_health(script_of("EvalRun"), passed.obj)["status"] == "Healthy"


def test_a_failed_phase_is_degraded_even_without_a_stalled_condition():
    """Phase Failed alone (a status an older operator wrote, or one edited by hand) is not mistaken for progress."""
    for sample in SAMPLES:
        if sample.obj.get("status", {}).get("phase") == "Failed":
            obj = copy.deepcopy(sample.obj)
            obj["status"]["conditions"] = [c for c in obj["status"]["conditions"] if c["type"] != "Stalled"]
            assert argo_health(script_of(sample.kind), obj) == {"status": "Degraded",
                                                                 "message": obj["status"]["message"]}, sample.case


def test_the_scripts_are_the_rendered_template_for_every_kind_and_nothing_else():
    rendered = generator.render_scripts()
    assert sorted(p.name for p in rendered) == sorted(f"{info.kind}.lua" for info in KINDS)
    assert sorted(HEALTH_DIR.glob("*.lua")) == sorted(rendered), "run scripts/generate-argocd-health.py"
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path.name} differs from the template: run scripts/generate-argocd-health.py"


def test_the_argocd_cm_patch_is_generated_from_the_scripts():
    assert PATCH.read_text() == generator.render_patch(generator.render_scripts()), \
        "docs/gitops/argocd-cm-health-patch.yaml is stale: run scripts/generate-argocd-health.py"


def test_the_patch_applied_by_kubectl_installs_one_health_key_per_kind(tmp_path):
    argocd_cm = tmp_path / "argocd-cm.yaml"
    argocd_cm.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                         "metadata": {"name": "argocd-cm", "namespace": "argocd"},
                                         "data": {"url": "https://argocd.example"}}))
    patched = subprocess.run(["kubectl", "patch", "--local", "-f", str(argocd_cm), "--type", "strategic",
                              "--patch-file", str(PATCH), "-o", "json"],
                             capture_output=True, text=True, timeout=60, check=True)
    data = json.loads(patched.stdout)["data"]
    assert data.pop("url") == "https://argocd.example"  # a patch, not a replacement of Argo CD's settings
    assert data == {f"resource.customizations.health.{GROUP}_{info.kind}": script_of(info.kind) for info in KINDS}
