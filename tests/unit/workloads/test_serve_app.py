"""The ServingEndpoint's Serve application through the official `openai` client: a tiny Llama with two LoRA
adapters (and a tiny Mixtral MoE) loaded from S3 (moto's server), served in-process by uvicorn on loopback."""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager

import pytest

from tests.moto_s3 import free_port, moto_s3_server

openai = pytest.importorskip("openai")

BUCKET = "serving"
ENDPOINT = "demo"
REVIEW_TEMPLATE = "Review of {product}: {input}\nSentiment in {language}:"
API_KEY = "sk-kubeforge-test-0123456789"


def moto_s3():
    """moto's S3 server on loopback (reachable from Ray workers too), with the AWS_* environment pointing at it."""
    return moto_s3_server(BUCKET)


def build_models(root) -> dict[str, str]:
    """Tiny Llama, two LoRA adapters that change its output, and a Mixtral-style MoE, uploaded to S3; returns
    name -> s3 URI."""
    import boto3
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, MixtralConfig, MixtralForCausalLM

    from kubeforge_workloads.common.storage import upload_tree
    from kubeforge_workloads.seed.build import build_tiny_llama, build_tokenizer

    base = build_tiny_llama(root / "base")
    dirs = {"base": base}
    for seed, name in ((1, "concise"), (2, "verbose")):
        torch.manual_seed(seed)
        # init_lora_weights=False: random B matrices, so the adapter's greedy output differs from the base's.
        lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                              LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"],
                                         init_lora_weights=False))
        lora.save_pretrained(root / name)
        dirs[name] = root / name
    tokenizer = build_tokenizer(root / "moe")
    torch.manual_seed(0)
    MixtralForCausalLM(MixtralConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)).save_pretrained(root / "moe")
    dirs["moe"] = root / "moe"
    client = boto3.client("s3")
    for name, directory in dirs.items():
        upload_tree(client, directory, BUCKET, f"models/{name}/")
    return {name: f"s3://{BUCKET}/models/{name}" for name in dirs}


def app_args(uris: dict[str, str], **overrides) -> dict:
    args = {"endpoint": f"ns/{ENDPOINT}", "base": {"name": ENDPOINT, "uri": uris["base"]},
            "engine": {"kind": "transformers", "max_num_seqs": 8}, "max_tokens": 12,
            "adapters": [{"name": "concise", "uri": uris["concise"]}, {"name": "verbose", "uri": uris["verbose"]}],
            "templates": [{"name": "reviews", "template": REVIEW_TEMPLATE, "system": "You rate reviews.",
                           "parameters": {"language": "English", "temperature": 0, "max_tokens": 8}}]}
    args.update(overrides)
    return args


class LiveApp:
    """An ASGI app on a uvicorn server in a thread, on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def client(url: str, key: str = "none", retries: int = 0):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=retries, timeout=60)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    with moto_s3():
        yield build_models(tmp_path_factory.mktemp("serve-models"))


@pytest.fixture(scope="module")
def config(models):
    from kubeforge_workloads.serve.app import validate_args

    return validate_args(app_args(models))


@pytest.fixture(scope="module")
def engine(config, tmp_path_factory):
    from kubeforge_workloads.serve.app import load_engine

    engine = load_engine(config, tmp_path_factory.mktemp("serve-cache"))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def served(config, engine):
    from kubeforge_workloads.serve.app import create_app

    with LiveApp(create_app(config, engine)) as live:
        yield live


def chat(api, model: str, text: str = "How do I resume training?", **options):
    return api.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                       **{"temperature": 0, "max_tokens": 10} | options)


def streamed_text(stream) -> tuple[str, list]:
    chunks = list(stream)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


# models, generation, streaming

def test_models_lists_base_adapters_and_templates(served):
    ids = [m.id for m in client(served.url).models.list()]
    assert ids == [ENDPOINT, "concise", "verbose", f"{ENDPOINT}:reviews"]


@pytest.mark.parametrize("model", [ENDPOINT, "concise"])
def test_chat_streaming_and_not_agree_and_count_tokens(served, engine, model):
    api = client(served.url)
    whole = chat(api, model)
    text = whole.choices[0].message.content
    assert text and whole.model == model and whole.object == "chat.completion"
    assert (whole.usage.completion_tokens, whole.choices[0].finish_reason) == (10, "length") \
        or whole.choices[0].finish_reason == "stop" and whole.usage.completion_tokens <= 10
    assert whole.usage.prompt_tokens == len(engine.chat_prompt([{"role": "user",
                                                                 "content": "How do I resume training?"}]))
    streamed, chunks = streamed_text(chat(api, model, stream=True, stream_options={"include_usage": True}))
    assert streamed == text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_sse_stream_ends_with_done(served):
    request = urllib.request.Request(f"{served.url}/completions", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": ENDPOINT, "prompt": "Hello", "max_tokens": 4,
                                                      "temperature": 0, "stream": True}).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "text_completion.chunk"


@pytest.mark.parametrize("model", [ENDPOINT, "verbose"])
def test_completions_stream_and_not(served, model):
    api = client(served.url)
    whole = api.completions.create(model=model, prompt="The checkpoint", max_tokens=6, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].text
    streamed = "".join(c.choices[0].text for c in api.completions.create(
        model=model, prompt="The checkpoint", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == whole.choices[0].text
    assert whole.usage.completion_tokens <= 6


def test_adapters_answer_differently_from_the_base_and_each_other(served):
    api = client(served.url)
    texts = {model: chat(api, model).choices[0].message.content for model in (ENDPOINT, "concise", "verbose")}
    assert len(set(texts.values())) == 3, texts


def test_greedy_is_deterministic_and_a_seed_repeats_sampling(served):
    api = client(served.url)
    first, second = chat(api, "concise", n=2), chat(api, "concise")
    assert first.choices[0].message.content == first.choices[1].message.content \
        == second.choices[0].message.content
    sampled = [chat(api, ENDPOINT, temperature=1.0, top_p=0.9, seed=7, max_tokens=12).choices[0].message.content
               for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_max_tokens_and_stop_are_honoured(served):
    api = client(served.url)
    short = chat(api, ENDPOINT, max_tokens=3)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    full = chat(api, ENDPOINT, max_tokens=12).choices[0].message.content
    assert len(full) >= 4, full
    stop = full[2:4]
    cut = chat(api, ENDPOINT, max_tokens=12, stop=[stop])
    assert cut.choices[0].message.content == full[:full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed, _ = streamed_text(chat(api, ENDPOINT, max_tokens=12, stop=stop, stream=True))
    assert streamed == full[:full.find(stop)]


def test_default_max_tokens_is_the_configured_one(served):
    api = client(served.url)
    response = api.chat.completions.create(model=ENDPOINT, messages=[{"role": "user", "content": "Go on"}],
                                           temperature=0)
    assert response.usage.completion_tokens <= 12
    assert response.usage.completion_tokens == 12 or response.choices[0].finish_reason == "stop"


# prompt templates

def test_template_model_answers_the_filled_template(served):
    api = client(served.url)
    review = "Arrived broken, support never answered."
    conversation = [{"role": "user", "content": "An earlier review."}, {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": review}]  # {input} is the last user message
    answer = api.chat.completions.create(model=f"{ENDPOINT}:reviews", messages=conversation,
                                         extra_body={"template_args": {"product": "kettle"}})
    filled = REVIEW_TEMPLATE.format(product="kettle", input=review, language="English")
    reference = api.chat.completions.create(
        model=ENDPOINT, temperature=0, max_tokens=8,
        messages=[{"role": "system", "content": "You rate reviews."}, {"role": "user", "content": filled}])
    assert answer.choices[0].message.content == reference.choices[0].message.content
    assert answer.usage.prompt_tokens == reference.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError, match="product"):
        api.chat.completions.create(model=f"{ENDPOINT}:reviews", messages=[{"role": "user", "content": review}])


# errors

def test_unknown_model_is_404_in_openais_shape(served):
    with pytest.raises(openai.NotFoundError) as raised:
        chat(client(served.url), "gpt-4")
    assert raised.value.body["code"] == "model_not_found" and raised.value.body["param"] == "model"


def post_raw(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(f"{url}/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"} | (headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def test_malformed_json_and_invalid_fields_are_400(served):
    status, _, body = post_raw(served.url, b'{"model": "demo", "messages": [')
    assert status == 400 and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        chat(client(served.url), ENDPOINT, temperature=7)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client(served.url).chat.completions.create(model=ENDPOINT, messages=[])


def test_prompt_longer_than_the_context_is_400_while_others_are_served(served, engine):
    api = client(served.url)
    too_long = "word " * engine.context_length
    with ThreadPoolExecutor(4) as pool:
        good = [pool.submit(chat, api, ENDPOINT) for _ in range(3)]
        with pytest.raises(openai.BadRequestError) as raised:
            chat(api, ENDPOINT, too_long)
        assert all(f.result().choices[0].message.content for f in good)
    assert raised.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        chat(api, ENDPOINT, max_tokens=engine.context_length)
    assert chat(api, ENDPOINT).choices[0].message.content


@contextmanager
def gated_generate(engine, monkeypatch):
    """Holds every generate call until the test opens the gate, so a test can arrange the queue."""
    gate = threading.Event()
    original = engine.model.generate

    def held(*args, **kwargs):
        assert gate.wait(30), "the test never opened the gate"
        return original(*args, **kwargs)

    monkeypatch.setattr(engine.model, "generate", held)
    try:
        yield gate
    finally:
        gate.set()


def wait_for(condition, what: str, seconds: float = 20):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_full_queue_answers_503_with_retry_after(served, engine, monkeypatch):
    monkeypatch.setattr(engine, "queue_limit", 2)
    api = client(served.url)
    with gated_generate(engine, monkeypatch) as gate, ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(chat, api, ENDPOINT) for _ in range(2)]
        wait_for(lambda: engine._queued_rows == 2, "two queued requests")
        with pytest.raises(openai.InternalServerError) as raised:
            chat(api, ENDPOINT)
        gate.set()
        assert all(f.result().choices[0].message.content for f in waiting)
    assert raised.value.status_code == 503 and raised.value.response.headers["retry-after"] == "1"
    assert raised.value.body["code"] == "overloaded"


# batching

def test_concurrent_requests_share_generate_calls_and_batches_never_mix_adapters(served, engine, monkeypatch):
    api = client(served.url)
    models_ = [ENDPOINT, "concise"] * 4
    reference = {model: chat(api, model).choices[0].message.content for model in set(models_)}
    seen_adapters = []
    original_run = engine._run_batch

    def recording(batch):
        seen_adapters.append({job.sampling.adapter for job in batch})
        return original_run(batch)

    monkeypatch.setattr(engine, "_run_batch", recording)
    calls = engine.generate_calls
    with gated_generate(engine, monkeypatch) as gate, ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(chat, api, model) for model in models_]
        # The first batch is held in generate until all eight are queued: the rest must then share calls.
        wait_for(lambda: engine._queued_rows == 8, "eight queued requests")
        gate.set()
        texts = [f.result().choices[0].message.content for f in futures]
    assert texts == [reference[model] for model in models_]
    assert all(len(adapters) == 1 for adapters in seen_adapters), seen_adapters
    assert engine.generate_calls - calls <= 3, engine.batch_sizes[calls:]
    assert sum(engine.batch_sizes[calls:]) == 8


def test_eight_like_requests_are_one_or_two_generate_calls_with_the_answers_they_get_alone(served, engine,
                                                                                           monkeypatch):
    api = client(served.url)
    questions = [f"question {'?' * i}" for i in range(8)]  # different lengths: the batch is padded
    alone = [chat(api, "verbose", question).choices[0].message.content for question in questions]
    calls = engine.generate_calls
    with gated_generate(engine, monkeypatch) as gate, ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(chat, api, "verbose", question) for question in questions]
        wait_for(lambda: engine._queued_rows == 8, "eight queued requests")
        gate.set()
        texts = [f.result().choices[0].message.content for f in futures]
    assert engine.generate_calls - calls <= 2 and max(engine.batch_sizes[calls:]) >= 4, engine.batch_sizes[calls:]
    assert texts == alone


def test_seeded_sampling_requests_are_never_batched_so_each_repeats_its_sample(served, engine, monkeypatch):
    api = client(served.url)
    options = dict(temperature=1.0, seed=11, max_tokens=12)
    alone = chat(api, ENDPOINT, **options).choices[0].message.content
    calls = engine.generate_calls
    with gated_generate(engine, monkeypatch) as gate, ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(chat, api, ENDPOINT, **options) for _ in range(3)]
        wait_for(lambda: engine._queued_rows == 3, "three queued requests")
        gate.set()
        assert [f.result().choices[0].message.content for f in futures] == [alone] * 3
    assert engine.batch_sizes[calls:] == [1, 1, 1]


# authentication

def test_api_keys_401_without_or_with_a_wrong_key_and_keys_are_never_logged(config, engine, caplog):
    from kubeforge_workloads.serve.app import create_app

    caplog.set_level(logging.DEBUG)
    with LiveApp(create_app(config, engine, api_keys=["other-key", API_KEY])) as live:
        with pytest.raises(openai.AuthenticationError):
            client(live.url, "sk-wrong").models.list()
        status, _, body = post_raw(live.url, json.dumps({"model": ENDPOINT, "messages": []}).encode())
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            chat(client(live.url, API_KEY[:-1]), ENDPOINT)
        assert [m.id for m in client(live.url, API_KEY).models.list()][0] == ENDPOINT
        assert chat(client(live.url, API_KEY), ENDPOINT).choices[0].message.content
    assert API_KEY not in caplog.text and "sk-wrong" not in caplog.text


def test_api_keys_are_required_under_a_route_prefix_too(config, engine):
    from fastapi import FastAPI

    from kubeforge_workloads.serve.app import create_app

    # Ray Serve mounts the application at its route prefix, as this mount does.
    mounted = FastAPI()
    mounted.mount("/team/demo", create_app(config, engine, api_keys=[API_KEY]))
    with LiveApp(mounted) as live:
        url = f"http://127.0.0.1:{live.port}/team/demo/v1"
        with pytest.raises(openai.AuthenticationError):
            client(url, "sk-wrong").models.list()
        with pytest.raises(openai.AuthenticationError):
            chat(client(url), ENDPOINT)
        assert chat(client(url, API_KEY), ENDPOINT).choices[0].message.content
        with urllib.request.urlopen(f"http://127.0.0.1:{live.port}/team/demo/healthz", timeout=10) as response:
            assert response.status == 200


def test_api_keys_come_from_the_named_variable_one_per_line(monkeypatch):
    from kubeforge_workloads.serve.app import read_api_keys

    monkeypatch.setenv("KEYS", "first\n\n  second  \n")
    assert read_api_keys("KEYS") == ["first", "second"] and read_api_keys(None) is None
    monkeypatch.setenv("KEYS", "\n")
    with pytest.raises(ValueError, match="KEYS.*no keys"):
        read_api_keys("KEYS")


def test_invalid_args_name_the_field(models):
    from kubeforge_workloads.serve.app import build

    with pytest.raises(ValueError, match=r"^Serve application args: engine.kind: "):
        build(app_args(models, engine={"kind": "tgi"}))
    with pytest.raises(ValueError, match=r"args: base: Field required"):
        build({"endpoint": "ns/x", "engine": {"kind": "transformers"}})


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_the_vllm_engine_without_vllm_installed_is_a_clear_error(models, tmp_path):
    from kubeforge_workloads.common.errors import UserError
    from kubeforge_workloads.serve.app import load_engine, validate_args

    config = validate_args(app_args(models, engine={"kind": "vllm"}, adapters=[], templates=[]))
    with pytest.raises(UserError, match="engine.kind vllm needs the vllm package"):
        load_engine(config, tmp_path)


# mixture of experts

def test_a_mixtral_style_moe_model_is_served(models, tmp_path):
    from kubeforge_workloads.serve.app import create_app, load_engine, validate_args

    config = validate_args(app_args(models, base={"name": "moe", "uri": models["moe"]}, adapters=[], templates=[]))
    moe = load_engine(config, tmp_path)
    assert moe.model.config.model_type == "mixtral" and moe.context_length == 256
    with LiveApp(create_app(config, moe)) as live, closing(moe):
        api = client(live.url)
        first, second = chat(api, "moe"), chat(api, "moe")
        assert first.choices[0].message.content == second.choices[0].message.content
        assert first.usage.completion_tokens > 0
        streamed, _ = streamed_text(chat(api, "moe", stream=True))
        assert streamed == first.choices[0].message.content


# retrieval-augmented generation

DOCUMENTS = {
    "guide/resume.md": "Resume a FineTune from its last checkpoint: Kubeforge restarts the attempt from S3.",
    "guide/serving.md": "A ServingEndpoint serves a base model and its LoRA adapters behind an API key.",
    "guide/index.md": "A VectorIndex embeds documents with MiniLM and stores versions in the object store.",
}
INDEX_LOCATION = f"s3://{BUCKET}/ns/VectorIndex/docs"


def write_index_version(root) -> None:
    """One committed VectorIndex version over DOCUMENTS, written with the index workload's own library."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kubeforge.api.vectorindex import DEFAULT_EMBEDDING_MODEL
    from kubeforge.storage.layout import INDEX_CHUNKS_FILE, INDEX_DOCUMENTS_FILE, INDEX_VECTORS_FILE
    from kubeforge.storage.objectstore import S3ObjectStore
    from kubeforge_workloads.index import engine as index_engine
    from kubeforge_workloads.index.embedding import encode, load_model
    from kubeforge_workloads.index.query import prefix_of
    from kubeforge_workloads.index.versions import commit_version

    sources, texts = list(DOCUMENTS), list(DOCUMENTS.values())
    vectors = encode(load_model(DEFAULT_EMBEDDING_MODEL, "cpu"), texts, 8, True)
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "chunk_id": [f"{source}#0" for source in sources], "document_id": sources, "text": texts,
        "metadata": [json.dumps({"source": source, "format": "md"}) for source in sources],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])}),
        root / INDEX_CHUNKS_FILE)
    pq.write_table(pa.table({"object": sources}), root / INDEX_DOCUMENTS_FILE)
    index_engine.save(index_engine.build(index_engine.prepare(np.asarray(vectors), "cosine"), "cosine", "flat"),
                      str(root / INDEX_VECTORS_FILE))
    commit_version(S3ObjectStore(), prefix_of(INDEX_LOCATION), 1, root, {
        "metric": "cosine", "dims": int(vectors.shape[1]), "index": {"type": "flat"},
        "embedding": {"model": DEFAULT_EMBEDDING_MODEL, "normalize": True}})


@pytest.fixture(scope="module")
def rag_config(models, tmp_path_factory):
    from kubeforge_workloads.serve.app import validate_args

    write_index_version(tmp_path_factory.mktemp("index"))
    return validate_args(app_args(models, rag={"index": INDEX_LOCATION, "version": 1, "top_k": 2}))


def test_rag_answers_from_retrieved_chunks_and_returns_them(rag_config, engine):
    from kubeforge_workloads.serve.app import RAG_PROMPT, create_app, open_retriever

    question = "How do I resume training from a checkpoint?"
    with LiveApp(create_app(rag_config, engine, retriever=open_retriever(rag_config))) as live:
        api = client(live.url)
        answer = chat(api, ENDPOINT, question)
        context = answer.model_extra["context"]
        assert [c["source"] for c in context][0] == "guide/resume.md" and len(context) == 2
        assert all(set(c) == {"id", "score", "source", "text"} for c in context)
        assert context[0]["score"] > context[1]["score"] and context[0]["id"] == "guide/resume.md#0"
        assert context[0]["text"] == DOCUMENTS["guide/resume.md"]
        # The answer is the model's answer to the prompt built from exactly those chunks.
        prompt = RAG_PROMPT.format(context="\n\n".join(c["text"] for c in context), input=question)
        with LiveApp(create_app(rag_config.model_copy(update={"rag": None}), engine)) as plain:
            reference = chat(client(plain.url), ENDPOINT, prompt)
        assert answer.choices[0].message.content == reference.choices[0].message.content
        assert answer.usage.prompt_tokens == reference.usage.prompt_tokens
        adapter_answer = chat(api, "concise", question)
        assert adapter_answer.model_extra["context"] == context
        stream = list(chat(api, ENDPOINT, question, stream=True))
        assert stream[0].model_extra["context"] == context
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) \
            == answer.choices[0].message.content

    hidden = rag_config.model_copy(update={"rag": rag_config.rag.model_copy(update={"include_context": False})})
    with LiveApp(create_app(hidden, engine, retriever=open_retriever(hidden))) as live:
        answer_without = chat(client(live.url), ENDPOINT, question)
        assert "context" not in (answer_without.model_extra or {})
        assert answer_without.choices[0].message.content == answer.choices[0].message.content


def test_rag_keeps_the_best_ranked_chunks_that_fit_the_context_with_room_for_the_answer(rag_config, engine,
                                                                                          monkeypatch):
    from kubeforge_workloads.serve.app import RAG_PROMPT, create_app, open_retriever

    question = "How do I resume training from a checkpoint?"
    with LiveApp(create_app(rag_config, engine, retriever=open_retriever(rag_config))) as live:
        both = chat(client(live.url), ENDPOINT, question).model_extra["context"]
    one_chunk_prompt = RAG_PROMPT.format(context=both[0]["text"], input=question)
    fits_one = len(engine.chat_prompt([{"role": "user", "content": one_chunk_prompt}])) + 10
    monkeypatch.setattr(engine, "context_length", fits_one)
    with LiveApp(create_app(rag_config, engine, retriever=open_retriever(rag_config))) as live:
        answer = chat(client(live.url), ENDPOINT, question)  # max_tokens 10: two chunks would not fit
    assert answer.model_extra["context"] == both[:1]
    assert answer.usage.prompt_tokens + 10 <= fits_one


# embeddings

@pytest.fixture(scope="module")
def embedding_app(models, engine):
    from kubeforge_workloads.serve.app import create_app, validate_args
    from kubeforge_workloads.serve.embeddings import open_embedder

    config = validate_args(app_args(models, embeddings={"name": "minilm", "model": "all-MiniLM-L6-v2"}))
    with LiveApp(create_app(config, engine, api_keys=[API_KEY], embedder=open_embedder(config))) as live:
        yield live


def test_embeddings_match_sentence_transformers_through_the_openai_client_as_float_and_base64(embedding_app):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from kubeforge_workloads.index.embedding import model_path

    texts = ["How do I resume training?", "Ray Serve autoscales replicas."]
    api = client(embedding_app.url, API_KEY)
    assert "minilm" in {m.id for m in api.models.list()}
    floats = api.embeddings.create(model="minilm", input=texts, encoding_format="float")
    packed = api.embeddings.create(model="minilm", input=texts)  # the client asks for base64 and decodes it
    expected = SentenceTransformer(model_path("all-MiniLM-L6-v2"), device="cpu").encode(
        texts, normalize_embeddings=True)
    for response in (floats, packed):
        vectors = np.array([item.embedding for item in sorted(response.data, key=lambda d: d.index)])
        assert vectors.shape == (2, 384)
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert response.model == "minilm" and response.usage.prompt_tokens > len(texts)


def test_embedding_errors_are_openai_shaped(embedding_app, served):
    api = client(embedding_app.url, API_KEY)
    with pytest.raises(openai.NotFoundError, match="does not embed here"):
        api.embeddings.create(model=ENDPOINT, input="x")
    with pytest.raises(openai.BadRequestError, match="cannot shorten"):
        api.embeddings.create(model="minilm", input="x", dimensions=128)
    with pytest.raises(openai.BadRequestError, match="token ids"):
        api.embeddings.create(model="minilm", input=[[1, 2, 3]])
    with pytest.raises(openai.BadRequestError, match="POST /v1/embeddings"):
        chat(api, "minilm")
    with pytest.raises(openai.AuthenticationError):
        client(embedding_app.url, "wrong").embeddings.create(model="minilm", input="x")
    with pytest.raises(openai.NotFoundError, match="embedding models: none"):
        client(served.url).embeddings.create(model="minilm", input="x")


# request traces in MLflow

def test_sampled_requests_are_traced_in_mlflow_at_the_sample_rate_without_the_api_key(config, engine, tracking_uri):
    import random

    import mlflow

    from kubeforge.api.serveapp import ServedTracing
    from kubeforge_workloads.serve.app import create_app
    from kubeforge_workloads.serve.tracing import RequestTracer, open_tracer

    assert open_tracer(config) is None  # no spec.tracing: no tracer
    tracer = RequestTracer(ServedTracing(experiment="ns/ServingEndpoint", sample_rate=1.0), config.endpoint)
    with LiveApp(create_app(config, engine, api_keys=[API_KEY], tracer=tracer)) as live:
        api = client(live.url, API_KEY)
        answer = chat(api, "concise", "Where are checkpoints stored?").choices[0].message.content
        streamed, _ = streamed_text(chat(api, ENDPOINT, "What is LoRA?", stream=True))
        mlflow.flush_trace_async_logging()
        experiment = mlflow.get_experiment_by_name("ns/ServingEndpoint")
        traces = mlflow.search_traces(experiment_ids=[experiment.experiment_id], return_type="list", flush=True)
    assert len(traces) == 2
    by_model = {t.data.spans[0].name: t.data.spans[0] for t in traces}
    adapter, base = by_model["concise"], by_model[ENDPOINT]
    assert adapter.inputs == {"messages": [{"role": "user", "content": "Where are checkpoints stored?"}]}
    assert adapter.outputs["choices"][0]["text"] == answer and base.outputs["choices"][0]["text"] == streamed
    assert adapter.attributes["stream"] is False and base.attributes["stream"] is True
    assert adapter.attributes["completion_tokens"] > 0 and adapter.attributes["temperature"] == 0.0
    assert all(t.info.state.value == "OK" for t in traces)
    assert not any(API_KEY in t.to_json() for t in traces)

    # A rate records that share of requests: those the tracer's chooser picks, no more, no fewer.
    chooser, replay = random.Random(3), random.Random(3)
    expected = sum(replay.random() < 0.5 for _ in range(8))
    tracer = RequestTracer(ServedTracing(experiment="sampled", sample_rate=0.5), config.endpoint, chooser)
    with LiveApp(create_app(config, engine, tracer=tracer)) as live:
        for _ in range(8):
            chat(client(live.url), ENDPOINT, max_tokens=2)
        mlflow.flush_trace_async_logging()
        experiment = mlflow.get_experiment_by_name("sampled")
        traces = mlflow.search_traces(experiment_ids=[experiment.experiment_id], return_type="list", flush=True)
    assert 0 < expected < 8 and len(traces) == expected
