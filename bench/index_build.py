"""VectorIndex build and query: Kubeforge's build workload and query library against the honest baseline a user
would write by hand, measured on the same machine in the same run.

Build: the workload (`python -m kubeforge_workloads.index`: list S3, parse, chunk, embed on a Ray Data actor pool,
faiss, commit a version) over examples/corpus copied `--copies` times, against a raw `SentenceTransformer.encode`
of the very chunks it produced plus a faiss HNSW `add`, in one process with the same threads and batch size.
Prints chunks/s of both and their ratio (goal >= 0.9), with and without the raw side's model load; the same ratio
over the workload's whole wall clock (interpreter and Ray start included), over its embedding phase only, and over
the embedding phase after the first batch (steady state); and the cost of a re-sync after 1% of the documents
changed as a fraction of the full build (goal <= 0.03). result.phaseSeconds says where the workload's time went.
The shipped corpus is small (50 documents, ~75 chunks a copy): measure with --copies 40 (2000 documents) or more.

Query: k=10 latency p50/p95/p99 of the query library (IndexVersion.search with a vector) against a raw faiss
`index.search` on the same index, flat and HNSW, over `--vectors` synthetic clustered unit vectors (384 dims),
and HNSW recall@10 against exact search.

    .venv/bin/python bench/index_build.py [--copies 40] [--threads 2] [--vectors 100000] [--queries 500]
    .venv/bin/python bench/index_build.py --quick       # a smoke run: 16 documents, no re-sync, 2000 vectors
    .venv/bin/python bench/index_build.py --device cuda # embedding on a GPU, both sides
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


def run_workload(args, attempt: int, generation: int) -> tuple[dict, float]:
    """One sync on a fresh local Ray; returns (result.json, wall seconds including interpreter and Ray start)."""
    from kubeforge.api.workload import CONTEXT_ENV, MlflowContext, StorageContext, WorkloadContext

    context = WorkloadContext(kind="VectorIndex", namespace="bench", name="corpus", uid="bench-uid",
                              generation=generation, attempt=attempt, spec=spec(args.threads, args.device),
                              storage=StorageContext(bucket=BUCKET, prefix=PREFIX),
                              mlflow=MlflowContext(experiment="bench/VectorIndex", run_name="corpus"))
    started = time.monotonic()
    # One logical CPU more than the embedding actor asks for, so reading and chunking tasks are never starved.
    result = subprocess.run([sys.executable, "-m", "kubeforge_workloads.index"], cwd=args.work,
                            env={**os.environ, CONTEXT_ENV: context.model_dump_json(), "RAY_ADDRESS": "",
                                 "KUBEFORGE_LOCAL_RAY_CPUS": str(args.threads + 1)},
                            capture_output=True, text=True)
    wall = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"workload failed ({result.returncode}):\n{result.stderr[-3000:]}")
    import boto3

    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=f"{PREFIX}/outputs/result.json")["Body"].read()
    return json.loads(body), wall


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
    result = subprocess.run([sys.executable, __file__, "--raw", str(texts_file), "--device", args.device,
                             "--threads", str(args.threads)],
                            env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"raw encode failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def chunk_texts(s3, version: int) -> list[str]:
    import pyarrow.parquet as pq

    body = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/outputs/index/v-{version}/chunks.parquet")["Body"].read()
    return pq.read_table(io.BytesIO(body)).column("text").to_pylist()


def change_one_percent(s3, keys: list[str]) -> int:
    """Append a sentence to 1% of the text documents (at least one); returns how many changed."""
    texts = [key for key in keys if not key.endswith(".pdf")]
    changed = texts[::max(1, round(100 * len(texts) / max(1, len(keys))))][:max(1, math.ceil(len(keys) / 100))]
    for key in changed:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        s3.put_object(Bucket=BUCKET, Key=key, Body=body + b"\nThis note was revised for the re-sync benchmark.\n")
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=8, help="copies of examples/corpus to index")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--documents", type=int, default=None, help="index only this many corpus documents per copy")
    parser.add_argument("--no-resync", action="store_true", help="skip the 1%% re-sync")
    parser.add_argument("--quick", action="store_true",
                        help="16 documents, no re-sync, 2000 vectors, 50 queries (a smoke run)")
    parser.add_argument("--raw", metavar="TEXTS_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw:
        print(json.dumps(raw_encode_and_add(Path(args.raw), args.device, args.threads)))
        return
    if args.quick:
        args.copies, args.documents, args.vectors, args.queries, args.no_resync = 1, 16, 2000, 50, True

    import boto3

    sys.path.insert(0, str(Path(__file__).parent))
    from finetune_overhead import start_s3_server

    args.work = work = Path(tempfile.mkdtemp(prefix="kubeforge-bench-index-"))
    server, endpoint = start_s3_server(work)
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                       "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
                       "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "workloads"),
                                                      os.environ.get("PYTHONPATH", "")])})
    try:
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        keys = upload_corpus(s3, args.copies, args.documents)

        full, full_wall = run_workload(args, attempt=1, generation=1)
        texts_file = work / "chunks.json"
        texts_file.write_text(json.dumps(chunk_texts(s3, full["version"])))
        raw = run_raw(args, texts_file)
        print(f"full build: kubeforge {full['buildSeconds']:.1f} s for {full['chunks']} chunks; raw encode "
              f"{raw['encode_s']:.1f} s + add {raw['add_s']:.2f} s (+ load {raw['load_s']:.1f} s)", file=sys.stderr)
        resync = None
        if not args.no_resync:
            changed = change_one_percent(s3, keys)
            resync, resync_wall = run_workload(args, attempt=1, generation=2)
        query = query_latency(args, work)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)

    chunks = full["chunks"]
    kubeforge_rate = chunks / full["buildSeconds"]
    raw_rate = chunks / (raw["encode_s"] + raw["add_s"])
    raw_rate_with_load = chunks / (raw["load_s"] + raw["encode_s"] + raw["add_s"])
    phase_s = full.get("phaseSeconds") or {}
    steady_s = phase_s.get("Embedding")
    embedding_s = (steady_s or 0) + phase_s.get("EmbeddingStartup", 0)
    first_batch = min(chunks, 64)
    print(json.dumps({
        "device": args.device, "threads_each_side": args.threads, "copies": args.copies,
        "build": {
            "documents": full["documents"], "chunks": chunks, "skipped_documents": full["skippedDocuments"],
            "kubeforge_build_s": full["buildSeconds"], "kubeforge_wall_s_incl_interpreter": round(full_wall, 1),
            "kubeforge_chunks_per_s": round(kubeforge_rate, 2), "kubeforge_phase_s": full.get("phaseSeconds"),
            "raw_model_load_s": round(raw["load_s"], 2), "raw_encode_s": round(raw["encode_s"], 2),
            "raw_faiss_add_s": round(raw["add_s"], 3), "raw_chunks_per_s": round(raw_rate, 2),
            "raw_chunks_per_s_incl_model_load": round(raw_rate_with_load, 2),
            "build_throughput_ratio": round(kubeforge_rate / raw_rate, 3),
            "build_throughput_ratio_vs_raw_incl_model_load": round(kubeforge_rate / raw_rate_with_load, 3),
            # The whole process (interpreter, imports, Ray start) against raw encode + add: the user's wall clock.
            "wall_throughput_ratio_incl_startup": round(chunks / full_wall / raw_rate, 3),
            # Only the embedding phase (chunking, the actor's start and model load, encode): the pipeline's
            # embedding throughput without Ray's start-up, listing, reading and writing.
            "embedding_phase_ratio": round(chunks / embedding_s / raw_rate, 3) if embedding_s else None,
            # Once the first batch is back: chunks after it over the seconds after it.
            "embedding_steady_state_ratio": round((chunks - first_batch) / steady_s / raw_rate, 3)
            if steady_s else None,
        },
        "resync_1_percent": None if resync is None else {
            "changed_documents": changed, "of_documents": full["documents"],
            "embedded_chunks": resync["sync"]["embeddedChunks"], "reused_chunks": resync["sync"]["reusedChunks"],
            "embedded_fraction_of_chunks": round(resync["sync"]["embeddedChunks"] / resync["chunks"], 4),
            "resync_build_s": resync["buildSeconds"], "resync_wall_s": round(resync_wall, 1),
            "resync_cost_fraction_of_full": round(resync["buildSeconds"] / full["buildSeconds"], 3),
            "resync_wall_fraction_of_full_wall_incl_startup": round(resync_wall / full_wall, 3),
            "resync_phase_s": resync.get("phaseSeconds"),
        },
        "query": query,
    }, indent=1))


if __name__ == "__main__":
    main()
