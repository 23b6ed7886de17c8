"""ServingEndpoint overhead: tokens/s and time to first token through the OpenAI endpoint (the Serve
application's FastAPI app on uvicorn, loopback, the official `openai` client streaming) against raw
`model.generate` on the same model, prompts and machine, in one process and one run. The clients run in a
process of their own, as real clients do, so their parsing does not compete with the server for the GIL.

Concurrency 1: requests one after another; goal: endpoint tokens/s >= 0.95 x raw. Concurrency 8: eight clients at
once against eight threads each calling `generate` (what serving without a batcher does); goal: endpoint > raw,
thanks to dynamic batching. One left-padded `generate` over the eight prompts is printed as the ceiling.
Batch inference: rows/s of the batch workload's per-block path against a raw loop of batched `generate` over the
same reviews (goal >= 0.9 x raw); Ray Data's scheduling is not in it (the sandbox test covers that path).
Both sides decode greedily, so they produce the same tokens (checked). Runs alternate (raw, endpoint, then
again) so drift on a shared machine hits both; medians are compared.

    .venv/bin/python bench/serving_overhead.py [--hidden 512] [--layers 8] [--tokens 48] [--repeats 2] [--quick]

The default model (a 22M-parameter Llama) takes ~20 ms a token on two CPU threads; on much smaller ones the
fixed per-chunk cost of HTTP streaming shows as a larger share.

Prints a JSON report on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
CONCURRENCY = 8
QUESTIONS = [f"Question {i}: how does {topic} work in Kubeforge?" for i, topic in enumerate(
    ["checkpoint resume", "LoRA fine-tuning", "vector search", "autoscaling", "API keys", "batch inference",
     "the operator", "evaluation"])]


class FirstTokenClock:
    """A transformers streamer that notes when generate produced its first new token (its first put is the
    prompt)."""

    def __init__(self):
        self.puts, self.first = 0, None

    def put(self, _value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def raw_generate(engine, prompt_ids: list[int], tokens: int) -> tuple[float, float, list[int]]:
    """(time to first token, total seconds, new token ids) for one plain greedy generate call."""
    import torch

    clock = FirstTokenClock()
    started = time.perf_counter()
    with torch.inference_mode():
        out = engine.model.generate(input_ids=torch.tensor([prompt_ids]),
                                    attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                                    max_new_tokens=tokens, do_sample=False, temperature=None, top_p=None,
                                    top_k=None, pad_token_id=engine.pad_id, streamer=clock)
    total = time.perf_counter() - started
    return clock.first - started, total, out[0, len(prompt_ids):].tolist()


def raw_batched(engine, prompts: list[list[int]], tokens: int) -> tuple[float, int]:
    """One left-padded generate over all prompts: (seconds, new tokens before each row's end)."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[engine.pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    started = time.perf_counter()
    with torch.inference_mode():
        out = engine.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, do_sample=False,
                                    temperature=None, top_p=None, top_k=None, pad_token_id=engine.pad_id)
    seconds = time.perf_counter() - started
    generated = 0
    for row in out[:, width:].tolist():
        ends = [i for i, token in enumerate(row) if token in engine.eos_ids]
        generated += ends[0] + 1 if ends else len(row)
    return seconds, generated


class MemoryStore:
    """Where the batch path's shards go in this bench: the object store's cost is not what is measured here."""

    def __init__(self):
        self.objects: dict[tuple[str, str], bytes] = {}

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.objects[(bucket, key)] = body


def batch_vs_raw(engine, tokens: int, rows: int, repeats: int) -> dict:
    """Batch inference's per-block path (template filling, chat prompt, batched generate, JSON parse, one shard per
    block: kubeforge_workloads.batch without Ray Data) against a raw loop of left-padded `generate` calls over the
    same prompts in the same blocks of max_num_seqs rows. Alternating runs, medians compared."""
    from kubeforge.api.serveapp import ServedTemplate
    from kubeforge_workloads.batch.generate import TransformersBlockGenerator, messages_for
    from kubeforge_workloads.batch.run import results, write_shard

    template = ServedTemplate(name="reviews", template="Review: {input}\nJSON:", system="Answer with JSON only.")
    reviews = [json.loads(line) for line in
               (REPO / "examples" / "data" / "reviews.jsonl").read_text().splitlines()[:rows]]
    size = engine.max_num_seqs
    prompts = [engine.chat_prompt(messages_for(template, review["text"])) for review in reviews]
    generator = TransformersBlockGenerator(engine, None, 0.0, tokens, ())
    raw_rates, batch_rates = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, rows, size):
            raw_batched(engine, prompts[start:start + size], tokens)
        raw_rates.append(rows / (time.perf_counter() - started))
        store, started = MemoryStore(), time.perf_counter()
        for start in range(0, rows, size):
            block = reviews[start:start + size]
            texts = generator([messages_for(template, review["text"]) for review in block])
            write_shard(store, "s3://bench/out/", start, results(block, start, texts, "id"))
        batch_rates.append(rows / (time.perf_counter() - started))
        print(f"batch: raw {raw_rates[-1]:.2f} rows/s; batch path {batch_rates[-1]:.2f} rows/s", file=sys.stderr)
    raw, batch = median(raw_rates), median(batch_rates)
    return {"rows": rows, "block_rows": size, "raw_rows_per_s": round(raw, 2), "batch_rows_per_s": round(batch, 2),
            "ratio_batch_over_raw": round(batch / raw, 3)}


def endpoint_request(api, question: str, tokens: int) -> tuple[float, float, int, str]:
    """(time to first token, total seconds, completion tokens, text) for one streamed chat completion."""
    started, first, text, generated = time.perf_counter(), None, "", 0
    for chunk in api.chat.completions.create(model="bench", messages=[{"role": "user", "content": question}],
                                             temperature=0, max_tokens=tokens, stream=True,
                                             stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text += chunk.choices[0].delta.content
        if chunk.usage:
            generated = chunk.usage.completion_tokens
    return (first or time.perf_counter()) - started, time.perf_counter() - started, generated, text


def summarize(ttfts: list[float], tokens: int, seconds: float) -> dict:
    return {"tokens_per_s": round(tokens / seconds, 2), "ttft_p50_ms": round(median(ttfts) * 1000, 2),
            "tokens": tokens, "seconds": round(seconds, 4)}


def run_raw(engine, prompts, tokens: int, concurrency: int) -> tuple[dict, list[list[int]]]:
    if concurrency == 1:
        results = [raw_generate(engine, p, tokens) for p in prompts]
        seconds = sum(r[1] for r in results)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda _: None, range(concurrency)))
            started = time.perf_counter()
            results = list(pool.map(lambda p: raw_generate(engine, p, tokens), prompts))
            seconds = time.perf_counter() - started
    outputs = [[t for t in r[2] if t != engine.pad_id] for r in results]
    return summarize([r[0] for r in results], sum(len(o) for o in outputs), seconds), outputs


def run_endpoint(url: str, tokens: int, concurrency: int) -> tuple[dict, list[str]]:
    """The clients' measurements, taken in a process of their own."""
    result = subprocess.run([sys.executable, __file__, "--client", url, str(concurrency), str(tokens)],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"the benchmark's clients failed: {result.stderr[-2000:]}")
    report = json.loads(result.stdout)
    return report["summary"], report["texts"]


def clients(url: str, tokens: int, concurrency: int) -> tuple[dict, list[str]]:
    import openai

    apis = [openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=300) for _ in QUESTIONS]
    for api in apis:  # warm-up: each client's connection and first-call costs
        endpoint_request(api, QUESTIONS[0], 1)
    if concurrency == 1:
        results = [endpoint_request(api, q, tokens) for api, q in zip(apis, QUESTIONS)]
        seconds = sum(r[1] for r in results)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda _: None, range(concurrency)))  # threads started before the clock
            started = time.perf_counter()
            results = list(pool.map(lambda pair: endpoint_request(pair[0], pair[1], tokens), zip(apis, QUESTIONS)))
            seconds = time.perf_counter() - started
    return summarize([r[0] for r in results], sum(r[2] for r in results), seconds), [r[3] for r in results]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=512, help="hidden size of the Llama built from config")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens per request")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-rows", type=int, default=64, help="reviews in the batch inference comparison")
    parser.add_argument("--quick", action="store_true", help="a small model, few tokens, one repeat (smoke)")
    parser.add_argument("--client", nargs=3, metavar=("URL", "CONCURRENCY", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        summary, texts = clients(args.client[0], int(args.client[2]), int(args.client[1]))
        print(json.dumps({"summary": summary, "texts": texts}))
        return
    if args.quick:
        args.hidden, args.layers, args.tokens, args.repeats, args.batch_rows = 64, 2, 8, 1, 16

    import torch
    import uvicorn

    from kubeforge.api.serveapp import EngineConfig, ServeAppConfig, ServedModel
    from kubeforge_workloads.seed.build import build_tiny_llama
    from kubeforge_workloads.serve.app import create_app
    from kubeforge_workloads.serve.engine import load_transformers_engine

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="kubeforge-bench-serving-"))
    model_dir = build_tiny_llama(work / "model", hidden_size=args.hidden, layers=args.layers)
    engine_config = EngineConfig(kind="transformers", max_num_seqs=CONCURRENCY)
    engine = load_transformers_engine(model_dir, {}, engine_config)
    config = ServeAppConfig(endpoint="bench/bench", base=ServedModel(name="bench", uri="s3://unused/model"),
                            engine=engine_config, max_tokens=args.tokens)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config, engine), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}/v1"
    prompts = [engine.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]

    try:
        raw_generate(engine, prompts[0], 2)  # warm-up: first-call allocations on both sides
        run_endpoint(url, 2, 1)
        runs: dict[str, list[dict]] = {}
        same_text = True
        for repeat in range(args.repeats):
            for concurrency in (1, CONCURRENCY):
                raw, raw_outputs = run_raw(engine, prompts, args.tokens, concurrency)
                served, texts = run_endpoint(url, args.tokens, concurrency)
                same_text &= texts == [engine.tokenizer.decode(o, skip_special_tokens=True) for o in raw_outputs]
                runs.setdefault(f"raw_c{concurrency}", []).append(raw)
                runs.setdefault(f"endpoint_c{concurrency}", []).append(served)
                print(f"repeat {repeat} c={concurrency}: raw {raw['tokens_per_s']} tok/s ttft {raw['ttft_p50_ms']} "
                      f"ms; endpoint {served['tokens_per_s']} tok/s ttft {served['ttft_p50_ms']} ms", file=sys.stderr)
            batched_s, batched_tokens = raw_batched(engine, prompts, args.tokens)
            runs.setdefault("raw_one_batched_generate", []).append(
                {"tokens_per_s": round(batched_tokens / batched_s, 2), "ttft_p50_ms": None})
        batch = batch_vs_raw(engine, args.tokens, args.batch_rows, args.repeats)
    finally:
        server.should_exit = True
        thread.join(10)
        engine.close()

    def med(name: str, key: str):
        values = [r[key] for r in runs[name] if r[key] is not None]
        return round(median(values), 2) if values else None

    report = {
        "model": {"hidden": args.hidden, "layers": args.layers, "parameters": sum(
            p.numel() for p in engine.model.parameters())},
        "tokens_per_request": args.tokens, "repeats": args.repeats, "threads": args.threads,
        "same_text_as_raw": same_text,
        "runs": {name: {"tokens_per_s": med(name, "tokens_per_s"), "ttft_p50_ms": med(name, "ttft_p50_ms")}
                 for name in runs},
    }
    for concurrency in (1, CONCURRENCY):
        raw, served = report["runs"][f"raw_c{concurrency}"], report["runs"][f"endpoint_c{concurrency}"]
        report[f"c{concurrency}"] = {
            "throughput_ratio_endpoint_over_raw": round(served["tokens_per_s"] / raw["tokens_per_s"], 3),
            "ttft_overhead_ms": round(served["ttft_p50_ms"] - raw["ttft_p50_ms"], 2)}
    report["batch"] = batch
    report["goals"] = {"c1_throughput_ratio_at_least_0.95": report["c1"]["throughput_ratio_endpoint_over_raw"] >= 0.95,
                       "c8_endpoint_faster_than_raw": report[f"c{CONCURRENCY}"][
                           "throughput_ratio_endpoint_over_raw"] > 1.0,
                       "batch_ratio_at_least_0.9": batch["ratio_batch_over_raw"] >= 0.9}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
