"""ServingEndpoint: the RayService it renders (valid for KubeRay, deterministic, no secret in it) and the status
that mirrors the RayService's readiness."""

import copy
import json
from datetime import datetime, timezone

import yaml

from kubeforge.api.serveapp import API_KEYS_ENV, IMPORT_PATH, ServeAppConfig
from kubeforge.controllers.serving import ServingObserved, reconcile_endpoint
from kubeforge.launch.rayservice import DEPLOYMENT_NAME, SPEC_HASH_ANNOTATION, rayservice_name
from kubeforge.launch.names import LABEL_OWNER_UID
from kubeforge.settings import Settings
from tests.conftest import KUBERAY_CRDS
from tests.unit.schemas import crd_schema, schema_errors

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
SETTINGS = Settings(bucket="kubeforge")
OBJ = {
    "apiVersion": "kubeforge.dev/v1alpha1", "kind": "ServingEndpoint",
    "metadata": {"name": "chat", "namespace": "team", "uid": "u-123", "generation": 1},
    "spec": {"model": {"fineTuneRef": "base-ft"},
             "adapters": [{"name": "support", "fineTuneRef": "support-ft"}],
             "promptTemplates": [{"name": "reviews", "template": "Analyse: {input}", "system": "Reply in JSON"}],
             "rag": {"vectorIndexRef": "docs", "topK": 3},
             "auth": {"apiKeySecretRef": {"name": "chat-keys"}},
             "autoscaling": {"minReplicas": 1, "maxReplicas": 3}},
}
SUCCEEDED = {"phase": "Succeeded", "conditions": [{"type": "Ready", "status": "True"}]}
BASE_FT = {"metadata": {"name": "base-ft"}, "status": {**SUCCEEDED, "output": {
    "mergedModelName": "team-base-ft-merged", "mergedModelVersion": "2", "modelUri": "models:/x/1"}}}
ADAPTER_FT = {"metadata": {"name": "support-ft"}, "status": {**SUCCEEDED, "output": {
    "adapterUri": "s3://kubeforge/team/FineTune/support-ft/outputs/adapter", "modelUri": "models:/team-support-ft/1"}}}
INDEX = {"metadata": {"name": "docs"}, "status": {
    "phase": "Ready", "currentVersion": 4, "storagePrefix": "s3://kubeforge/team/VectorIndex/docs",
    "conditions": [{"type": "Ready", "status": "True"}]}}
DEPS = {("FineTune", "base-ft"): BASE_FT, ("FineTune", "support-ft"): ADAPTER_FT, ("VectorIndex", "docs"): INDEX}


def reconcile(obj=OBJ, rayservice=None, deps=DEPS, unmet=()):
    children = {rayservice["metadata"]["name"]: rayservice} if rayservice else {}
    return reconcile_endpoint(copy.deepcopy(obj), ServingObserved(rayservices=children, dependencies=dict(deps),
                                                                  unmet=list(unmet)), NOW, SETTINGS)


def conditions(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def with_status(obj, plan):
    obj = copy.deepcopy(obj)
    obj["status"] = plan.status
    return obj


def served(desired, **status):
    """The RayService as the index shows it once KubeRay reported on it."""
    child = copy.deepcopy(desired)
    child["metadata"]["generation"] = 1
    child["status"] = {"observedGeneration": 1, **status}
    return child


def ready_status(app_status="RUNNING", ready="True", reason="NonZeroServeEndpoints", upgrading="False"):
    return {"serviceStatus": "Running" if ready == "True" else "", "numServeEndpoints": 1 if ready == "True" else 0,
            "activeServiceStatus": {"applicationStatuses": {"team.chat": {
                "status": app_status, "message": "boom" if app_status != "RUNNING" else ""}}},
            "conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": "m"},
                           {"type": "UpgradeInProgress", "status": upgrading, "reason": "x", "message": ""}]}


def test_the_rayservice_is_valid_for_kuberay_deterministic_and_carries_no_api_key():
    first, second = reconcile(), reconcile()
    rayservice = first.apply[0]
    assert json.dumps(rayservice, sort_keys=True) == json.dumps(second.apply[0], sort_keys=True)
    assert schema_errors(crd_schema(KUBERAY_CRDS / "ray.io_rayservices.yaml", "v1"), rayservice) == []
    assert rayservice["metadata"]["name"] == "chat" and rayservice["metadata"]["labels"][LABEL_OWNER_UID] == "u-123"
    assert rayservice["metadata"]["ownerReferences"][0]["uid"] == "u-123"
    app = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]
    assert app["import_path"] == IMPORT_PATH and app["route_prefix"] == "/team/chat"
    assert app["deployments"][0]["name"] == DEPLOYMENT_NAME
    assert app["deployments"][0]["autoscaling_config"]["max_replicas"] == 3
    config = ServeAppConfig.model_validate(app["args"])
    assert config.base.uri == "models:/team-base-ft-merged/2"
    assert [(a.name, a.uri) for a in config.adapters] == [("support", "models:/team-support-ft/1")]
    assert config.rag.index == "s3://kubeforge/team/VectorIndex/docs" and config.rag.version == 4
    assert config.engine.kind == "transformers" and config.api_keys_env == API_KEYS_ENV
    # the key reaches the replicas from the user's Secret through the kubelet, never through this object
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": API_KEYS_ENV, "valueFrom": {"secretKeyRef": {"name": "chat-keys", "key": "api-keys"}}} \
        in head["env"]
    # the autoscaler owns the worker count: an apply must not fight it
    workers = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert "replicas" not in workers and workers["maxReplicas"] == 3


def test_a_name_kuberay_refuses_maps_to_a_valid_rayservice_name():
    for name in ("team.docs.assistant", "7th-run", "l" * 120):
        child = rayservice_name(name)
        assert len(child) <= 47 and child[0].isalpha() and "." not in child
    assert rayservice_name("team.docs.assistant") != rayservice_name("team-docs-assistant")


def test_the_endpoint_deploys_then_mirrors_readiness_and_applies_only_on_change():
    plan = reconcile()
    desired = plan.apply[0]
    assert plan.status["phase"] == "Deploying" and len(plan.apply) == 1
    assert conditions(plan.status)["Reconciling"] == ("True", "Deploying")
    assert plan.status["url"] == "http://chat-serve-svc.team.svc:8000/team/chat/v1"
    assert [m["name"] for m in plan.status["models"]] == ["chat", "support", "chat:reviews"]
    assert plan.status["apiKeySecret"] == {"name": "chat-keys", "key": "api-keys"}  # for clients, e.g. EvalRuns
    obj = with_status(OBJ, plan)
    child = served(desired, **ready_status(app_status="DEPLOYING", ready="False", reason="Initializing"))
    plan = reconcile(obj, child)
    assert plan.apply == [] and plan.status["phase"] == "Deploying"  # the same spec is not sent again
    plan = reconcile(obj, served(desired, **ready_status()))
    assert plan.status["phase"] == "Ready" and conditions(plan.status)["Ready"] == ("True", "Serving")
    assert conditions(plan.status)["Reconciling"][0] == "False" and plan.apply == []
    assert plan.status["replicas"] == {"ready": 1}
    ready = with_status(obj, plan)
    lost = reconcile(ready, served(desired, **ready_status(app_status="UNHEALTHY", ready="False",
                                                          reason="ZeroServeEndpoints")))
    assert lost.status["phase"] == "Waiting" and conditions(lost.status)["Ready"] == ("False", "Unhealthy")
    assert conditions(lost.status)["Reconciling"][0] == "True"


def test_a_spec_change_is_applied_and_the_previous_version_serves_meanwhile():
    plan = reconcile()
    deployed = served(plan.apply[0], **ready_status())
    ready = with_status(OBJ, reconcile(with_status(OBJ, plan), deployed))
    changed = copy.deepcopy(ready)
    changed["metadata"]["generation"] = 2
    changed["spec"]["adapters"].append({"name": "extra", "uri": "s3://kubeforge/adapters/extra"})
    plan = reconcile(changed, deployed)
    assert len(plan.apply) == 1 and plan.apply[0]["metadata"]["annotations"][SPEC_HASH_ANNOTATION] != \
        deployed["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    assert conditions(plan.status)["Ready"][0] == "True" and conditions(plan.status)["Reconciling"] == \
        ("True", "Upgrading")
    assert "extra" in [m["name"] for m in plan.status["models"]]


def test_dependencies_hold_back_only_the_first_deployment():
    waiting = reconcile(deps={**DEPS, ("FineTune", "support-ft"): None})
    assert waiting.apply == [] and waiting.status["phase"] == "Waiting"
    assert conditions(waiting.status)["Reconciling"] == ("True", "WaitingForDependency")
    assert "FineTune support-ft (not found)" in waiting.status["message"]
    failed_ft = {"metadata": {"name": "support-ft"}, "status": {"phase": "Failed"}}
    failed = reconcile(deps={**DEPS, ("FineTune", "support-ft"): failed_ft})
    assert conditions(failed.status)["Stalled"] == ("True", "DependencyFailed") and failed.apply == []
    full_run = {"metadata": {"name": "support-ft"}, "status": {**SUCCEEDED, "output": {
        "fullModelUri": "s3://x/model", "modelUri": "models:/full/1"}}}
    unusable = reconcile(deps={**DEPS, ("FineTune", "support-ft"): full_run})
    assert conditions(unusable.status)["Stalled"] == ("True", "DependencyFailed")
    assert "no LoRA adapter" in unusable.status["message"]
    # once deployed, a dependency going away does not take the endpoint down: it serves what it resolved
    plan = reconcile()
    deployed = served(plan.apply[0], **ready_status())
    ready = with_status(OBJ, reconcile(with_status(OBJ, plan), deployed))
    gone = reconcile(ready, deployed, deps={**DEPS, ("VectorIndex", "docs"): None})
    assert gone.apply == [] and gone.status["phase"] == "Ready"


def test_specs_only_the_user_can_fix_stall_with_a_message_naming_the_field():
    vllm_on_cpu = copy.deepcopy(OBJ)
    vllm_on_cpu["spec"]["engine"] = "vllm"
    plan = reconcile(vllm_on_cpu)
    assert conditions(plan.status)["Stalled"] == ("True", "InvalidSpec") and plan.apply == []
    assert "spec.resources.gpusPerWorker" in plan.status["message"]
    clash = copy.deepcopy(OBJ)
    clash["spec"]["adapters"][0]["name"] = "chat"
    assert "chat is used twice" in reconcile(clash).status["message"]
    missing = copy.deepcopy(OBJ)
    missing["spec"]["rag"]["promptTemplate"] = "nope"
    assert "spec.rag.promptTemplate 'nope'" in reconcile(missing).status["message"]


def test_what_kuberay_or_serve_refuses_stalls_with_their_message():
    plan = reconcile()
    obj = with_status(OBJ, plan)
    refused = reconcile(obj, served(plan.apply[0], **ready_status(ready="False", reason="ValidationFailed")))
    assert conditions(refused.status)["Stalled"] == ("True", "RayServiceInvalid")
    failed = reconcile(obj, served(plan.apply[0], **ready_status(app_status="DEPLOY_FAILED", ready="False",
                                                                 reason="ZeroServeEndpoints")))
    assert conditions(failed.status)["Stalled"] == ("True", "DeployFailed") and "boom" in failed.status["message"]


def test_gpus_select_vllm_and_an_unmet_prerequisite_holds_the_first_deployment():
    gpu = copy.deepcopy(OBJ)
    gpu["spec"]["resources"] = {"gpusPerWorker": 1}
    app = yaml.safe_load(reconcile(gpu).apply[0]["spec"]["serveConfigV2"])["applications"][0]
    assert app["args"]["engine"]["kind"] == "vllm" and app["deployments"][0]["ray_actor_options"]["num_gpus"] == 1

    class Unmet:
        reason, message = "KubeRayMissing", "KubeRay is not installed"

    plan = reconcile(unmet=[Unmet()])
    assert plan.apply == [] and conditions(plan.status)["Stalled"] == ("True", "KubeRayMissing")


def test_an_embedding_model_is_served_listed_and_its_name_must_not_clash():
    import yaml

    with_embeddings = copy.deepcopy(OBJ)
    with_embeddings["spec"]["embeddings"] = {"name": "minilm"}
    plan = reconcile(with_embeddings)
    assert plan.status["models"][-1] == {"name": "minilm", "type": "embedding", "source": "all-MiniLM-L6-v2"}
    app = yaml.safe_load(plan.apply[0]["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert app["embeddings"] == {"name": "minilm", "model": "all-MiniLM-L6-v2", "normalize": True}
    with_embeddings["spec"]["embeddings"]["name"] = "support"
    assert "support is used twice" in reconcile(with_embeddings).status["message"]


def test_tracing_reaches_the_serve_app_with_the_endpoints_experiment_and_is_off_at_rate_zero():
    import yaml

    traced = copy.deepcopy(OBJ)
    traced["spec"]["tracing"] = {"sampleRate": 0.25}
    args = yaml.safe_load(reconcile(traced).apply[0]["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["tracing"] == {"experiment": f"{OBJ['metadata']['namespace']}/ServingEndpoint", "sample_rate": 0.25}
    traced["spec"]["mlflow"] = {"experiment": "support-bot"}
    args = yaml.safe_load(reconcile(traced).apply[0]["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["tracing"]["experiment"] == "support-bot"
    traced["spec"]["tracing"] = {"sampleRate": 0}
    args = yaml.safe_load(reconcile(traced).apply[0]["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args.get("tracing") is None
