"""The ServingEndpoint's Serve application: an OpenAI-compatible API (the official `openai` client works
unchanged) over the base model, its LoRA adapters, prompt templates (model `<endpoint>:<template>`) and,
when configured, retrieval from a VectorIndex: chat completions to the base model or an adapter are answered
from the chunks retrieved for the last user message (returned in the response's extra `context` field);
/v1/completions stays a plain continuation of the prompt.

    build(args)                 Ray Serve's application builder (the RayService's import path)
    create_app(config, engine)  the FastAPI app itself, what each replica serves (and what unit tests run)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from pydantic import ValidationError

from kubeforge.api.serveapp import ServeAppConfig, ServedTemplate
from kubeforge_workloads.serve.embeddings import EmbeddingRequest, open_embedder
from kubeforge_workloads.serve.engine import QUEUE_FACTOR, Delta, Sampling
from kubeforge_workloads.serve.metrics import ServeMetrics
from kubeforge_workloads.serve.tracing import RequestTracer, open_tracer
from kubeforge_workloads.serve.protocol import (
    DEFAULT_TEMPERATURE, DEFAULT_TOP_P, ApiError, ChatCompletionRequest, CompletionRequest, SamplingRequest,
    model_card, new_id, now, usage,
)

log = logging.getLogger("kubeforge.serve")

RAG_PROMPT = ("Answer the question using only the context below. If the context does not contain the answer, "
              "say so.\n\nContext:\n{context}\n\nQuestion: {input}")
SAMPLING_PARAMETERS = ("temperature", "top_p", "max_tokens", "stop", "seed", "n")
"""Template `parameters` keys that are sampling defaults rather than template fields."""


def read_api_keys(env_name: Optional[str]) -> Optional[list[str]]:
    """The accepted keys (one per line of the variable), or None when the endpoint has no authentication."""
    if env_name is None:
        return None
    keys = [line.strip() for line in os.environ.get(env_name, "").splitlines() if line.strip()]
    if not keys:
        raise ValueError(f"api_keys_env names {env_name}, which holds no keys: put one key per line in the "
                         "Secret the ServingEndpoint's auth.apiKeySecretRef names")
    return keys


class _Route:
    """What a request's `model` resolves to: which weights answer, and how its prompt is built."""

    def __init__(self, name: str, adapter: Optional[str] = None, template: Optional[ServedTemplate] = None):
        self.name, self.adapter, self.template = name, adapter, template


def create_app(config: ServeAppConfig, engine, api_keys: Optional[Sequence[str]] = None, retriever=None,
               embedder=None, tracer: Optional[RequestTracer] = None):
    """The FastAPI app serving `engine` as `config` describes. `api_keys` None accepts every request;
    `retriever` (an opened index version with .search(text, k)) is required when config.rag is set, `embedder`
    (serve.embeddings.Embedder) when config.embeddings is; `tracer` records sampled requests in MLflow."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    if config.rag is not None and retriever is None:
        raise ValueError("config.rag is set: pass the opened index version as retriever")
    if config.embeddings is not None and embedder is None:
        raise ValueError("config.embeddings is set: pass the loaded model as embedder")
    templates = {t.name: t for t in config.templates}
    if config.rag and config.rag.prompt_template and config.rag.prompt_template not in templates:
        raise ValueError(f"rag.prompt_template {config.rag.prompt_template!r} is not one of the templates "
                         f"{sorted(templates)}")
    routes = {config.base.name: _Route(config.base.name)}
    routes.update({a.name: _Route(a.name, adapter=a.name) for a in config.adapters})
    routes.update({f"{config.base.name}:{t.name}": _Route(f"{config.base.name}:{t.name}", template=t)
                   for t in config.templates})
    accepted = [key.encode() for key in api_keys] if api_keys is not None else None
    created = now()
    metrics = ServeMetrics(config.endpoint)
    app = FastAPI(title=f"kubeforge {config.endpoint}", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError):
        problem = error.errors()[0]
        if problem.get("type") == "json_invalid":
            return await api_error(_, ApiError(400, f"the request body is not valid JSON: {problem.get('msg')}",
                                               code="invalid_json"))
        param = ".".join(str(part) for part in problem.get("loc", ())[1:]) or None
        return await api_error(_, ApiError(400, f"{param or 'body'}: {problem.get('msg')}", param=param))

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        # Behind Ray Serve the app is mounted under the route prefix (root_path) and request.url.path carries
        # it: everything but the health route is authenticated, recognised by its path inside the app.
        inside = request.scope["path"].removeprefix(request.scope.get("root_path", "")) or "/"
        if accepted is not None and inside != "/healthz":
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            presented = key.strip().encode()
            # Compare with every key, always: the time taken tells nothing about which key came close.
            matches = [hmac.compare_digest(presented, candidate) for candidate in accepted]
            if scheme.lower() != "bearer" or not any(matches):
                return JSONResponse(ApiError(401, "missing or invalid API key: send Authorization: Bearer <key>",
                                             code="invalid_api_key").body(), status_code=401)
        return await call_next(request)

    @app.get("/v1/models")
    async def list_models():
        cards = [model_card(config.base.name, created)]
        cards += [model_card(a.name, created, parent=config.base.name) for a in config.adapters]
        cards += [model_card(name, created, parent=config.base.name)
                  for name, route in routes.items() if route.template is not None]
        if config.embeddings:
            cards.append(model_card(config.embeddings.name, created))
        return {"object": "list", "data": cards}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        if config.embeddings is None or body.model != config.embeddings.name:
            served = [config.embeddings.name] if config.embeddings else []
            raise ApiError(404, f"model {body.model!r} does not embed here; embedding models: {served or 'none'}",
                           param="model", code="model_not_found")
        return await asyncio.to_thread(embedder.respond, body)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    def route_of(model: str) -> _Route:
        if config.embeddings and model == config.embeddings.name:
            raise ApiError(400, f"{model!r} is an embedding model: POST /v1/embeddings", param="model")
        if model not in routes:
            raise ApiError(404, f"model {model!r} does not exist here; GET /v1/models lists {sorted(routes)}",
                           param="model", code="model_not_found")
        return routes[model]

    async def prepare(body: SamplingRequest, route: _Route, messages: Optional[list[dict]], prompt: Optional[str]):
        """Prompt token ids, sampling, max_tokens and retrieved context for one request."""
        context = None
        defaults = route.template.parameters if route.template else {}
        question = prompt if messages is None else next(
            (m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
        if route.template is not None:
            filled = fill_template(route.template, question, body.template_args)
            messages = ([{"role": "system", "content": route.template.system}] if route.template.system else [])
            messages.append({"role": "user", "content": filled})
        elif config.rag is not None and messages is not None:
            hits = await asyncio.get_running_loop().run_in_executor(
                None, lambda: retriever.search(question, config.rag.top_k))
            context = [{"id": h.chunk_id, "score": h.score, "source": h.metadata.get("source", h.document_id),
                        "text": h.text} for h in hits]
            rag_template = templates.get(config.rag.prompt_template) if config.rag.prompt_template else None
            system = [m for m in messages[:-1] if m["role"] in ("system", "developer")]
            if rag_template is not None and rag_template.system:
                system = [{"role": "system", "content": rag_template.system}]
            history = [m for m in messages[:-1] if m["role"] not in ("system", "developer")]

            def with_context(chunks: list[dict]) -> list[dict]:
                filled = fill_template(rag_template or ServedTemplate(name="rag", template=RAG_PROMPT), question,
                                       {**body.template_args, "context": "\n\n".join(c["text"] for c in chunks)})
                return system + history + [{"role": "user", "content": filled}]

            # The best-ranked chunks that fit the context with room for the answer; the response lists those.
            answer_room = getattr(body, "max_completion_tokens", None) or body.max_tokens or config.max_tokens
            while len(context) > 1 and len(engine.chat_prompt(with_context(context))) + answer_room \
                    > engine.context_length:
                context = context[:-1]
            messages = with_context(context)
        ids = engine.chat_prompt(messages) if messages is not None else engine.text_prompt(prompt)

        fields = body.model_fields_set

        def pick(name: str, fallback):
            value = getattr(body, name, None)
            return value if name in fields and value is not None else defaults.get(name, fallback)

        requested = getattr(body, "max_completion_tokens", None) or pick("max_tokens", None)
        room = engine.context_length - len(ids)
        if room <= 0:
            raise ApiError(400, f"the prompt has {len(ids)} tokens; this model's context is {engine.context_length} "
                                "tokens: shorten the messages", param="messages" if messages else "prompt",
                           code="context_length_exceeded")
        if requested is not None and requested > room:
            raise ApiError(400, f"the prompt has {len(ids)} tokens and max_tokens is {requested}: together more "
                                f"than this model's context of {engine.context_length} tokens; lower max_tokens",
                           param="max_tokens", code="context_length_exceeded")
        max_tokens = min(requested or config.max_tokens, room)
        stop = body.stop_strings() if "stop" in fields else tuple(_as_list(defaults.get("stop")))
        sampling = Sampling.of(route.adapter, float(pick("temperature", DEFAULT_TEMPERATURE)),
                               float(pick("top_p", DEFAULT_TOP_P)), pick("seed", None))
        return ids, sampling, max_tokens, stop, int(pick("n", 1)), context

    async def complete(body: SamplingRequest, messages: Optional[list[dict]], prompt: Optional[str], chat: bool):
        route, started = route_of(body.model), time.monotonic()
        with engine.arriving():
            ids, sampling, max_tokens, stop, n, context = await prepare(body, route, messages, prompt)
            events = engine.generate(ids, sampling, max_tokens, stop, n)
        request_id = new_id("chatcmpl" if chat else "cmpl")
        kind = "chat.completion" if chat else "text_completion"
        extra = {"context": context} if context is not None and config.rag.include_context else {}
        metrics.request(route.name)
        span = tracer.start(route.name, {"messages": messages} if chat else {"prompt": prompt}, {
            "request_id": request_id, "stream": bool(body.stream), "n": n, "max_tokens": max_tokens,
            "temperature": sampling.temperature, "top_p": sampling.top_p, "prompt_tokens": len(ids),
            "template": route.template.name if route.template else "",
            "retrieved_chunk_ids": [c["id"] for c in context or []]}) if tracer else None

        def traced(texts: list[str], finishes: list, generated: int, error: Optional[str] = None) -> None:
            if span is not None:
                tracer.finish(span, {"choices": [{"text": t, "finish_reason": f} for t, f in zip(texts, finishes)]},
                              {"completion_tokens": generated, "latency_s": round(time.monotonic() - started, 4)},
                              error)
        if not body.stream:
            texts, finishes = [""] * n, [None] * n
            generated = 0
            async for event in events:
                if isinstance(event, Delta):
                    texts[event.index] += event.text
                else:
                    finishes[event.index] = event.reason
                    generated += event.completion_tokens
            metrics.done(route.name, time.monotonic() - started, generated)
            traced(texts, finishes, generated)
            choices = [({"index": i, "message": {"role": "assistant", "content": texts[i]}} if chat else
                        {"index": i, "text": texts[i], "logprobs": None}) | {"finish_reason": finishes[i]}
                       for i in range(n)]
            return {"id": request_id, "object": kind, "created": now(), "model": route.name, "choices": choices,
                    "usage": usage(len(ids), generated), **extra}

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def stream():
            generated, first_token_at = 0, None
            texts, finishes, error = [""] * n, [None] * n, None
            chunk = {"id": request_id, "object": f"{kind}.chunk", "created": now(), "model": route.name}
            if chat:
                yield _sse(chunk | {"choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                 "finish_reason": None} for i in range(n)]} | extra)
            elif extra:
                yield _sse(chunk | {"choices": []} | extra)
            try:
                async for event in events:
                    if isinstance(event, Delta):
                        if first_token_at is None:
                            first_token_at = time.monotonic()
                            metrics.first_token(route.name, first_token_at - started)
                        texts[event.index] += event.text
                        choice = ({"delta": {"content": event.text}} if chat else {"text": event.text})
                        yield _sse(chunk | {"choices": [{"index": event.index, "finish_reason": None} | choice]})
                    else:
                        generated += event.completion_tokens
                        finishes[event.index] = event.reason
                        choice = {"delta": {}} if chat else {"text": ""}
                        yield _sse(chunk | {"choices": [{"index": event.index, "finish_reason": event.reason}
                                                        | choice]})
            except ApiError as failure:
                error = failure.message
                yield _sse(failure.body())
            if include_usage:
                yield _sse(chunk | {"choices": [], "usage": usage(len(ids), generated)})
            metrics.done(route.name, time.monotonic() - started, generated)
            traced(texts, finishes, generated, error)
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        return await complete(body, messages, None, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, f"prompt holds {len(prompts)} prompts; send one per request (or use n for several "
                                "completions of one prompt)", param="prompt")
        return await complete(body, None, prompts[0], chat=False)

    return app


def fill_template(template: ServedTemplate, user_input: str, template_args: dict[str, Any]) -> str:
    values = {k: v for k, v in template.parameters.items() if k not in SAMPLING_PARAMETERS}
    values.update(template_args)
    values["input"] = user_input
    try:
        return template.template.format(**values)
    except KeyError as missing:
        raise ApiError(400, f"template {template.name!r} needs the field {missing.args[0]}: send it in "
                            "template_args or set it in the template's parameters", param="template_args") from None
    except (IndexError, ValueError) as error:
        raise ApiError(400, f"template {template.name!r} could not be filled: {error}",
                       param="template_args") from None


def _as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


# Loading (what each replica does once) and the Ray Serve wrapping.

def validate_args(args: dict) -> ServeAppConfig:
    try:
        return ServeAppConfig.model_validate(args)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "args"
        raise ValueError(f"Serve application args: {where}: {problem['msg']} (the operator renders these from the "
                         "ServingEndpoint; check its spec)") from None


def load_engine(config: ServeAppConfig, cache: Optional[Path] = None, store=None):
    """Download the base model and adapters and start the configured engine."""
    from kubeforge_workloads.serve.weights import adapter_dir, model_dir

    cache = cache or Path(tempfile.mkdtemp(prefix="kubeforge-serve-"))
    base = model_dir(config.base.uri, cache / "base", store)
    adapters = {a.name: adapter_dir(a.uri, cache / "adapters" / a.name, store, a.name) for a in config.adapters}
    if config.engine.kind == "vllm":
        from kubeforge_workloads.serve.engine import VllmEngine

        return VllmEngine(base, adapters, config.engine, config.gpus_per_replica)
    from kubeforge_workloads.serve.engine import load_transformers_engine

    return load_transformers_engine(base, adapters, config.engine)


def open_retriever(config: ServeAppConfig, store=None):
    if config.rag is None:
        return None
    from kubeforge_workloads.index.query import open_index

    return open_index(config.rag.index, config.rag.version, store)


def build(args: dict):
    """Ray Serve's application builder: `args` is the operator's ServeAppConfig."""
    from ray import serve

    config = validate_args(args)

    # Ray's admission limit sits above the engine's queue, so overload is answered by the engine (503 with
    # Retry-After) instead of queueing in Ray's proxy. The operator's Serve config may override it.
    @serve.deployment(max_ongoing_requests=config.engine.max_num_seqs * QUEUE_FACTOR + 8)
    @serve.ingress()
    class OpenAIServer:
        def __init__(self, config_json: str):
            self.config = ServeAppConfig.model_validate_json(config_json)
            self.api_keys = read_api_keys(self.config.api_keys_env)
            self.engine = load_engine(self.config)
            self.retriever = open_retriever(self.config)
            self.embedder = open_embedder(self.config)
            self.tracer = open_tracer(self.config)
            log.info("serving %s: models %s", self.config.endpoint,
                     [self.config.base.name] + [a.name for a in self.config.adapters])

        def __serve_build_asgi_app__(self):
            return create_app(self.config, self.engine, self.api_keys, self.retriever, self.embedder, self.tracer)

    return OpenAIServer.bind(config.model_dump_json())
