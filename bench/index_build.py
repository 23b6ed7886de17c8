"""VectorIndex build and query: Kubeforge's build workload and query library against the honest baseline a user
would write by hand, measured on the same machine in the same run.

Build: the workload (`python -m kubeforge_workloads.index`: list S3, then one streaming Ray Data pipeline of read +
parse tasks into a chunk + embed actor pool, faiss, commit a version) over examples/corpus copied `--copies` times,
against a raw `SentenceTransformer.encode` of the very chunks it produced plus a faiss HNSW `add`, in a process of
its own with the same threads and batch size. Full builds and raw encodes alternate ABBA over `--repeats`, each
into a fresh resource; medians. Both sides are whole processes and both include their imports and model load;
the workload also pays Ray's start, the S3 reads, chunking, the recall check and the commit, which the raw side
does not do. Printed: the wall-clock ratio (raw seconds / workload seconds = workload chunks/s over raw chunks/s,
goal >= 0.9), the CPU-second ratio (the workload's whole process tree, polled with psutil, against the raw
process; the fairer measure when other work shares the cores), the same with the S3 server's CPU added, the
in-process ratio (run()'s seconds against load + encode + add) and where the workload's CPU went by process.
Then `--resyncs` re-syncs of the last full build's resource after 1% of the documents changed (other documents
each round; goal: cost <= 0.03 of the full build, wall and CPU both printed) and one after 5%, for a cost model:
fixed seconds + per corpus document (listing, previous version, new chunk table) + per changed document, and the
corpus size at which a 1% re-sync reaches 0.03 (counting the whole full build as per-document cost: generous to
the goal, so the true size is larger).

Query: k=10 latency p50/p95/p99 of the query library (IndexVersion.search with a vector) against a raw faiss
`index.search` on the same index, flat and HNSW, over `--vectors` synthetic clustered unit vectors (384 dims),
and HNSW recall@10 against exact search.

    .venv/bin/python bench/index_build.py [--copies 40] [--threads 2] [--repeats 2] [--resyncs 3] [--vectors 100000]
    .venv/bin/python bench/index_build.py --quick       # a smoke run: 16 documents, no re-sync, 2000 vectors
    .venv/bin/python bench/index_build.py --device cuda # embedding on a GPU, both sides

Measured (2026-12-03, 2 shared cores, load average 3-12 from other sessions' runs; MiniLM, chunks of 128 tokens,
2,000 documents, 3,000 chunks):
    flock /tmp/kubeforge-sandbox.lock .venv/bin/python bench/index_build.py --copies 40 --no-query --repeats 2 \
        --resyncs 2
- before this session's changes (read everything, then embed; HNSW rebuilt on every sync): wall ratio 0.374
  (workload 90.4 / 185.0 s, raw 42.5 / 60.4 s), CPU ratio 0.515 (131.8 / 175.4 CPU s vs 74.0 / 84.1);
  1% re-sync 16.2 / 13.5 s = 0.080 of the full build's wall, 0.078 of its CPU; Indexing 0.86 s.
- streaming read -> embed, incremental index: wall ratio 0.388 (121.7 / 166.3 s, raw 53.8 / 58.0 s), CPU ratio
  0.519 (148.4 / 166.6 vs 80.5 / 83.0 CPU s); the streaming overlap shows in the phases (no separate Reading) but
  not in the totals on 2 busy cores: the raw encode alone keeps ~1.5 cores busy, so the workload's extra ~70 CPU s
  (Ray, read tasks, the actor's imports, the driver) cannot hide behind it. 1% re-sync 13.1 / 12.8 s = 0.078 of
  the full build's wall (0.077 CPU); the index is grown (Indexing 0.45 s, 40 / 20 vectors added); 6.0 s of the
  re-sync's 8.4 s in run() is importing torch and sentence-transformers and loading the model.
- cost model from that run: fixed 11.0 s, 0.0008 s per corpus document, 0.018 s per changed document, full build
  0.083 s per document: a 1% re-sync reaches 0.03 of a full build from ~7,200 documents (a full build of ~10
  minutes here, too long to run in this bench's budget).
Measured (2026-12-04, 2 cores and no other session's load, so the first build's wall shrank; 7,500 documents,
11,250 chunks; --copies 150 --repeats 1 --resyncs 2 --no-query, about 10 minutes):
- the code as of 2026-12-03: wall ratio 0.574 (workload 222.0 s, raw 127.4 s), CPU ratio 0.626 (390.2 vs 244.2
  CPU s); the embedding actor alone took ~1.3x the raw process's CPU for the same chunks. 1% re-sync (75
  documents) 13.1 s = 0.059 of the full build's wall, 0.034 of its CPU.
- embedding calls of up to 512 documents, not 128: wall ratio 0.627 (202.5 / 126.9 s), CPU 0.692. Then the
  in-driver re-sync reading 8 objects at a time and encoding 8 batches per call: wall ratio 0.694 (228.0 / 158.2 s;
  the machine ran ~25% slower in this run, on both sides), CPU 0.770; 1% re-sync 17.6-18.0 s = 0.078 of the
  wall, 0.045 of the CPU; per changed document 0.026 s (was 0.037), 375 changed documents read in 2.6 s (4.5 s).
- cost model of that run: fixed 11.3 s, 0.0006 s per corpus document, 0.026 s per changed document, full build
  0.030 s per document. The per-corpus-document part alone is 2% of a full build's per-document cost (listing
  7,500 keys from the moto server takes ~3 s; a real S3 lists them in 8 requests), so on this S3 server a 1%
  re-sync only approaches 0.03 as the corpus grows (0.01 x 0.026 / 0.030 + 0.0006 / 0.030 = 0.029): the model
  puts 0.03 at ~265,000 documents.
Measured (2026-12-04, later; same command, idle machine): the model of a small re-sync starts loading at the first
changed document the listing shows (it loaded after the listing), and the process ends without the interpreter's
teardown (1.5 s with torch, transformers and MLflow loaded): 1% re-sync 13.3 / 11.5 s = 0.062 of the full build's
wall (199.3 s), 0.039 of its CPU; the 5% re-sync 18.2 s (was 25.7). Cost model: fixed 6.7 s (was 11.3), 0.0006 s
per corpus document, 0.019 s per changed document, full build 0.027 s per document: the 1% re-sync approaches 0.029
and reaches 0.03 at ~226,000 documents. Of the 12.4 s: importing torch and sentence-transformers and loading the
model 5.6-6.4 s (from the listing's start, now), encoding 150 chunks 2.1 s, MLflow 1.8 s (importing it 0.9 s, its
sqlite store 0.9 s), listing 2-3 s. Full build in that run: wall ratio 0.637 (199.3 / 127.0 s), CPU 0.699; the
embedding actor took 292 CPU s against the raw process's 244 for the same chunks.
Measured (2026-12-04, evening; same command with --repeats 2, ABBA): Ray now gets the worker's 2 CPUs and no more
(it had 3, one spare for the read tasks; with exactly 2 the old layout never finished: its one actor held both CPUs
and no read task could start, as on a KubeRay worker beside a head of num-cpus 0); two single-threaded embedding
actors of 0.875 CPU each, read tasks of 0.25 CPU fetching 8 objects at a time. Full build 179.2 / 178.4 s wall
(309 CPU s), raw 117.7 / 117.5 s (226 CPU s; the machine ran faster than in the earlier runs): wall ratio 0.658
(was 0.637), CPU 0.731 (was 0.699). The actors took 256 CPU s against the raw process's 226 (two model loads and
the chunking included); the rest went to the read tasks (22), the driver (15), Ray's own processes (about 18) and,
outside the tree, the moto server (25): on 2 cores the machine is busy throughout (1.87 cores on average), so that
work comes out of the actors' share. 1% re-sync 11.4 / 10.4 s = 0.061 of the full build's wall, 0.038 of its CPU;
cost model: fixed 5.2 s, 0.00048 s per corpus document, 0.028 s per changed document, full build 0.024 s per
document: the per-corpus-document part alone is 2.0% of a full build's per-document cost (mostly listing 7,500
keys from moto, 2.5 s), so on this S3 server a 1% re-sync approaches 0.032 and never reaches 0.03.
Engine: faiss (faiss-cpu): flat and HNSW in one library, search-time IDSelectors (metadata filters and the
tombstones of incremental syncs), index files readable by any faiss, recall measurable against IndexFlat;
usearch can remove vectors natively, but faiss's HNSW is the better-known reference, and removal is covered by
tombstones with a rebuild past 10%. Chunker: semchunk: maintained, sizes counted by any token counter (the
model's own tokenizer), splits at the most meaningful boundary, overlap and character offsets (for the anchor
metadata of headings and PDF pages); chunking 500 documents takes 0.15 CPU s against 23 CPU s to embed them.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "examples" / "corpus"
BUCKET = "bench"
SOURCE = "corpus/"
PREFIX = "bench/VectorIndex/corpus"
DIMS = 384


def spec(threads: int, device: str) -> dict:
    return {"source": {"uri": f"s3://{BUCKET}/{SOURCE}", "include": ["**/*.md", "**/*.html", "**/*.txt", "**/*.pdf"]},
            "chunking": {"strategy": "tokens", "size": 128, "overlap": 16},
            "embedding": {"batchSize": 64, "device": device}, "index": {"type": "hnsw"},
            "resources": {"workers": 1, "cpusPerWorker": threads, "gpusPerWorker": 1 if device == "cuda" else 0}}


def upload_corpus(s3, copies: int, documents: int | None = None) -> list[str]:
    """examples/corpus `copies` times under copy-<i>/ (`documents` of it, spread over its formats, when given);
    every copy's text documents differ by a line, so each is a document of its own (the PDF copies are
    byte-identical: equal content under other ids)."""
    paths = [path for path in sorted(CORPUS.rglob("*"))
             if path.is_file() and path.suffix in (".md", ".html", ".txt", ".pdf")]
    if documents:
        paths = paths[::max(1, len(paths) // documents)][:documents]
    keys = []
    for copy in range(copies):
        for path in paths:
            body = path.read_bytes()
            if path.suffix != ".pdf":
                body += f"\nCopy {copy} of this note.\n".encode()
            key = f"{SOURCE}copy-{copy}/{path.relative_to(CORPUS).as_posix()}"
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
            keys.append(key)
    return keys


class TreeCpu:
    """CPU seconds of a process and all its descendants (Ray's GCS, raylet, workers, the embedding actor),
    polled every `interval` seconds: a process that exits between polls loses at most that much of its CPU."""

    def __init__(self, pid: int, interval: float = 0.25):
        import threading

        self.pid, self.interval, self.seen, self.names = pid, interval, {}, {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.done.is_set():
            try:
                processes = [root] + root.children(recursive=True)
            except psutil.Error:
                processes = []
            for process in processes:
                try:
                    times = process.cpu_times()
                    key = (process.pid, process.create_time())
                    self.seen[key] = times.user + times.system
                    # Ray retitles a worker once it runs a task or holds an actor, and a task worker back to
                    # ray::IDLE after it: a process keeps the first title that says what it did.
                    if self.names.get(key, "ray::IDLE") == "ray::IDLE" or not self.names[key].startswith("ray::"):
                        self.names[key] = process_label(process)
                except psutil.Error:
                    pass
            self.done.wait(self.interval)

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return sum(self.seen.values())

    def by_process(self) -> dict[str, float]:
        """CPU seconds per kind of process (driver, raylet, a Ray worker or actor by its title, ...)."""
        totals: dict[str, float] = {}
        for key, seconds in self.seen.items():
            totals[self.names[key]] = round(totals.get(self.names[key], 0) + seconds, 2)
        return dict(sorted(totals.items(), key=lambda item: -item[1]))


def process_label(process) -> str:
    """Ray retitles its workers (ray::IDLE, ray::MapBatches(...)); others by executable and module."""
    import psutil

    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return "?"
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0].split("(")[0][:60]
    words = [Path(word).name for word in cmdline[:4] if not word.startswith("-")]
    return " ".join(words)[:60] or process.name()


def process_cpu(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def run_workload(args, prefix: str, attempt: int, generation: int) -> dict:
    """One sync on a fresh local Ray, as its own process; returns result.json plus `wall_s` (interpreter start to
    exit: imports, Ray start and shutdown included), `cpu_s` (the process tree's CPU seconds) and `s3_cpu_s` (the
    moto server's CPU seconds meanwhile: the reads the raw side does not do)."""
    from kubeforge.api.workload import CONTEXT_ENV, MlflowContext, StorageContext, WorkloadContext

    context = WorkloadContext(kind="VectorIndex", namespace="bench", name="corpus", uid="bench-uid",
                              generation=generation, attempt=attempt, spec=spec(args.threads, args.device),
                              storage=StorageContext(bucket=BUCKET, prefix=prefix),
                              mlflow=MlflowContext(experiment="bench/VectorIndex", run_name="corpus"))
    s3_before = process_cpu(args.s3_pid)
    started = time.monotonic()
    # Ray gets the worker's CPUs and no more, as a KubeRay worker pod beside a head of num-cpus 0 offers.
    process = subprocess.Popen([sys.executable, "-m", "kubeforge_workloads.index"], cwd=args.work,
                               env={**os.environ, CONTEXT_ENV: context.model_dump_json(), "RAY_ADDRESS": "",
                                    "KUBEFORGE_LOCAL_RAY_CPUS": str(args.threads)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cpu = TreeCpu(process.pid)
    _, stderr = process.communicate()
    wall = time.monotonic() - started
    cpu_s = cpu.stop()
    cpu_by_process = cpu.by_process()
    if process.returncode != 0:
        sys.exit(f"workload failed ({process.returncode}):\n{stderr[-3000:]}")
    import boto3

    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=f"{prefix}/outputs/result.json")["Body"].read()
    return {**json.loads(body), "wall_s": round(wall, 2), "cpu_s": round(cpu_s, 2), "cpu_by_process": cpu_by_process,
            "s3_cpu_s": round(process_cpu(args.s3_pid) - s3_before, 2)}


def raw_encode_and_add(texts_file: Path, device: str, threads: int) -> dict:
    """The honest baseline, in its own process with `threads` torch threads: load the model, encode the chunks,
    add them to a faiss HNSW index with the workload's parameters."""
    import faiss
    import torch
    from sentence_transformers import SentenceTransformer

    from kubeforge_workloads.index.embedding import model_path

    torch.set_num_threads(threads)
    texts = json.loads(texts_file.read_text())
    t0 = time.perf_counter()
    model = SentenceTransformer(model_path("all-MiniLM-L6-v2"), device=device)
    t1 = time.perf_counter()
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    t2 = time.perf_counter()
    index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 200
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    t3 = time.perf_counter()
    return {"load_s": t1 - t0, "encode_s": t2 - t1, "add_s": t3 - t2, "chunks": len(texts)}


def run_raw(args, texts_file: Path) -> dict:
    """The raw baseline as its own process; adds `wall_s` (interpreter start to exit: imports and model load
    included, as on the workload's side) and `cpu_s` (its CPU seconds)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run([sys.executable, __file__, "--raw", str(texts_file), "--device", args.device,
                             "--threads", str(args.threads)],
                            env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}, capture_output=True, text=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"raw encode failed ({result.returncode}):\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def chunk_texts(s3, prefix: str, version: int) -> list[str]:
    import pyarrow.parquet as pq

    body = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/outputs/index/v-{version}/chunks.parquet")["Body"].read()
    return pq.read_table(io.BytesIO(body)).column("text").to_pylist()


def change_documents(s3, keys: list[str], percent: float, round_: int) -> int:
    """Append a sentence to `percent`% of the documents (text ones, at least one), spread over the corpus and
    shifted by `round_` so each re-sync changes other documents; returns how many changed."""
    texts = [key for key in keys if not key.endswith(".pdf")]
    count = max(1, math.ceil(len(keys) * percent / 100))
    stride = max(1, len(texts) // count)
    changed = texts[round_ % stride::stride][:count]
    for key in changed:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        s3.put_object(Bucket=BUCKET, Key=key,
                      Body=body + f"\nThis note was revised in re-sync round {round_}.\n".encode())
    return len(changed)


# --- query latency ------------------------------------------------------------------------------------------------

def clustered_vectors(count: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around sqrt(count) random centres: closer to real embeddings than uniform noise, where HNSW
    and every other graph index struggle."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(8, int(math.sqrt(count))), DIMS)).astype(np.float32)
    vectors = centres[rng.integers(0, len(centres), count)] + 0.35 * rng.standard_normal((count, DIMS)).astype(
        np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {f"p{p}_ms": round(float(np.percentile(ms, p)), 4) for p in (50, 95, 99)}


def query_latency(args, work: Path) -> dict:
    """IndexVersion.search (the library the CLI, RAG and EvalRun use) against raw faiss on the same index."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kubeforge.storage.layout import INDEX_CHUNKS_FILE, INDEX_VECTORS_FILE, ResourcePrefix
    from kubeforge_workloads.index import engine
    from kubeforge_workloads.index.query import IndexVersion

    faiss.omp_set_num_threads(args.threads)
    vectors = clustered_vectors(args.vectors)
    queries = clustered_vectors(args.queries, seed=1)
    ids = [f"doc-{i // 4}#c{i % 4}" for i in range(len(vectors))]
    table = pa.table({"chunk_id": ids, "document_id": [i.split("#")[0] for i in ids], "text": ids,
                      "metadata": ["{}"] * len(ids),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIMS)})
    report = {"vectors": args.vectors, "queries": args.queries, "k": 10, "dims": DIMS}
    for index_type in ("flat", "hnsw"):
        local = work / f"query-{index_type}"
        local.mkdir()
        pq.write_table(table, local / INDEX_CHUNKS_FILE)
        t0 = time.perf_counter()
        built = engine.build(engine.prepare(vectors, "cosine"), "cosine", index_type, 32, 200)
        build_s = time.perf_counter() - t0
        engine.save(built, str(local / INDEX_VECTORS_FILE))
        manifest = {"metric": "cosine", "dims": DIMS, "index": {"type": index_type, "hnsw": {"efSearch": 128}}}
        library = IndexVersion(ResourcePrefix(BUCKET, PREFIX), 1, manifest, local)
        raw = library.index  # the very same faiss index object
        params = faiss.SearchParametersHNSW(efSearch=128) if index_type == "hnsw" else None
        library_s, raw_s = [], []
        for i, query in enumerate(queries):  # alternate which side goes first, so drift hits both
            one = query[None, :]
            sides = [(lambda: library.search(query, k=10), library_s),
                     (lambda: raw.search(one, 10, params=params) if params else raw.search(one, 10), raw_s)]
            for call, times in sides if i % 2 == 0 else reversed(sides):
                t = time.perf_counter()
                call()
                times.append(time.perf_counter() - t)
        entry = {"build_s": round(build_s, 2), "library": percentiles(library_s), "raw_faiss": percentiles(raw_s)}
        entry["p50_ratio_raw_over_library"] = round(entry["raw_faiss"]["p50_ms"] / entry["library"]["p50_ms"], 3)
        if index_type == "hnsw":
            exact = faiss.IndexFlatIP(DIMS)
            exact.add(vectors)
            _, truth = exact.search(queries, 10)
            _, found = raw.search(queries, 10, params=params)
            entry["recall_at_10_vs_exact"] = round(float(np.mean(
                [len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])), 4)
            entry["ef_search"] = 128
        report[index_type] = entry
    return report


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def build_report(full: list[dict], raw: list[dict]) -> dict:
    """Full build against raw encode, medians over the repeats. Every ratio is kubeforge's chunks/s over raw's,
    i.e. raw seconds over kubeforge seconds for the same chunks."""
    chunks = full[0]["chunks"]
    wl_wall, wl_build = median([r["wall_s"] for r in full]), median([r["buildSeconds"] for r in full])
    wl_cpu = median([r["cpu_s"] for r in full])
    wl_cpu_s3 = median([r["cpu_s"] + r["s3_cpu_s"] for r in full])
    raw_wall, raw_cpu = median([r["wall_s"] for r in raw]), median([r["cpu_s"] for r in raw])
    raw_in = median([r["load_s"] + r["encode_s"] + r["add_s"] for r in raw])
    raw_encode = median([r["encode_s"] + r["add_s"] for r in raw])
    phases = sorted(full, key=lambda r: r["wall_s"])[len(full) // 2].get("phaseSeconds")
    return {
        "documents": full[0]["documents"], "chunks": chunks, "skipped_documents": full[0]["skippedDocuments"],
        "repeats": len(full), "order": "ABBA: workload, raw, raw, workload, ...",
        "kubeforge_wall_s": [r["wall_s"] for r in full], "kubeforge_build_s": [r["buildSeconds"] for r in full],
        "kubeforge_cpu_s": [r["cpu_s"] for r in full], "kubeforge_s3_server_cpu_s": [r["s3_cpu_s"] for r in full],
        "kubeforge_phase_s_of_median_run": phases,
        "kubeforge_cpu_s_by_process_of_median_run": sorted(full, key=lambda r: r["wall_s"])[len(full) // 2].get(
            "cpu_by_process"),
        "raw_wall_s": [r["wall_s"] for r in raw], "raw_cpu_s": [r["cpu_s"] for r in raw],
        "raw_model_load_s": [round(r["load_s"], 2) for r in raw], "raw_encode_s": [round(r["encode_s"], 2) for r in raw],
        "raw_faiss_add_s": [round(r["add_s"], 3) for r in raw],
        "kubeforge_chunks_per_s_wall": round(chunks / wl_wall, 2), "raw_chunks_per_s_wall": round(chunks / raw_wall, 2),
        # Both whole processes, interpreter start to exit: imports and model load on both sides; Ray's start,
        # S3 reads, chunking, the recall check and the version's commit on kubeforge's.
        "build_throughput_ratio_wall": round(raw_wall / wl_wall, 3),
        # CPU seconds of kubeforge's process tree (driver, Ray, actor, read tasks) against the raw process: the
        # fairer measure while other work shares the 2 cores. The second adds the S3 server's CPU for the reads.
        "build_throughput_ratio_cpu": round(raw_cpu / wl_cpu, 3),
        "build_throughput_ratio_cpu_incl_s3_server": round(raw_cpu / wl_cpu_s3, 3),
        # After the interpreter's imports on both sides, model load on both: run()'s seconds against load +
        # encode + add measured inside the raw process.
        "build_throughput_ratio_in_process": round(raw_in / wl_build, 3),
        # Against encode + add alone (no model load on the raw side; kubeforge still pays its start-up).
        "build_throughput_ratio_vs_raw_encode_only": round(raw_encode / wl_build, 3),
    }


def resync_report(full: dict, resyncs: list[dict], larger: dict | None, documents: int) -> dict:
    """1% re-syncs against the full build of the same corpus in the same run, and a cost model: a re-sync costs
    F (size-independent: interpreter, imports, model load) + a per document of the corpus (listing, the previous
    version's files, the new chunk table) + r per changed document (read, chunk, embed)."""
    wall = median([r["wall_s"] for r in resyncs])
    report = {
        "changed_documents": [r["changed"] for r in resyncs], "of_documents": documents,
        "embedded_chunks": [r["sync"]["embeddedChunks"] for r in resyncs],
        "reused_chunks": [r["sync"]["reusedChunks"] for r in resyncs],
        "index_update": [r.get("indexUpdate") for r in resyncs],
        "resync_wall_s": [r["wall_s"] for r in resyncs], "resync_build_s": [r["buildSeconds"] for r in resyncs],
        "resync_cpu_s": [r["cpu_s"] for r in resyncs],
        "resync_phase_s_of_median_run": sorted(resyncs, key=lambda r: r["wall_s"])[len(resyncs) // 2].get(
            "phaseSeconds"),
        "full_build_wall_s": full["wall_s"],
        "resync_cost_fraction_of_full_wall": round(wall / full["wall_s"], 4),
        "resync_cost_fraction_of_full_build_s": round(median([r["buildSeconds"] for r in resyncs])
                                                      / full["buildSeconds"], 4),
        "resync_cost_fraction_of_full_cpu": round(median([r["cpu_s"] for r in resyncs]) / full["cpu_s"], 4),
    }
    if larger is not None:
        small_changed = median([r["changed"] for r in resyncs])
        per_changed = (larger["wall_s"] - wall) / max(1, larger["changed"] - small_changed)
        phases = sorted(resyncs, key=lambda r: r["wall_s"])[len(resyncs) // 2].get("phaseSeconds") or {}
        per_corpus_document = sum(phases.get(p, 0) for p in ("Listing", "Indexing", "Writing")) / documents
        fixed = wall - per_changed * small_changed - per_corpus_document * documents
        full_per_document = full["wall_s"] / documents  # all of the full build as per-document: conservative
        denominator = 0.03 * full_per_document - per_corpus_document - 0.01 * per_changed
        report["cost_model"] = {
            "larger_change": {"changed_documents": larger["changed"], "wall_s": larger["wall_s"],
                              "phase_s": larger.get("phaseSeconds")},
            "fixed_s": round(fixed, 2), "per_corpus_document_s": round(per_corpus_document, 6),
            "per_changed_document_s": round(per_changed, 4), "full_build_per_document_s": round(full_per_document, 4),
            "documents_for_0.03": math.ceil(fixed / denominator) if denominator > 0 else None,
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=8, help="copies of examples/corpus to index")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=2, help="full builds and raw encodes, alternated ABBA")
    parser.add_argument("--resyncs", type=int, default=3, help="1%% re-syncs after the last full build")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--documents", type=int, default=None, help="index only this many corpus documents per copy")
    parser.add_argument("--no-resync", action="store_true", help="skip the 1%% re-syncs")
    parser.add_argument("--no-query", action="store_true", help="skip the query latency part")
    parser.add_argument("--quick", action="store_true",
                        help="16 documents, one repeat, no re-sync, 2000 vectors, 50 queries (a smoke run)")
    parser.add_argument("--raw", metavar="TEXTS_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw:
        print(json.dumps(raw_encode_and_add(Path(args.raw), args.device, args.threads)))
        return
    if args.quick:
        args.copies, args.documents, args.vectors, args.queries, args.no_resync = 1, 16, 2000, 50, True
        args.repeats = 1

    import boto3

    sys.path.insert(0, str(Path(__file__).parent))
    from finetune_overhead import start_s3_server

    args.work = work = Path(tempfile.mkdtemp(prefix="kubeforge-bench-index-"))
    server, endpoint = start_s3_server(work)
    args.s3_pid = server.pid
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                       "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
                       "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "workloads"),
                                                      os.environ.get("PYTHONPATH", "")])})
    report: dict = {"device": args.device, "threads_each_side": args.threads, "copies": args.copies}
    try:
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        keys = upload_corpus(s3, args.copies, args.documents)
        texts_file = work / "chunks.json"
        full, raw = [], []

        def workload_side(repeat: int) -> None:
            prefix = f"{PREFIX}-{repeat}"  # a fresh resource each repeat: a full build, never a re-sync
            full.append({**run_workload(args, prefix, attempt=1, generation=1), "prefix": prefix})
            if not texts_file.exists():
                texts_file.write_text(json.dumps(chunk_texts(s3, prefix, full[-1]["version"])))
            print(f"full build {repeat}: {full[-1]['wall_s']} s wall, {full[-1]['cpu_s']} CPU s, phases "
                  f"{full[-1].get('phaseSeconds')}", file=sys.stderr)

        def raw_side() -> None:
            raw.append(run_raw(args, texts_file))
            print(f"raw encode: {raw[-1]['wall_s']} s wall, {raw[-1]['cpu_s']} CPU s", file=sys.stderr)

        for repeat in range(args.repeats):  # ABBA, so load drift hits both sides alike
            for side in ("workload", "raw") if repeat % 2 == 0 else ("raw", "workload"):
                workload_side(repeat) if side == "workload" else raw_side()
        report["build"] = build_report(full, raw)
        if not args.no_resync:
            last, resyncs = full[-1], []
            for round_ in range(args.resyncs):
                changed = change_documents(s3, keys, 1, round_)
                resyncs.append({**run_workload(args, last["prefix"], 1, 2 + round_), "changed": changed})
                print(f"re-sync {round_}: {resyncs[-1]['wall_s']} s wall", file=sys.stderr)
            changed = change_documents(s3, keys, 5, args.resyncs)
            larger = {**run_workload(args, last["prefix"], 1, 2 + args.resyncs), "changed": changed}
            report["resync_1_percent"] = resync_report(last, resyncs, larger, last["documents"])
        if not args.no_query:
            report["query"] = query_latency(args, work)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
