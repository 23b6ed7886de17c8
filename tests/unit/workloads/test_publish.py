"""Publishing is idempotent: every attempt of one resource generation ends with exactly one registered version per
model, whichever attempt registered it; a new generation or a re-created resource gets new versions.

Real MLflow (sqlite store, local artifacts), real S3 protocol (moto), a real tiny Llama with a LoRA adapter."""

from __future__ import annotations

import sqlite3
import threading
import types
from pathlib import Path

import pytest
import yaml

mlflow = pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from kubeforge.api.finetune import FineTuneSpec  # noqa: E402
from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext  # noqa: E402
from kubeforge_workloads.common import tracking  # noqa: E402
from kubeforge_workloads.common.storage import WorkloadStorage  # noqa: E402
from kubeforge_workloads.finetune import publish as publish_module  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402
from tests.unit.workloads.conftest import BUCKET  # noqa: E402

MODEL = "docs-assistant"
MERGED = f"{MODEL}-merged"
STEPS = 7


class Killed(BaseException):
    """Stands for SIGKILL at a chosen point of publishing: nothing after it runs."""


def spec(merge: bool = True) -> FineTuneSpec:
    raw = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())["spec"]
    raw["output"] = {"registeredModelName": MODEL, "merge": merge}
    return FineTuneSpec.model_validate(raw)


def context(tracking_uri: str, attempt: int, generation: int = 1, uid: str = "uid-1") -> WorkloadContext:
    return WorkloadContext(kind="FineTune", namespace="ns", name="docs", uid=uid, generation=generation,
                           attempt=attempt, spec={}, storage=StorageContext(bucket=BUCKET, prefix="ns/FineTune/docs"),
                           mlflow=MlflowContext(experiment="ns/FineTune", run_name="docs", tracking_uri=tracking_uri))


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    from kubeforge_workloads.seed.build import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("base") / "tiny-llama")


@pytest.fixture
def tracking_uri(tracking_uri, tmp_path):
    """The shared fresh store, with the resource's experiment keeping artifacts locally."""
    MlflowClient().create_experiment("ns/FineTune", artifact_location=(tmp_path / "artifacts").as_uri())
    return tracking_uri


def attempt(ctx: WorkloadContext, the_spec: FineTuneSpec, storage: WorkloadStorage, base_model: Path, tmp: Path,
            eval_after: float = 1.5) -> dict:
    """What train.py does around publish for rank 0, with a freshly built adapter (merge_and_unload consumes it)."""
    from transformers import AutoTokenizer

    from kubeforge_workloads.finetune.model import build_model

    run_id = tracking.start_run(ctx, {}, (storage.get_json("mlflow_run.json") or {}).get("runId"))
    storage.put_json({"runId": run_id}, "mlflow_run.json")
    trainer = types.SimpleNamespace(model=build_model(the_spec, base_model),
                                    state=types.SimpleNamespace(global_step=STEPS))
    cache = tmp / f"attempt-{ctx.uid}-{ctx.generation}-{ctx.attempt}"
    try:
        result = publish_module.publish(ctx, the_spec, storage, trainer, AutoTokenizer.from_pretrained(base_model),
                                        cache, run_id, {"evalLoss": 2.0}, eval_after)
    finally:
        mlflow.end_run()
    storage.put_json(result, "result.json")
    return result


def versions(name: str) -> list:
    return sorted(MlflowClient().search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def kill_after_the_adapter_is_registered(monkeypatch):
    def killed(model, tokenizer):  # the next thing publish does once the adapter version exists
        raise Killed()
    monkeypatch.setattr(publish_module, "probe_logits", killed)


def test_a_kill_while_publishing_leaves_one_version_per_model(object_store, tracking_uri, base_model, tmp_path,
                                                              monkeypatch):
    """The issue's case: attempt 1 registered the adapter and died before the merged model; attempt 2 reuses the
    adapter version and registers the merged model once."""
    storage = WorkloadStorage(context(tracking_uri, 1), object_store)
    with monkeypatch.context() as during_attempt_1:
        kill_after_the_adapter_is_registered(during_attempt_1)
        with pytest.raises(Killed):
            attempt(context(tracking_uri, 1), spec(), storage, base_model, tmp_path)
    assert [str(v.version) for v in versions(MODEL)] == ["1"] and versions(MERGED) == []
    assert storage.get_json("result.json") is None

    result = attempt(context(tracking_uri, 2), spec(), WorkloadStorage(context(tracking_uri, 2), object_store),
                     base_model, tmp_path)
    adapter, merged = versions(MODEL), versions(MERGED)
    assert len(adapter) == 1 and len(merged) == 1, ([v.version for v in adapter], [v.version for v in merged])
    assert result["registeredModelVersion"] == str(adapter[0].version) and result["modelUri"] == f"models:/{MODEL}/1"
    assert result["mergedModelVersion"] == str(merged[0].version)
    assert adapter[0].tags["kubeforge.attempt"] == "1" and merged[0].tags["kubeforge.attempt"] == "2"
    for version in adapter + merged:
        assert version.run_id == result["mlflowRunId"] and version.status == "READY"
        assert {"kubeforge.uid": "uid-1", "kubeforge.generation": "1"}.items() <= version.tags.items()
    eval_after = MlflowClient().get_metric_history(result["mlflowRunId"], "eval_loss_after")
    assert [(m.step, m.value) for m in eval_after] == [(STEPS, 1.5)]  # logged once, not once per attempt


def test_a_retry_after_everything_was_published_reuses_the_result(object_store, tracking_uri, base_model, tmp_path):
    """Killed after result.json was written: the retry returns that publication as it stands (its own eval loss
    differs here only to show that nothing is published again)."""
    storage = WorkloadStorage(context(tracking_uri, 1), object_store)
    first = attempt(context(tracking_uri, 1), spec(), storage, base_model, tmp_path)
    second = attempt(context(tracking_uri, 2), spec(), storage, base_model, tmp_path, eval_after=1.25)
    assert second == first
    assert len(versions(MODEL)) == 1 and len(versions(MERGED)) == 1
    eval_after = MlflowClient().get_metric_history(first["mlflowRunId"], "eval_loss_after")
    assert [m.value for m in eval_after] == [1.5]


def test_a_retry_without_the_result_finds_the_registered_versions(object_store, tracking_uri, base_model, tmp_path):
    """Killed after the last registration, before result.json: the registry alone says what was published."""
    storage = WorkloadStorage(context(tracking_uri, 1), object_store)
    first = attempt(context(tracking_uri, 1), spec(), storage, base_model, tmp_path)
    object_store.client.delete_object(Bucket=BUCKET, Key=storage.prefix.output_key("result.json"))
    second = attempt(context(tracking_uri, 2), spec(), storage, base_model, tmp_path)
    assert (second["registeredModelVersion"], second["mergedModelVersion"]) == ("1", "1")
    assert len(versions(MODEL)) == 1 and len(versions(MERGED)) == 1
    assert second["adapterUri"] == first["adapterUri"] and second["mergedUri"] == first["mergedUri"]


def test_a_new_generation_or_a_recreated_resource_publishes_new_versions(object_store, tracking_uri, base_model,
                                                                          tmp_path):
    storage = WorkloadStorage(context(tracking_uri, 1), object_store)
    first = attempt(context(tracking_uri, 1), spec(), storage, base_model, tmp_path)
    edited = attempt(context(tracking_uri, 2, generation=2), spec(), storage, base_model, tmp_path)
    recreated = attempt(context(tracking_uri, 1, uid="uid-2"), spec(), storage, base_model, tmp_path)
    assert [r["registeredModelVersion"] for r in (first, edited, recreated)] == ["1", "2", "3"]
    assert [r["mergedModelVersion"] for r in (first, edited, recreated)] == ["1", "2", "3"]
    assert [v.tags["kubeforge.generation"] for v in versions(MODEL)] == ["1", "2", "1"]
    assert [v.tags["kubeforge.uid"] for v in versions(MODEL)] == ["uid-1", "uid-1", "uid-2"]


def set_status(tracking_uri: str, name: str, version: str, status: str) -> None:
    """What a registry that copies artifacts asynchronously shows; the sqlite store is always READY at once."""
    with sqlite3.connect(tracking_uri[len("sqlite:///"):]) as db:
        db.execute("UPDATE model_versions SET status = ? WHERE name = ? AND version = ?", (status, name, int(version)))


def register_adapter(run_id: str, attempt_number: int) -> str:
    return tracking.register(MODEL, run_id, "adapter", {"kubeforge.uid": "uid-1", "kubeforge.generation": "1"},
                             extra_tags={"kubeforge.attempt": str(attempt_number)}, await_seconds=20)


def test_a_version_pending_registration_is_waited_for_and_reused(tracking_uri):
    run_id = tracking.start_run(context(tracking_uri, 1), {})
    mlflow.end_run()
    assert register_adapter(run_id, 1) == "1"
    set_status(tracking_uri, MODEL, "1", "PENDING_REGISTRATION")
    ready = threading.Timer(1.5, set_status, (tracking_uri, MODEL, "1", "READY"))
    ready.start()
    try:
        assert register_adapter(run_id, 2) == "1"
    finally:
        ready.cancel()
    assert [v.status for v in versions(MODEL)] == ["READY"]


def test_a_version_that_failed_registration_does_not_count(tracking_uri):
    run_id = tracking.start_run(context(tracking_uri, 1), {})
    mlflow.end_run()
    register_adapter(run_id, 1)
    set_status(tracking_uri, MODEL, "1", "FAILED_REGISTRATION")
    assert register_adapter(run_id, 2) == "2"
    assert register_adapter(run_id, 3) == "2"


def crd_model_uri_pattern(kind_plural: str) -> str:
    """The pattern the API server enforces on a model URI field, read from the committed CRD."""
    crd = yaml.safe_load((REPO_ROOT / "crds" / f"kubeforge.dev_{kind_plural}.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    return schema["baseModel"]["properties"]["uri"]["pattern"]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_what_finetune_publishes_is_a_model_uri_every_kind_accepts_and_the_loader_loads(
        object_store, tracking_uri, base_model, tmp_path, method):
    """One scheme end to end: the models:/<name>/<version> FineTune publishes (full: modelUri; lora: the merged
    model) passes the CRD's pattern and the API model, and the workloads' loader turns it into a model directory
    that transformers loads."""
    import re

    from transformers import AutoModelForCausalLM

    from kubeforge.api.finetune import BaseModelRef
    from kubeforge_workloads.common.models import load_model_dir, registry_uri

    the_spec = spec(merge=method == "lora")
    the_spec.method = publish_module.Method(method)
    result = attempt(context(tracking_uri, 1), the_spec, WorkloadStorage(context(tracking_uri, 1), object_store),
                     base_model, tmp_path)
    published = [result["modelUri"]]
    if method == "lora":
        published.append(registry_uri(result["mergedModelName"], result["mergedModelVersion"]))
    pattern = crd_model_uri_pattern("finetunes")
    for uri in published:
        assert uri.startswith("models:/")
        assert re.fullmatch(pattern, uri), (uri, pattern)
        assert BaseModelRef(uri=uri).uri == uri
    loadable = published[-1]  # the full model, or the merged one (modelUri of lora is an adapter)
    model_dir = load_model_dir(loadable, tmp_path / "loaded", store=None)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "llama"


@pytest.mark.parametrize("uri", ["mlflow://models/m/1", "models:/m", "models:/", "s3://bucket", "hf://org"])
def test_model_uris_outside_the_scheme_are_refused_by_schema_and_loader(uri, tmp_path):
    import re

    from pydantic import ValidationError

    from kubeforge.api.finetune import BaseModelRef
    from kubeforge_workloads.common.errors import UserError
    from kubeforge_workloads.common.models import load_model_dir

    assert not re.fullmatch(crd_model_uri_pattern("finetunes"), uri)
    with pytest.raises(ValidationError):
        BaseModelRef(uri=uri)
    if uri.startswith("mlflow://"):
        with pytest.raises(UserError, match="unknown scheme; use s3://bucket/dir, models:/<name>/<version>"):
            load_model_dir(uri, tmp_path, store=None, field="spec.target.modelUri")
