"""EvalRun on the batch reconcile: what it takes from its endpoint and indexes, the API keys it mounts from
Secrets, gate metrics checked at admission, and the gate's verdict (Failed, GateFailed, no retry)."""

import copy
import json
from datetime import datetime, timezone

import yaml

from kubeforge.controllers.batch import Observed, reconcile
from kubeforge.controllers.evalrun import EvalRunKind
from kubeforge.settings import Settings

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
SETTINGS = Settings(bucket="kubeforge", reconcile_period_seconds=2)
DONE = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
KIND = EvalRunKind()
SPEC = {"dataset": {"uri": "s3://kubeforge/seed/eval/questions.jsonl"},
        "target": {"endpointRef": "assistant", "vectorIndexRefs": ["docs-small", "docs-large"]},
        "retrieval": {"k": [1, 5]},
        "judge": {"endpointRef": "judge"},
        "gate": [{"metric": "judge/score", "op": ">=", "value": 2.0},
                 {"metric": "retrieval/docs-small/ndcg@5", "value": 0.5}]}


def ready(name, status):
    """A dependency as the operator's index keeps it: metadata and status, no spec."""
    return {"metadata": {"name": name}, "status": {**status, "conditions": [{"type": "Ready", "status": "True"}]}}


ENDPOINT = ready("assistant",
                 {"url": "http://assistant-serve-svc.team.svc:8000/team/assistant/v1",
                  "models": [{"name": "assistant", "type": "base"}, {"name": "docs-lora", "type": "adapter"}],
                  "apiKeySecret": {"name": "assistant-keys", "key": "api-keys"}})
JUDGE = ready("judge", {"url": "http://judge-serve-svc.team.svc:8000/team/judge/v1",
                                          "models": [{"name": "judge", "type": "base"}]})


def index(name, version):
    return ready(name, {"currentVersion": version,
                                       "storagePrefix": f"s3://kubeforge/team/VectorIndex/{name}"})


DEPENDENCIES = {("ServingEndpoint", "assistant"): ENDPOINT, ("ServingEndpoint", "judge"): JUDGE,
                ("VectorIndex", "docs-small"): index("docs-small", 2), ("VectorIndex", "docs-large"): index("docs-large", 1)}
METRICS = {"judge/score": 2.4, "judge/correctness": 2.5, "judge/comprehensiveness": 2.0, "judge/readability": 2.6,
           "retrieval/docs-small/ndcg@5": 0.71, "retrieval/docs-large/ndcg@5": 0.64, "rows/failedFraction": 0.0,
           "latency/p50Seconds": 0.2, "latency/p95Seconds": 0.4}
RESULT = {"metrics": METRICS, "rows": {"total": 20, "scored": 20, "failed": 0},
          "resultsUri": "s3://kubeforge/team/EvalRun/r/outputs/rows", "mlflowRunId": "abc",
          "indexes": {"docs-small": {"version": 2, "metrics": {"ndcg@5": 0.71}},
                      "docs-large": {"version": 1, "metrics": {"ndcg@5": 0.64}}}}


def resource(spec=SPEC):
    return {"apiVersion": "kubeforge.dev/v1alpha1", "kind": "EvalRun",
            "metadata": {"name": "r", "namespace": "team", "uid": "u-1", "generation": 1}, "spec": copy.deepcopy(spec)}


def step(obj, observed=None):
    plan = reconcile(KIND, obj, observed or Observed(), NOW, SETTINGS)
    updated = copy.deepcopy(obj)
    updated["status"] = plan.status
    return plan, updated


def launched(spec=SPEC):
    """Through the dependency check and the attempt record to the created RayJob."""
    _, obj = step(resource(spec), Observed(dependencies=DEPENDENCIES))
    plan, obj = step(obj, Observed(dependencies=DEPENDENCIES))
    assert len(plan.create) == 1, obj["status"]
    return plan.create[0], obj


def finished(result, spec=SPEC):
    rayjob, obj = launched(spec)
    return step(obj, Observed(rayjobs={rayjob["metadata"]["name"]: {"status": DONE}}, result=result))


def condition(obj, type_):
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def test_the_workload_gets_the_endpoint_the_judge_and_each_indexs_current_version():
    rayjob, obj = launched()
    inputs = obj["status"]["inputs"]
    assert inputs["endpoint"] == {"name": "assistant", "url": ENDPOINT["status"]["url"], "model": "assistant",
                                  "apiKeyEnv": "KUBEFORGE_ENDPOINT_API_KEY",
                                  "apiKeySecret": {"name": "assistant-keys", "key": "api-keys"}}
    assert inputs["judge"] == {"name": "judge", "url": JUDGE["status"]["url"], "model": "judge"}
    assert inputs["indexes"] == {"docs-small": {"uri": "s3://kubeforge/team/VectorIndex/docs-small", "version": 2},
                                 "docs-large": {"uri": "s3://kubeforge/team/VectorIndex/docs-large", "version": 1}}
    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"]
    assert json.loads(env["KUBEFORGE_CONTEXT"])["inputs"] == inputs


def test_the_endpoints_api_key_reaches_every_ray_pod_from_its_secret_and_never_the_rayjob():
    rayjob, _ = launched()
    cluster = rayjob["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        env = group["template"]["spec"]["containers"][0]["env"]
        assert {"name": "KUBEFORGE_ENDPOINT_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": "assistant-keys", "key": "api-keys"}}} in env
    assert "sk-" not in json.dumps(rayjob)


def test_an_external_judges_key_comes_from_its_secret():
    spec = copy.deepcopy(SPEC)
    spec["judge"] = {"openaiCompatible": {"baseUrl": "https://judge.example.com/v1/", "model": "big",
                                          "apiKeySecretRef": {"name": "judge-key"}}}
    rayjob, obj = launched(spec)
    assert obj["status"]["inputs"]["judge"] == {"name": None, "url": "https://judge.example.com/v1", "model": "big",
                                                "apiKeyEnv": "KUBEFORGE_JUDGE_API_KEY",
                                                "apiKeySecret": {"name": "judge-key", "key": "api-key"}}
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "KUBEFORGE_JUDGE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "judge-key", "key": "api-key"}}} \
        in head["env"]


def test_it_waits_for_every_dependency_and_names_those_not_ready():
    missing = dict(DEPENDENCIES)
    del missing[("VectorIndex", "docs-large")]
    plan, obj = step(resource(), Observed(dependencies=missing))
    assert plan.create == [] and obj["status"]["phase"] == "Waiting"
    assert condition(obj, "Ready")["reason"] == "WaitingForDependency"
    assert "VectorIndex docs-large (not found)" in obj["status"]["message"]


def test_a_model_the_endpoint_does_not_serve_stalls_with_the_names_it_does():
    spec = copy.deepcopy(SPEC)
    spec["target"]["model"] = "docs-lora-v2"
    plan, obj = step(resource(spec), Observed(dependencies=DEPENDENCIES))
    assert plan.create == [] and condition(obj, "Stalled")["reason"] == "DependencyFailed"
    assert "serves assistant, docs-lora; spec.target.model 'docs-lora-v2' is not one" in obj["status"]["message"]


def test_a_gate_on_a_metric_the_run_cannot_produce_is_an_invalid_spec_listing_what_it_can():
    spec = copy.deepcopy(SPEC)
    spec["gate"] = [{"metric": "retrieval/docs-small/ndcg@10", "value": 0.5}, {"metric": "judge/tone", "value": 1}]
    plan, obj = step(resource(spec), Observed(dependencies=DEPENDENCIES))
    assert plan.create == [] and condition(obj, "Stalled")["reason"] == "InvalidSpec"
    message = obj["status"]["message"]
    assert "spec.gate[0].metric 'retrieval/docs-small/ndcg@10' is not produced" in message
    assert "spec.gate[1].metric 'judge/tone'" in message and "retrieval/docs-small/ndcg@5" in message


def test_a_judge_without_an_endpoint_to_judge_is_refused():
    spec = {**copy.deepcopy(SPEC), "target": {"vectorIndexRefs": ["docs-small"]}, "gate": []}
    _, obj = step(resource(spec))
    assert "spec.judge grades answers of spec.target.endpointRef" in obj["status"]["message"]


def test_a_held_gate_succeeds_with_passed_true_and_the_headline_numbers_in_status():
    _, obj = finished(RESULT)
    status = obj["status"]
    assert status["phase"] == "Succeeded" and condition(obj, "Ready")["status"] == "True"
    passed = condition(obj, "Passed")
    assert (passed["status"], passed["reason"]) == ("True", "GatePassed")
    assert status["summary"]["judgeScore"] == 2.4 and status["summary"]["judge"]["correctness"] == 2.5
    assert status["summary"]["retrieval"] == {"docs-small": {"ndcg@5": 0.71}, "docs-large": {"ndcg@5": 0.64}}
    assert status["rows"] == {"total": 20, "scored": 20, "failed": 0}
    assert (status["summary"]["latencyP50Seconds"], status["summary"]["latencyP95Seconds"]) == (0.2, 0.4)
    assert [g["passed"] for g in status["gate"]] == [True, True, True]  # the two conditions and failed rows
    assert status["output"]["mlflowRunId"] == "abc"


def test_a_failed_gate_ends_failed_with_gatefailed_and_no_retry_naming_each_failing_metric():
    result = copy.deepcopy(RESULT)
    result["metrics"]["judge/score"] = 1.7
    plan, obj = finished(result)
    status = obj["status"]
    assert plan.create == [] and status["phase"] == "Failed" and "nextAttemptAt" not in status
    assert len(status["attempts"]) == 1
    assert condition(obj, "Stalled")["reason"] == "GateFailed"
    assert condition(obj, "Passed")["status"] == "False"
    assert "judge/score 1.7 (needs >= 2)" in status["message"]
    assert "ndcg" not in status["message"]
    assert status["summary"]["judgeScore"] == 1.7  # what was measured is still reported
    plan, again = step(obj, Observed())
    assert plan.create == [] and again["status"]["phase"] == "Failed"


def test_too_many_rows_the_judge_could_not_score_fail_the_gate():
    result = copy.deepcopy(RESULT)
    result["metrics"]["rows/failedFraction"] = 0.1
    result["rows"] = {"total": 20, "scored": 18, "failed": 2}
    _, obj = finished(result)
    assert obj["status"]["phase"] == "Failed"
    assert "rows/failedFraction 0.1 (needs <= 0.05)" in obj["status"]["message"]


def test_a_gate_metric_missing_from_the_result_fails_rather_than_passes():
    result = copy.deepcopy(RESULT)
    del result["metrics"]["retrieval/docs-small/ndcg@5"]
    _, obj = finished(result)
    assert obj["status"]["phase"] == "Failed"
    assert "retrieval/docs-small/ndcg@5 not produced" in obj["status"]["message"]


def test_with_one_index_the_unqualified_retrieval_name_is_a_valid_gate():
    spec = {**copy.deepcopy(SPEC), "target": {"vectorIndexRefs": ["docs-small"]}, "judge": None,
            "gate": [{"metric": "retrieval/recall@5", "op": ">", "value": 0.5}]}
    spec = {key: value for key, value in spec.items() if value is not None}
    _, obj = finished({"metrics": {"retrieval/recall@5": 0.8, "retrieval/docs-small/recall@5": 0.8,
                                   "rows/failedFraction": 0.0}, "rows": {"total": 3, "scored": 3, "failed": 0}},
                      spec)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]["message"]
