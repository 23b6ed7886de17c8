"""Text generation behind the endpoint: a transformers model (plus peft LoRA adapters) with dynamic batching on
CPU, or vLLM's engine on GPUs.

Dynamic batching: requests wait a few milliseconds in a queue; those with the same adapter and sampling
parameters run as one left-padded `generate` call of at most `max_num_seqs` sequences. A batch never mixes
adapters (peft applies one active adapter to the whole batch) nor sampling parameters (`generate` takes one
temperature/top_p/seed for all rows); max_tokens and stop strings are per row, enforced by a stopping criterion
that also streams each row's text as it is produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Optional, Union

from kubeforge_workloads.serve.protocol import ApiError

BATCH_WAIT_S = 0.02
"""How long a batch may wait for requests that have arrived but are still being prepared (tokenized, retrieved
for) to join it. A request that is alone starts at once; what arrives while a batch runs forms the next one."""
QUEUE_FACTOR = 4
"""Sequences queued or running per replica, in units of max_num_seqs, before new requests get 503."""
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class Sampling:
    """What must be equal for requests to share a generate call."""

    adapter: Optional[str]
    temperature: float
    top_p: float
    seed: Optional[int]

    @staticmethod
    def of(adapter: Optional[str], temperature: float, top_p: float, seed: Optional[int]) -> "Sampling":
        if temperature == 0:  # greedy ignores top_p and seed: let all greedy requests share batches
            return Sampling(adapter, 0.0, 1.0, None)
        return Sampling(adapter, float(temperature), float(top_p), seed)


@dataclass
class Delta:
    index: int
    text: str


@dataclass
class Finish:
    index: int
    reason: str
    """"stop" (end of sequence or a stop string) or "length" (max_tokens)."""
    completion_tokens: int


@dataclass(eq=False)
class Job:
    prompt_ids: list[int]
    sampling: Sampling
    max_tokens: int
    stop: tuple[str, ...]
    n: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def send(self, event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class TransformersEngine:
    def __init__(self, model, tokenizer, adapters: list[str], max_num_seqs: int, context_length: int,
                 batch_wait_s: float = BATCH_WAIT_S):
        self.model, self.tokenizer, self.adapters = model, tokenizer, list(adapters)
        self.max_num_seqs, self.context_length, self.batch_wait_s = max_num_seqs, context_length, batch_wait_s
        self.queue_limit = max_num_seqs * QUEUE_FACTOR
        self.generate_calls = 0
        self.batch_sizes: list[int] = []
        self._pending: list[Job] = []
        self._queued_rows = 0
        self._arriving = 0
        self._wakeup: Optional[asyncio.Event] = None
        self._worker: Optional[asyncio.Task] = None
        # One thread runs generate: the active adapter and the torch seed are per-model state.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)

    def close(self) -> None:
        """Stop the generate thread once the running batch ends (queued requests are not answered)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    # prompts
    def chat_prompt(self, messages: list[dict]) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self.tokenizer(text, add_special_tokens=False).input_ids
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self.tokenizer(text).input_ids

    def text_prompt(self, text: str) -> list[int]:
        return self.tokenizer(text).input_ids

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    # generation
    @contextlib.contextmanager
    def arriving(self):
        """Around a request's preparation up to generate(): a batch about to start waits (briefly) for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    def generate(self, prompt_ids: list[int], sampling: Sampling, max_tokens: int, stop: tuple[str, ...],
                 n: int) -> AsyncIterator[Union[Delta, Finish]]:
        """Queue the request now (ApiError when the queue is full); iterate the result for its deltas and one
        Finish per choice (n of them), as the batch produces them."""
        if self._queued_rows + n > self.queue_limit:
            raise ApiError(503, f"the replica has {self._queued_rows} sequences queued or running (limit "
                                f"{self.queue_limit}); retry shortly", type="server_overloaded",
                           code="overloaded", headers={"Retry-After": str(RETRY_AFTER_S)})
        if n > self.max_num_seqs:
            raise ApiError(400, f"n={n} is more than the engine's max_num_seqs ({self.max_num_seqs})", param="n")
        job = Job(prompt_ids, sampling, max_tokens, stop, n, asyncio.get_running_loop())
        self._submit(job)
        return self._events(job)

    async def _events(self, job: Job) -> AsyncIterator[Union[Delta, Finish]]:
        finished, n = 0, job.n
        try:
            while finished < n:
                for event in _coalesced([await job.events.get()], job.events):
                    if isinstance(event, BaseException):
                        raise event
                    finished += isinstance(event, Finish)
                    yield event
        finally:
            job.cancelled = True  # a client that went away frees its rows in the running batch

    def _submit(self, job: Job) -> None:
        # The batcher lives on the loop that serves requests (started on first use: the app may be served by
        # a loop that did not exist when the engine was built).
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not job.loop:
            self._wakeup = asyncio.Event()
            self._worker = job.loop.create_task(self._batch_loop())
        self._pending.append(job)
        self._queued_rows += job.n
        self._wakeup.set()

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = loop.time() + self.batch_wait_s
            while self._arriving and sum(job.n for job in self._pending) < self.max_num_seqs \
                    and loop.time() < deadline:
                await asyncio.sleep(0.001)
            batch = self._take_batch()
            try:
                await loop.run_in_executor(self._executor, self._run_batch, batch)
            finally:
                self._queued_rows -= sum(job.n for job in batch)

    def _take_batch(self) -> list[Job]:
        """The oldest request and the waiting ones it can share a generate call with (first come, first in)."""
        key, rows, batch = self._pending[0].sampling, 0, []
        # A seed promises the same sample every time: no other request may share (and shift) its random draws.
        room = self._pending[0].n if key.seed is not None else self.max_num_seqs
        for job in self._pending:
            if job.sampling == key and rows + job.n <= room:
                batch.append(job)
                rows += job.n
        self._pending = [job for job in self._pending if job not in batch]
        return batch

    def _run_batch(self, batch: list[Job]) -> None:
        import torch
        from transformers import StoppingCriteriaList

        rows = [_Row(job, index) for job in batch for index in range(job.n)]
        tracker = _RowTracker(rows, self.tokenizer, self.eos_ids)
        width = max(len(job.prompt_ids) for job in batch)
        ids = [[self.pad_id] * (width - len(r.job.prompt_ids)) + r.job.prompt_ids for r in rows]
        mask = [[0] * (width - len(r.job.prompt_ids)) + [1] * len(r.job.prompt_ids) for r in rows]
        sampling = batch[0].sampling
        options = dict(max_new_tokens=max(job.max_tokens for job in batch), pad_token_id=self.pad_id,
                       stopping_criteria=StoppingCriteriaList([tracker]))
        if sampling.temperature > 0:
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        try:
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            device = next(self.model.parameters()).device
            with self._adapter(sampling.adapter), torch.inference_mode():
                self.generate_calls += 1
                self.batch_sizes.append(len(rows))
                self.model.generate(input_ids=torch.tensor(ids, device=device),
                                    attention_mask=torch.tensor(mask, device=device), **options)
            tracker.finish_all("length")
        except Exception as error:  # every request of the batch learns why; the replica keeps serving
            for job in batch:
                job.send(ApiError(500, f"generation failed: {error}", type="server_error"))

    def _adapter(self, name: Optional[str]):
        if not self.adapters:
            return contextlib.nullcontext()
        if name is None:
            return self.model.disable_adapter()
        self.model.set_adapter(name)
        return contextlib.nullcontext()


def _coalesced(events: list, queue: asyncio.Queue) -> list:
    """The events already waiting, consecutive deltas of one choice merged: a client that reads slower than the
    model generates gets fewer, larger chunks instead of falling further behind."""
    while not queue.empty():
        event = queue.get_nowait()
        last = events[-1]
        if isinstance(event, Delta) and isinstance(last, Delta) and last.index == event.index:
            events[-1] = Delta(event.index, last.text + event.text)
        else:
            events.append(event)
    return events


@dataclass
class _Row:
    job: Job
    index: int
    tokens: list[int] = field(default_factory=list)
    sent: int = 0
    """Characters of the decoded text already sent."""
    done: bool = False


class _RowTracker:
    """A transformers stopping criterion that sees each new token of every row: it streams the row's text,
    and finishes the row at end of sequence, a stop string, its own max_tokens, or when its client is gone."""

    def __init__(self, rows: list[_Row], tokenizer, eos_ids: set[int]):
        self.rows, self.tokenizer, self.eos_ids = rows, tokenizer, eos_ids

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        for row, token in zip(self.rows, input_ids[:, -1].tolist()):
            if row.done:
                continue
            if row.job.cancelled:
                row.done = True
            elif token in self.eos_ids:
                self._finish(row, self._text(row), "stop", len(row.tokens) + 1)
            else:
                row.tokens.append(token)
                self._advance(row)
        return torch.tensor([row.done for row in self.rows], device=input_ids.device)

    def _text(self, row: _Row) -> str:
        return self.tokenizer.decode(row.tokens, skip_special_tokens=True)

    def _advance(self, row: _Row) -> None:
        text, stops = self._text(row), row.job.stop
        cuts = [i for i in (text.find(s, max(0, row.sent - len(s) + 1)) for s in stops) if i >= 0]
        if cuts:
            self._finish(row, text[:min(cuts)], "stop", len(row.tokens))
        elif len(row.tokens) >= row.job.max_tokens:
            self._finish(row, text, "length", len(row.tokens))
        else:
            # Hold back what could be the start of a stop string, and a half-decoded character.
            safe = len(text) - max((len(s) - 1 for s in stops), default=0)
            while safe > row.sent and text[safe - 1] == "\ufffd":
                safe -= 1
            if safe > row.sent:
                row.job.send(Delta(row.index, text[row.sent:safe]))
                row.sent = safe

    def _finish(self, row: _Row, text: str, reason: str, tokens: int) -> None:
        if len(text) > row.sent:
            row.job.send(Delta(row.index, text[row.sent:]))
            row.sent = len(text)
        row.done = True
        row.job.send(Finish(row.index, reason, tokens))

    def finish_all(self, reason: str) -> None:
        for row in self.rows:
            if not row.done and not row.job.cancelled:
                self._finish(row, self._text(row), reason, len(row.tokens))


def torch_dtype(name: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def load_transformers_engine(base_dir: Path, adapter_dirs: dict[str, Path], engine_config) -> TransformersEngine:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype(engine_config.dtype))
    if torch.cuda.is_available():
        model = model.to("cuda")
    if adapter_dirs:
        from peft import PeftModel

        # The base weights are loaded once; each adapter adds only its LoRA matrices.
        names = list(adapter_dirs)
        model = PeftModel.from_pretrained(model, str(adapter_dirs[names[0]]), adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(str(adapter_dirs[name]), adapter_name=name)
    model.eval()
    model_limit = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    context = min(engine_config.max_model_len or model_limit, model_limit)
    return TransformersEngine(model, tokenizer, list(adapter_dirs), engine_config.max_num_seqs, int(context))


class VllmEngine:
    """vLLM's async engine with multi-LoRA: its continuous batching replaces the transformers batcher."""

    def __init__(self, base_dir: Path, adapter_dirs: dict[str, Path], engine_config, gpus: int):
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine
        except ImportError:
            from kubeforge_workloads.common.errors import UserError

            raise UserError("engine.kind vllm needs the vllm package, which this image lacks: use an image with "
                            "kubeforge[gpu] installed, or engine transformers") from None
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(base_dir)
        self.adapters = list(adapter_dirs)
        self._adapter_dirs = adapter_dirs
        args = AsyncEngineArgs(model=str(base_dir), dtype=engine_config.dtype,
                               max_model_len=engine_config.max_model_len,
                               gpu_memory_utilization=engine_config.gpu_memory_utilization,
                               max_num_seqs=engine_config.max_num_seqs,
                               tensor_parallel_size=engine_config.tensor_parallel_size,
                               enable_lora=bool(adapter_dirs), max_loras=max(1, len(adapter_dirs)))
        self.engine = AsyncLLMEngine.from_engine_args(args)
        self.context_length = engine_config.max_model_len or _model_context(base_dir)
        self.max_num_seqs = engine_config.max_num_seqs
        self.queue_limit = engine_config.max_num_seqs * QUEUE_FACTOR
        self._running = 0

    def arriving(self):
        return contextlib.nullcontext()  # vLLM batches continuously: nothing waits for arrivals

    chat_prompt = TransformersEngine.chat_prompt
    text_prompt = TransformersEngine.text_prompt
    count_tokens = TransformersEngine.count_tokens

    def generate(self, prompt_ids: list[int], sampling: Sampling, max_tokens: int, stop: tuple[str, ...],
                 n: int) -> AsyncIterator[Union[Delta, Finish]]:
        if self._running + n > self.queue_limit:
            raise ApiError(503, "the replica is at its queue limit; retry shortly", type="server_overloaded",
                           code="overloaded", headers={"Retry-After": str(RETRY_AFTER_S)})
        return self._stream(prompt_ids, sampling, max_tokens, stop, n)

    async def _stream(self, prompt_ids, sampling: Sampling, max_tokens: int, stop: tuple[str, ...], n: int):
        from vllm import SamplingParams, TokensPrompt
        from vllm.lora.request import LoRARequest

        params = SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed,
                                max_tokens=max_tokens, stop=list(stop) or None)
        lora = None
        if sampling.adapter is not None:
            lora = LoRARequest(sampling.adapter, self.adapters.index(sampling.adapter) + 1,
                               str(self._adapter_dirs[sampling.adapter]))
        sent = [0] * n
        self._running += n
        try:
            async for output in self.engine.generate(TokensPrompt(prompt_token_ids=prompt_ids), params,
                                                     request_id=uuid.uuid4().hex,
                                                     lora_request=lora):
                for choice in output.outputs:
                    if len(choice.text) > sent[choice.index]:
                        yield Delta(choice.index, choice.text[sent[choice.index]:])
                        sent[choice.index] = len(choice.text)
                if output.finished:
                    for choice in output.outputs:
                        yield Finish(choice.index, "length" if choice.finish_reason == "length" else "stop",
                                     len(choice.token_ids))
        finally:
            self._running -= n


def _model_context(model_dir: Path) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(model_dir).max_position_embeddings)
