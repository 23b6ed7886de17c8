"""`kubeforge batch`: the RayJob it builds over a ServingEndpoint, and which blocks a run still has to do."""

import copy

import pytest
import yaml

from kubeforge.api.batchinference import pending_blocks, shard_first_row, shard_name
from kubeforge.api.workload import CONTEXT_ENV, WorkloadContext
from kubeforge.batchrun import BatchError, endpoint_name, prepare
from kubeforge.launch.batchjob import LABEL_BATCH, batch_rayjob_name, build_batch_rayjob
from kubeforge.launch.names import LABEL_OWNER_UID, MAX_CHILD_NAME, is_dns1035_label
from kubeforge.settings import Settings
from tests.conftest import KUBERAY_CRDS, REPO_ROOT
from tests.unit.schemas import crd_schema, schema_errors

SETTINGS = Settings()
INPUT, OUTPUT = "s3://kubeforge/seed/datasets/reviews/reviews.jsonl", "s3://kubeforge/batch/out"


def assistant() -> dict:
    docs = yaml.safe_load_all((REPO_ROOT / "examples" / "serving.yaml").read_text())
    obj = next(d for d in docs if d and d["kind"] == "ServingEndpoint")
    obj["metadata"].update(namespace="default", uid="0123456789abcdef", generation=1)
    obj["status"] = {"inputs": {"model": "s3://kubeforge/seed/models/tiny-llama",
                                "adapters": {"docs-lora": "models:/docs-lora/1"}}}
    return obj


def rayjob(attempt=1, endpoint=None, **options):
    endpoint = endpoint or assistant()
    request, app = prepare(endpoint, options.pop("template", "reviews"), options.pop("model", None), INPUT, OUTPUT,
                           "text", "id", 8)
    return request, build_batch_rayjob(endpoint, request, app, attempt, SETTINGS)


def test_the_batch_rayjob_is_valid_for_kuberay_deterministic_and_owned_by_the_endpoint():
    request, first = rayjob()
    assert schema_errors(crd_schema(KUBERAY_CRDS / "ray.io_rayjobs.yaml", "v1"), first) == []
    assert rayjob()[1] == first
    meta = first["metadata"]
    assert meta["ownerReferences"][0]["kind"] == "ServingEndpoint"
    assert meta["ownerReferences"][0]["uid"] == "0123456789abcdef"
    assert meta["labels"][LABEL_BATCH] == request.id
    # Without the owner-uid label the operator's children index (and the endpoint's loop) never sees it.
    assert LABEL_OWNER_UID not in meta["labels"]
    assert first["spec"]["entrypoint"] == "python -m kubeforge_workloads.batch"
    assert first["spec"]["backoffLimit"] == 0
    env = yaml.safe_load(first["spec"]["runtimeEnvYAML"])["env_vars"]
    context = WorkloadContext.model_validate_json(env[CONTEXT_ENV])
    assert context.storage.prefix == "default/ServingEndpoint/assistant"
    assert context.inputs["batch"]["template"] == "reviews" and context.inputs["batch"]["output"] == OUTPUT + "/"
    assert context.inputs["app"]["base"]["uri"] == "s3://kubeforge/seed/models/tiny-llama"
    assert [a["name"] for a in context.inputs["app"]["adapters"]] == ["docs-lora"]


def test_attempts_get_new_valid_names_and_a_different_run_a_different_id():
    request, first = rayjob(1)
    _, second = rayjob(2)
    assert first["metadata"]["name"] != second["metadata"]["name"]
    assert second["metadata"]["labels"][LABEL_BATCH] == request.id
    assert prepare(assistant(), "reviews", "docs-lora", INPUT, OUTPUT, "text", None, 8)[0].id != request.id
    long_name = batch_rayjob_name("team.docs." + "x" * 200, request.id, 12)
    assert is_dns1035_label(long_name, MAX_CHILD_NAME)


def test_what_the_endpoint_cannot_run_is_refused_with_a_sentence_naming_the_flag():
    with pytest.raises(BatchError, match="--template nope: .* has no such promptTemplates entry; it has"):
        rayjob(template="nope")
    with pytest.raises(BatchError, match="--model nope: .* serves assistant and adapters"):
        rayjob(model="nope")
    unresolved = copy.deepcopy(assistant())
    unresolved["status"] = {}
    with pytest.raises(BatchError, match="has not resolved its model yet"):
        rayjob(endpoint=unresolved)
    with pytest.raises(BatchError, match="--input reviews.jsonl: use an s3://"):
        prepare(assistant(), "reviews", None, "reviews.jsonl", OUTPUT, "text", None, 8)
    with pytest.raises(BatchError, match="expected se/NAME"):
        endpoint_name("vi/assistant")


def test_blocks_whose_shard_exists_are_skipped_and_only_those():
    written = [f"out/{shard_name(0)}", f"out/{shard_name(16)}", "out/_tmp/other.jsonl", "out/part-x.jsonl"]
    assert pending_blocks(40, 8, written) == [8, 24, 32]
    assert pending_blocks(40, 8, []) == [0, 8, 16, 24, 32]
    assert pending_blocks(40, 8, [f"o/{shard_name(s)}" for s in range(0, 40, 8)]) == []
    assert shard_first_row("a/b/" + shard_name(123)) == 123 and shard_first_row("a/part-12.json") is None
    assert sorted(shard_name(s) for s in (100, 20, 3)) == [shard_name(3), shard_name(20), shard_name(100)]


def test_kuberay_reruns_a_failed_run_on_its_own_cluster_and_never_beside_a_cluster_selector():
    from kubeforge.dev.kuberay.validation import validate_rayjob

    request, app = prepare(assistant(), "reviews", None, INPUT, OUTPUT, "text", "id", 8)
    own = build_batch_rayjob(assistant(), request, app, 1, SETTINGS, retries=2)
    assert own["spec"]["backoffLimit"] == 2 and validate_rayjob(own) is None
    shared = assistant()
    shared["spec"]["ray"] = {"clusterSelector": {"ray.io/cluster": "team-cluster"}}
    beside = build_batch_rayjob(shared, request, app, 1, SETTINGS, retries=2)
    assert beside["spec"]["backoffLimit"] == 0 and validate_rayjob(beside) is None


class FollowedApi:
    """The RayJob as KubeRay reports it on successive reads; records what the CLI creates."""

    def __init__(self, statuses):
        self.statuses, self.created = list(statuses), []

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        return {"status": self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]}

    def list_namespaced_custom_object(self, *args, **kwargs):
        return {"items": []}

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append(body)


def follow(statuses, kuberay_retries, retries=2):
    import kubeforge.batchrun as batchrun
    from kubeforge.batchrun import BatchRun, Submitted

    api, lines = FollowedApi(statuses), []
    run = BatchRun(api, None, SETTINGS, "default", lines.append)
    run.progress = lambda endpoint, request: None
    request, app = prepare(assistant(), "reviews", None, INPUT, OUTPUT, "text", "id", 8)
    batchrun.POLL_SECONDS, saved = 0, batchrun.POLL_SECONDS
    try:
        code = run.follow(assistant(), Submitted(request, "assistant-b1", 1, kuberay_retries), app, retries, 30)
    finally:
        batchrun.POLL_SECONDS = saved
    return code, lines, api.created


def test_the_cli_reports_kuberays_reruns_and_submits_nothing_itself():
    running = {"jobDeploymentStatus": "Running"}
    code, lines, created = follow(
        [running, {"jobDeploymentStatus": "Retrying", "failed": 1, "reason": "AppFailed", "message": "NodeLost"},
         {"failed": 1}, {**running, "failed": 1},
         {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "failed": 1}], kuberay_retries=2)
    assert code == 0 and created == []
    assert any("failed (NodeLost); retry 1 of 2, by KubeRay" in line for line in lines), lines
    code, lines, created = follow([{"jobDeploymentStatus": "Failed", "failed": 3, "message": "boom"}],
                                  kuberay_retries=2)
    assert code == 1 and created == [] and "no retries left" in lines[-1]


def test_beside_a_cluster_selector_the_cli_resubmits_a_failed_attempt():
    code, lines, created = follow([{"jobDeploymentStatus": "Failed", "failed": 1, "message": "boom"},
                                   {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}], kuberay_retries=0)
    assert code == 0 and len(created) == 1 and created[0]["spec"]["backoffLimit"] == 0
    assert any("retry 1 of 2" in line for line in lines), lines
