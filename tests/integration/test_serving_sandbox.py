"""ServingEndpoint through the whole chain in the sandbox: the operator resolves the FineTune adapter and the
VectorIndex, renders the RayService, the local KubeRay deploys it on Ray Serve, and the official `openai`
client talks to it. Also: the API key stays out of every object and log, and a spec change rolls out with no
failed request."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import openai
import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

KEY = "sk-kubeforge-demo"
SERVE_URL_ANNOTATION = "kubeforge.dev/local-serve-url"
"""Where the sandbox's Serve proxy answers for a RayService (on a cluster: status.url via the serve Service)."""


def apply_file(sandbox, path: str) -> None:
    sandbox.kubectl("apply", "-f", str(REPO_ROOT / path))


def base_url(sandbox, name: str) -> str:
    status = sandbox.get("servingendpoint", name)["status"]
    service = json.loads(sandbox.kubectl("get", "service", f"{status['rayService']}-serve-svc", "-o", "json").stdout)
    local = service["metadata"]["annotations"][SERVE_URL_ANNOTATION].rstrip("/")
    route = status["url"].split(":8000", 1)[1]  # /<namespace>/<name>/v1
    assert local.endswith(route.removesuffix("/v1")), (local, status["url"])
    return local + "/v1"


def wait_ready(sandbox, name: str, timeout: float = 900) -> dict:
    sandbox.kubectl("wait", "--for=condition=Ready", f"servingendpoint/{name}", f"--timeout={int(timeout)}s",
                    timeout=timeout + 30)
    return sandbox.get("servingendpoint", name)


def chat(client, model: str, text: str, **kwargs):
    kwargs = {"temperature": 0, "max_tokens": 16, **kwargs}
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kwargs)


@pytest.fixture(scope="module", autouse=True)
def endpoints_deleted_afterwards(sandbox):
    """Serve replicas hold Ray CPUs in the shared sandbox: the modules after this one get them back."""
    yield
    sandbox.kubectl("delete", "servingendpoint", "assistant", "docs-rag", "--ignore-not-found", "--wait=false",
                    check=False)


@pytest.fixture(scope="module")
def assistant(sandbox):
    apply_file(sandbox, "examples/serving.yaml")
    obj = wait_ready(sandbox, "assistant")
    return obj, openai.OpenAI(base_url=base_url(sandbox, "assistant"), api_key=KEY, max_retries=0, timeout=120)


def test_the_serving_example_serves_base_adapter_and_template_to_the_openai_client(sandbox, assistant):
    obj, client = assistant
    status = obj["status"]
    assert status["phase"] == "Ready" and status["url"].endswith("/default/assistant/v1"), json.dumps(status)
    assert {m.id for m in client.models.list()} == {"assistant", "docs-lora", "assistant:reviews"}
    assert [m["name"] for m in status["models"]] == ["assistant", "docs-lora", "assistant:reviews"]
    assert status["inputs"]["adapters"]["docs-lora"].startswith("models:/docs-lora/")

    question = "How does Kubeforge resume a failed attempt?"
    base, again = chat(client, "assistant", question), chat(client, "assistant", question)
    adapter = chat(client, "docs-lora", question)
    assert base.choices[0].message.content == again.choices[0].message.content  # greedy is deterministic
    assert adapter.choices[0].message.content != base.choices[0].message.content
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                       chat(client, "docs-lora", question, stream=True) if chunk.choices)
    assert streamed == adapter.choices[0].message.content
    review = chat(client, "assistant:reviews", "Arrived broken, support never answered.")
    assert review.choices[0].message.content is not None and review.usage.completion_tokens > 0


def test_bad_requests_get_openai_errors_and_the_key_is_in_no_object_or_log(sandbox, assistant):
    obj, client = assistant
    url = base_url(sandbox, "assistant")
    for key in (None, "sk-wrong"):
        anonymous = openai.OpenAI(base_url=url, api_key=key or "unused", max_retries=0,
                                  default_headers={} if key else {"Authorization": ""})
        with pytest.raises(openai.AuthenticationError):
            chat(anonymous, "assistant", "hi")
    with pytest.raises(openai.NotFoundError):
        chat(client, "no-such-model", "hi")
    with pytest.raises(openai.BadRequestError):
        chat(client, "assistant", "word " * 2000)  # longer than maxModelLen 512
    request = urllib.request.Request(f"{url}/chat/completions", data=b"{not json", method="POST",
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as malformed:
        urllib.request.urlopen(request, timeout=60)
    assert malformed.value.code == 400 and "error" in json.loads(malformed.value.read())
    assert chat(client, "assistant", "still serving?").choices[0].message.content is not None

    rayservice = sandbox.kubectl("get", "rayservice", obj["status"]["rayService"], "-o", "json").stdout
    endpoint = sandbox.kubectl("get", "servingendpoint", "assistant", "-o", "json").stdout
    events = sandbox.kubectl("get", "events", "-o", "json").stdout
    traces = request_traces(sandbox, "still serving?")
    for where, text in (("RayService", rayservice), ("ServingEndpoint", endpoint), ("events", events),
                        ("MLflow trace", traces),
                        ("operator log", sandbox.log_tail("operator", 10**7)),
                        ("kuberay log", sandbox.log_tail("kuberay", 10**7))):
        assert KEY not in text, f"the API key leaked into the {where}"
    assert "secretKeyRef" in rayservice  # it reaches the replicas through the kubelet


def request_traces(sandbox, question: str) -> str:
    """The replicas' MLflow traces (the example samples every request) as JSON, once the one asking `question`
    has been exported by MLflow's background logger. The process-wide tracking URI is the sandbox's meanwhile: MLflow
    reads a trace's spans from its mlflow-artifacts: location through that URI, not the client's."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sandbox.state.mlflow_url)
    experiment = sandbox.wait_for(lambda: client.get_experiment_by_name("default/ServingEndpoint"),
                                  "the endpoint's MLflow experiment", timeout=60)

    def exported():
        found = client.search_traces(experiment_ids=[experiment.experiment_id], max_results=200)
        text = "\n".join(trace.to_json() for trace in found)
        return text if question in text else None

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(sandbox.state.mlflow_url)
    try:
        return sandbox.wait_for(exported, "the request's MLflow trace", timeout=60)
    finally:
        mlflow.set_tracking_uri(previous)


def test_a_new_adapter_rolls_out_with_no_failed_request(sandbox, assistant):
    obj, client = assistant
    adapter_uri = obj["status"]["inputs"]["adapters"]["docs-lora"]
    failures, answered, stop = [], [0], threading.Event()

    def load():
        while not stop.is_set():
            try:
                chat(client, "assistant", "ping", max_tokens=2)
                answered[0] += 1
            except Exception as error:  # every failure counts: the verdict is the endpoint's
                failures.append(repr(error))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        patch = {"spec": {"adapters": [{"name": "docs-lora", "fineTuneRef": "docs-lora"},
                                       {"name": "docs-lora-2", "uri": adapter_uri}]}}
        sandbox.kubectl("patch", "servingendpoint", "assistant", "--type", "merge", "-p", json.dumps(patch))

        def rolled_out():
            current = sandbox.get("servingendpoint", "assistant")
            ready = {c["type"]: c["status"] for c in current["status"]["conditions"]}
            return (current["status"].get("observedGeneration") == current["metadata"]["generation"]
                    and ready.get("Ready") == "True" and ready.get("Reconciling") == "False"
                    and "docs-lora-2" in {m.id for m in client.models.list()})

        sandbox.wait_for(rolled_out, "the new adapter to be served", timeout=600, interval=2)
    finally:
        stop.set()
        worker.join(timeout=120)
    assert failures == [], failures[:5]
    assert answered[0] > 0
    assert chat(client, "docs-lora-2", "hi").choices[0].message.content is not None


def test_the_rag_example_answers_with_the_vector_index_chunks(sandbox):
    apply_file(sandbox, "examples/rag-index.yaml")
    apply_file(sandbox, "examples/rag-endpoint.yaml")
    obj = wait_ready(sandbox, "docs-rag")
    index = sandbox.get("vectorindex", "kubeforge-docs")["status"]
    assert obj["status"]["inputs"]["vectorIndex"] == {"uri": index["storagePrefix"],
                                                       "version": index["currentVersion"]}
    client = openai.OpenAI(base_url=base_url(sandbox, "docs-rag"), api_key="unused", max_retries=0, timeout=120)
    answer = chat(client, "docs-rag", "How are failed attempts retried?")
    context = answer.model_extra["context"]
    # topK 3, fewer when they do not fit the tiny model's 512-token window with the answer
    assert 1 <= len(context) <= 3 and all({"id", "score", "source"} <= set(chunk) for chunk in context), context
    assert all(chunk["source"] for chunk in context)
