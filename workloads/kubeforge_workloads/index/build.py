"""The Ray driver of a VectorIndex sync: list the source, read and parse what changed (Ray Data tasks), chunk and
embed the changed documents (an actor pool holding the model and its tokenizer), reuse every unchanged document's
chunks and vectors from the current version, and write the next version with its manifest last. An incremental sync
of a few small documents does the reading, chunking and embedding in the driver instead, without starting Ray.

Progress counts documents: step = documents whose chunks are embedded or reused, totalSteps = documents.
outputs/result.json holds what the operator copies to status (see `sync`'s return value).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import ValidationError

from kubeforge.api.vectorindex import VectorIndexSpec
from kubeforge.api.workload import WorkloadContext
from kubeforge.storage.layout import INDEX_CHUNKS_FILE, INDEX_DOCUMENTS_FILE, INDEX_VECTORS_FILE, ResourcePrefix
from kubeforge_workloads.common.chaos import stall_point
from kubeforge_workloads.common.errors import UserError
from kubeforge_workloads.common.heartbeat import Heartbeat
from kubeforge_workloads.common.storage import WorkloadStorage, run_entrypoint, utcnow
from kubeforge_workloads.index import engine
from kubeforge_workloads.index.embedding import actor_layout, max_chunk_tokens, model_bytes, model_path
from kubeforge_workloads.index.incremental import IndexUpdate, index_shape, update_index
from kubeforge_workloads.index.partial import (
    FLUSH_SECONDS, PartialChunks, current_only, embedded_table, load_partial, saved_documents,
)
from kubeforge_workloads.index.sources import SourceObject, list_sources
from kubeforge_workloads.index.versions import (
    apply_retention, commit_version, committed_versions, config_fingerprint, diff_documents, download_version,
    read_manifest,
)

RECALL_K = 10
RECALL_SAMPLE = 200
SKIP_EXAMPLES = 3
IN_PROCESS_MAX_BYTES = 256 * 1024
"""An incremental sync that reads at most this much (a few changed documents) reads, chunks and embeds them in the
driver: starting Ray Data's workers and loading the model in an actor costs more than embedding them. A first build
always runs on Ray Data."""
READ_TASKS_PER_CPU = 2
READ_THREADS = 8
"""GETs in flight while a read task (or an in-driver sync) reads its objects: each waits on the object store far
longer than parsing takes, and a read task holds only a fraction of a CPU (embedding.READ_TASK_CPUS)."""
ENCODE_CALL_BATCHES = 8
"""An in-driver sync encodes this many embedding batches per call, which sentence-transformers sorts by length
together (less padding than a call per batch), and saves and counts them a batch at a time."""
MIN_DOCUMENTS_PER_CALL, MAX_DOCUMENTS_PER_CALL, CALLS_PER_ACTOR = 128, 512, 4
"""Documents per call of an embedding actor. sentence-transformers sorts the chunks of one call by length, so the
more chunks a call holds, the less padding its batches carry (measured on 2 CPUs, 1,500 chunks: 16 documents a
call took a third more CPU than 64; 128 a call 36.9 CPU s, 512 a call 31.5, one call over everything 33.4). A
build gives each actor at least CALLS_PER_ACTOR calls, so a pool of several shares the work evenly and progress
moves; a killed build loses at most the calls in flight."""
READ_BATCH_DOCUMENTS = 128
"""Documents per read task at most: the actors get their first documents early."""
PARTIAL_SAVE_SECONDS_ENV = "KUBEFORGE_INDEX_PARTIAL_SAVE_SECONDS"
"""How often embedded chunks of finished documents are saved for a retry (default FLUSH_SECONDS)."""


# --- Ray Data stages (run in Ray tasks and actors; plain functions of their batch) -------------------------------

def read_and_parse(batch: dict, bucket: str, text_field: str, id_field: Optional[str],
                   metadata_fields: tuple[str, ...]) -> dict:
    """Objects -> documents and skipped records (one row each; `text` empty for skipped ones)."""
    from kubeforge_workloads.index.parse import Document, parse_object

    rows: dict[str, list] = {name: [] for name in ("object", "document_id", "document_hash", "text", "metadata",
                                                   "anchors", "cause", "message")}
    objects = list(zip(batch["key"], batch["relative"], batch["format"]))
    for (key, relative, fmt), data in _fetched(objects, bucket):
        if data is None:  # deleted between listing and reading: the next sync drops it
            continue
        for item in parse_object(str(relative), str(fmt) or None, data, text_field, id_field, metadata_fields):
            document = isinstance(item, Document)
            rows["object"].append(str(relative))
            rows["document_id"].append(item.document_id)
            rows["document_hash"].append(item.content_hash if document else "")
            rows["text"].append(item.text if document else "")
            rows["metadata"].append(json.dumps(item.metadata if document else {}, default=str))
            rows["anchors"].append(json.dumps(item.anchors if document else []))
            rows["cause"].append("" if document else item.cause)
            rows["message"].append("" if document else item.message)
    return rows


def _fetched(objects: list[tuple], bucket: str):
    """((key, relative, format), bytes or None) for each object, in order, READ_THREADS GETs in flight: a window of
    READ_THREADS at a time, so a batch of large PDFs is never all in memory at once. No format: empty bytes, no GET."""
    from concurrent.futures import ThreadPoolExecutor

    store = _source_store()

    def fetch(obj: tuple) -> Optional[bytes]:
        key, _, fmt = obj
        return store.get(bucket, str(key)) if str(fmt) else b""

    with ThreadPoolExecutor(max_workers=min(READ_THREADS, max(1, len(objects))),
                            thread_name_prefix="kubeforge-read") as pool:
        for start in range(0, len(objects), READ_THREADS):
            window = objects[start:start + READ_THREADS]
            yield from zip(window, pool.map(fetch, window))


def read_items(objects: list[SourceObject]) -> list[dict]:
    """The rows read_and_parse takes a batch of, one per object."""
    return [{"key": o.key, "relative": o.relative, "format": o.format or ""} for o in objects]


_stores: dict = {}


def _source_store():
    """One S3 client per worker process and endpoint: creating a boto3 client costs more than reading a small
    document. Keyed by AWS_ENDPOINT_URL, so a process whose endpoint changes (a test process does) never reads
    through a client of the old one."""
    from kubeforge.storage.objectstore import S3ObjectStore

    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint not in _stores:
        _stores[endpoint] = S3ObjectStore()
    return _stores[endpoint]


_chunkers: dict = {}


def chunk_documents(batch: dict, model: str, strategy: str, size: int, overlap: int) -> dict:
    """Documents -> chunks (document_id, ordinal, chunks_in_document, text, metadata, document_hash)."""
    from kubeforge_workloads.index.chunking import DocumentChunker, token_counter
    from kubeforge_workloads.index.embedding import load_tokenizer
    from kubeforge_workloads.index.parse import Document

    key = (model, strategy, size, overlap)
    if key not in _chunkers:
        _chunkers[key] = DocumentChunker(token_counter(load_tokenizer(model_path(model))), strategy, size, overlap)
    chunker = _chunkers[key]
    rows: dict[str, list] = {name: [] for name in ("document_id", "ordinal", "chunks_in_document", "text",
                                                   "metadata", "document_hash")}
    for document_id, text, metadata, anchors, digest in zip(batch["document_id"], batch["text"], batch["metadata"],
                                                            batch["anchors"], batch["document_hash"]):
        document = Document(str(document_id), str(text), str(digest), json.loads(metadata),
                            [tuple(anchor) for anchor in json.loads(anchors)] or [(0, {})])
        chunks = chunker.chunk(document)
        for chunk in chunks:
            rows["document_id"].append(document.document_id)
            rows["ordinal"].append(chunk.ordinal)
            rows["chunks_in_document"].append(len(chunks))
            rows["text"].append(chunk.text)
            rows["metadata"].append(json.dumps(chunk.metadata, default=str, sort_keys=True))
            rows["document_hash"].append(document.content_hash)
    return rows


RECORD_COLUMNS = ("object", "cause", "message")


class DocumentEmbedder:
    """The Ray Data actor: chunks a batch of parsed documents and embeds the chunks. Chunking here rather than in
    tasks of its own keeps the model's tokenizer in one process and leaves the CPUs to the model instead of to a
    second pool of workers loading transformers.

    Every input row (a document or a skipped record) also comes out as one record row (ordinal -1, a zero vector)
    carrying what the driver needs to diff and report it, so the read stage can stream into this one; documents
    whose (id, content hash) is in `skip` (unchanged since the previous version, or saved by a killed attempt)
    are not embedded."""

    def __init__(self, model: str, strategy: str, size: int, overlap: int, batch_size: int, normalize: bool,
                 device: str, threads: int, skip: frozenset = frozenset()):
        from kubeforge_workloads.index.embedding import ChunkEmbedder

        _set_torch_threads(threads)
        self.chunking = {"model": model, "strategy": strategy, "size": size, "overlap": overlap}
        self.embedder = ChunkEmbedder(model, batch_size, normalize, device)
        self.dims = self.embedder.model.get_sentence_embedding_dimension()
        self.skip = skip

    def __call__(self, documents: dict) -> dict:
        count = len(documents["document_id"])
        records = {name: [str(v) for v in documents.get(name, [""] * count)] for name in RECORD_COLUMNS}
        embed = [not records["cause"][i] and (str(documents["document_id"][i]), str(documents["document_hash"][i]))
                 not in self.skip for i in range(count)]
        chunks = chunk_documents({name: [v for v, e in zip(values, embed) if e] for name, values in documents.items()
                                  if name in ("document_id", "text", "metadata", "anchors", "document_hash")},
                                 **self.chunking)
        if chunks["text"]:
            chunks = self.embedder({name: np.asarray(values) for name, values in chunks.items()})
        else:
            chunks["vector"] = np.zeros((0, self.dims), dtype=np.float32)
        embedded = len(chunks["text"])
        out = {name: list(chunks[name]) + [""] * count for name in ("text", "metadata")}
        out["document_id"] = list(chunks["document_id"]) + [str(v) for v in documents["document_id"]]
        out["document_hash"] = list(chunks["document_hash"]) + [str(v) for v in documents["document_hash"]]
        out["ordinal"] = list(chunks["ordinal"]) + [-1] * count
        out["chunks_in_document"] = list(chunks["chunks_in_document"]) + [0] * count
        for name in RECORD_COLUMNS:
            out[name] = [""] * embedded + records[name]
        result = {name: np.asarray(values) for name, values in out.items()}
        result["vector"] = np.concatenate([np.asarray(chunks["vector"], dtype=np.float32).reshape(-1, self.dims),
                                           np.zeros((count, self.dims), dtype=np.float32)])
        return result


def _set_torch_threads(threads: int) -> None:
    """As many torch threads as CPUs the actor holds: more compete with Ray's other workers for the same cores."""
    import torch

    if threads >= 1 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# --- the driver ---------------------------------------------------------------------------------------------------

class PhaseTimes:
    """Seconds spent in each phase of a sync (result.phaseSeconds), to tell start-up costs from embedding."""

    def __init__(self):
        self.marks: list[tuple[str, float]] = []

    def enter(self, phase: str) -> None:
        self.marks.append((phase, time.monotonic()))

    def seconds(self) -> dict[str, float]:
        ends = [at for _, at in self.marks[1:]] + [time.monotonic()]
        return {phase: round(end - at, 3) for (phase, at), end in zip(self.marks, ends)}


@dataclass
class Previous:
    """The current version, as far as a sync can reuse it."""

    version: int
    manifest: dict
    documents: list[dict]
    """Rows of documents.parquet."""
    local_dir: Path

    @property
    def reusable_objects(self) -> dict[str, tuple[str, int]]:
        return {row["object"]: (row["etag"], row["size"]) for row in self.documents}


def init_ray(cpus_needed: float) -> None:
    """Join the cluster when run as a RayJob entrypoint (RAY_ADDRESS is set), else start a local Ray."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto", ignore_reinit_error=True, log_to_driver=True)
    else:
        cpus = int(os.environ.get("KUBEFORGE_LOCAL_RAY_CPUS") or max(os.cpu_count() or 1, int(cpus_needed + 0.999)))
        ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
                 ignore_reinit_error=True, log_to_driver=True)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False


def load_previous(storage: WorkloadStorage, fingerprint: str, work: Path) -> Optional[Previous]:
    """The newest committed version when it was built with the same chunking and model; else None (rebuild)."""
    import pyarrow.parquet as pq

    versions = committed_versions(storage.store, storage.prefix)
    if not versions:
        return None
    manifest = read_manifest(storage.store, storage.prefix, versions[-1])
    if manifest is None:
        return None
    local = work / f"v-{versions[-1]}"
    # chunks.parquet once the sync knows it has work to do; the index when it is grown (_update_index).
    download_version(storage.store, storage.prefix, versions[-1], manifest, local, [INDEX_DOCUMENTS_FILE])
    if manifest.get("configFingerprint") != fingerprint:
        print(f"kubeforge: chunking or embedding changed since version {versions[-1]}: embedding every document")
        return Previous(versions[-1], manifest, [], local)
    return Previous(versions[-1], manifest, pq.read_table(local / INDEX_DOCUMENTS_FILE).to_pylist(), local)


def run(context: WorkloadContext, storage: WorkloadStorage) -> None:
    try:
        spec = VectorIndexSpec.model_validate(context.spec)
    except ValidationError as error:
        raise UserError(f"invalid VectorIndex spec: {error}") from None
    started = time.monotonic()
    heartbeat = Heartbeat(storage.write_progress, context.attempt).start()
    work = Path(tempfile.mkdtemp(prefix="kubeforge-index-"))
    finished = False
    try:
        result = sync(context, spec, storage, heartbeat, work)
        result["buildSeconds"] = round(time.monotonic() - started, 3)
        result.update(_track(context, spec, storage, result))
        storage.put_json(result, "result.json")
        heartbeat.update(message=f"version {result['version']}: {result['documents']} documents, "
                                 f"{result['chunks']} chunks")
        finished = True
    finally:
        heartbeat.stop(final_phase="Done" if finished else None)
        shutil.rmtree(work, ignore_errors=True)
        _shutdown_local_ray()


def _track(context: WorkloadContext, spec: VectorIndexSpec, storage: WorkloadStorage, result: dict) -> dict:
    """The sync's MLflow run: {"mlflowRunId": id}, or {"trackingError": why} when MLflow failed. The version is
    committed by now and serves queries either way, so an MLflow outage is reported, not a failed sync."""
    from kubeforge_workloads.common.tracking import tracked
    from kubeforge_workloads.index.tracking import log_sync

    def log() -> str:
        manifest = read_manifest(storage.store, storage.prefix, result["version"])
        return log_sync(context, spec, result, manifest, result["buildSeconds"])

    return tracked("the sync", log)


def sync(context: WorkloadContext, spec: VectorIndexSpec, storage: WorkloadStorage, heartbeat: Heartbeat,
         work: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = spec.source
    phases = PhaseTimes()
    phases.enter("Listing")
    heartbeat.update(phase="Listing")
    limit = max_chunk_tokens(model_path(spec.embedding.model, storage.store))
    if limit is not None and spec.chunking.size > limit:
        raise UserError(f"spec.chunking.size {spec.chunking.size} exceeds the {limit} tokens embedding model "
                        f"{spec.embedding.model} reads per chunk: set chunking.size to at most {limit}")
    fingerprint = config_fingerprint(spec)
    previous = load_previous(storage, fingerprint, work)
    reusable = previous.reusable_objects if previous else {}
    preload: Optional[threading.Thread] = None

    def unchanged(o: SourceObject) -> bool:
        return reusable.get(o.relative) == (o.etag, o.size)

    def listed(o: SourceObject) -> None:
        """A small re-sync embeds in the driver, and loading the model is most of its cost: it starts at the first
        changed document the listing shows, while the listing goes on (7,500 keys: 2-3 s), not after it."""
        nonlocal preload
        if preload is None and reusable and not unchanged(o) and o.size <= IN_PROCESS_MAX_BYTES:
            preload = preload_model(spec)

    objects = list_sources(storage.store.client, source.uri, source.include, source.exclude, listed)
    if not objects:
        raise UserError(f"spec.source.uri {source.uri} holds no objects matching include {source.include}"
                        f"{f' and not exclude {source.exclude}' if source.exclude else ''}: upload documents "
                        "there or fix spec.source")
    unchanged_objects = {o.relative for o in objects if unchanged(o)}
    to_read = [o for o in objects if o.relative not in unchanged_objects]
    kept_rows = [row for row in (previous.documents if previous else []) if row["object"] in unchanged_objects]
    index_config = spec.index.wire()
    if previous and not to_read and len(unchanged_objects) == len(reusable) \
            and previous.manifest.get("index") == index_config:
        print(f"kubeforge: nothing changed since version {previous.version}")
        documents = previous.manifest["documents"]
        heartbeat.update(step=documents, total_steps=documents)
        return {**_result(context, spec, previous.manifest, storage.prefix, previous.version, unchanged=True),
                "phaseSeconds": phases.seconds()}

    heartbeat.update(phase="Reading", message=f"reading {len(to_read)} new or changed of {len(objects)} objects")
    resources = spec.resources
    in_process = embeds_in_driver(previous, to_read)
    if preload is not None and not in_process:
        preload.join()  # more changed than the driver embeds: Ray's and transformers' imports, one at a time
    if previous is not None and previous.documents:  # the chunks to reuse: downloaded while the model loads
        download_version(storage.store, storage.prefix, previous.version, previous.manifest, previous.local_dir,
                         [INDEX_CHUNKS_FILE])
    version = (committed_versions(storage.store, storage.prefix) or [0])[-1] + 1
    saved = load_partial(storage.store, storage.prefix, version, None)
    previous_pairs = {(row["document_id"], row["document_hash"]) for row in (previous.documents if previous else [])
                      if not row["cause"]}
    done = len(kept_rows)
    saver = PartialChunks(storage.store, storage.prefix, version, context.attempt,
                          float(os.environ.get(PARTIAL_SAVE_SECONDS_ENV) or FLUSH_SECONDS))
    embedded: list = []
    seen: dict[str, int] = {}

    def take(batch: dict) -> None:
        """A batch of embedded chunks (numpy columns): kept, saved for a retry, counted as progress."""
        nonlocal done
        if not embedded:
            phases.enter("Embedding")
        embedded.append(embedded_table(batch))
        saver.add(embedded[-1])
        for document_id, total in zip(batch["document_id"], batch["chunks_in_document"]):
            seen[document_id] = seen.get(document_id, 0) + 1
            if seen[document_id] == int(total):
                done += 1
        heartbeat.update(step=done)
        stall_point()

    if in_process:
        phases.enter("Reading")
        parsed_rows = _read(to_read, _bucket(source.uri), spec)
    else:
        phases.enter("RayInit")
        init_ray(resources.workers * resources.cpus_per_worker + 1)
        # Reading, the actors' start-up and embedding overlap: one streaming Ray Data pipeline. Reading ends
        # when its last record comes back; EmbeddingStartup lasts until the first embedded batch does.
        phases.enter("EmbeddingStartup")
        heartbeat.update(phase="Embedding", step=done, total_steps=done + len(to_read),
                         message=f"reading and embedding {len(to_read)} new or changed objects, reusing {done} "
                                 "documents")
        parsed_rows = []
        skip = frozenset(previous_pairs | saved_documents(saved))
        for batch in _stream(to_read, _bucket(source.uri), spec, skip):
            is_record = np.asarray(batch["ordinal"]) < 0
            records = {name: np.asarray(values)[is_record] for name, values in batch.items()}
            parsed_rows.extend(_rows({name: records[name] for name in ("object", "document_id", "document_hash",
                                                                        "cause", "message")}))
            chunks = {name: np.asarray(values)[~is_record] for name, values in batch.items()}
            # Saved and counted embedding.batchSize chunks at a time, as in the driver.
            for start in range(0, len(chunks["ordinal"]), spec.embedding.batch_size):
                take({name: values[start:start + spec.embedding.batch_size] for name, values in chunks.items()})
        parsed_rows.sort(key=lambda row: row["document_id"])

    read_objects = {o.relative: o for o in to_read}
    current_rows = kept_rows + [{"object": row["object"], "etag": read_objects[row["object"]].etag,
                                 "size": read_objects[row["object"]].size, "document_id": row["document_id"],
                                 "document_hash": row["document_hash"], "cause": row["cause"],
                                 "message": row["message"], "chunks": 0} for row in parsed_rows]
    indexed = {row["document_id"]: row["document_hash"] for row in current_rows if not row["cause"]}
    before = {row["document_id"]: row["document_hash"] for row in (previous.documents if previous else [])
              if not row["cause"]}
    plan = diff_documents(before, indexed)
    streamed = {(str(d), str(h)) for part in embedded for d, h in zip(part.column("document_id").to_pylist(),
                                                                      part.column("document_hash").to_pylist())}
    # Saved by a killed attempt, still current, and not embedded again above.
    resumed = current_only(saved, {d: indexed[d] for d in plan.to_embed if (d, indexed[d]) not in streamed})
    resumed_ids = set(resumed.column("document_id").to_pylist()) if resumed is not None else set()
    if in_process:
        to_embed = [row for row in parsed_rows if not row["cause"] and row["document_id"] in plan.to_embed
                    and row["document_id"] not in resumed_ids]
        done = len(plan.unchanged) + len(resumed_ids)
        phases.enter("EmbeddingStartup" if to_embed else "Embedding")
        heartbeat.update(phase="Embedding", step=done, total_steps=len(indexed),
                         message=f"embedding {len(to_embed)} new or changed documents, reusing {done}")
        if preload is not None:
            preload.join()  # transformers' lazy imports are not safe from two threads at once
        if to_embed:
            # Saved a batch of embedding.batchSize at a time: a killed build loses at most one encode call.
            for batch in _embedded_batches(to_embed, spec):
                take(batch)
    phases.enter("Indexing")
    heartbeat.update(phase="Indexing", step=len(indexed), total_steps=len(indexed))
    embedded_chunks = sum(part.num_rows for part in embedded)
    resumed_chunks = resumed.num_rows if resumed is not None else 0

    table = _chunk_table(previous, set(plan.unchanged), embedded + ([resumed] if resumed is not None else []))
    if table.num_rows == 0:
        skipped = _skipped_summary(current_rows)
        raise UserError(f"spec.source.uri {source.uri}: none of the {len(objects)} objects had text to index "
                        f"(skipped: {json.dumps({cause: s['count'] for cause, s in skipped.items()})}); add "
                        "documents in .txt, .md, .html, .pdf or .jsonl")
    per_document = {}
    for document_id in table.column("document_id").to_pylist():
        per_document[document_id] = per_document.get(document_id, 0) + 1
    for row in current_rows:
        row["chunks"] = per_document.get(row["document_id"], 0)

    vectors = np.asarray(table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                         dtype=np.float32).reshape(table.num_rows, -1)
    stored = engine.prepare(vectors, spec.index.metric.value)
    update = _update_index(storage, previous, index_config, table, stored, spec)
    table = table.set_column(table.column_names.index("vector_id"), "vector_id",
                             pa.array(update.vector_ids, pa.int64()))
    index = update.index
    recall, queries = engine.recall_at_k(index, stored, spec.index.metric.value, RECALL_K, RECALL_SAMPLE,
                                         spec.index.hnsw.ef_search,
                                         excluded=update.tombstones if len(update.tombstones) else None)

    out = work / f"v-{version}-new"
    out.mkdir(parents=True)
    pq.write_table(table, out / INDEX_CHUNKS_FILE)
    pq.write_table(pa.Table.from_pylist(current_rows, schema=_documents_schema()), out / INDEX_DOCUMENTS_FILE)
    engine.save(index, str(out / INDEX_VECTORS_FILE))
    skipped = _skipped_summary(current_rows)
    manifest = {
        "createdAt": utcnow(), "resourceUid": context.uid, "generation": context.generation,
        "attempt": context.attempt, "syncGeneration": spec.sync_generation, "previousVersion":
        previous.version if previous else None, "configFingerprint": fingerprint,
        "embedding": {"model": spec.embedding.model, "normalize": spec.embedding.normalize},
        "chunking": spec.chunking.wire(), "index": index_config, "metric": spec.index.metric.value,
        "dims": int(vectors.shape[1]), "documents": len(indexed), "chunks": table.num_rows,
        "recall": {"k": RECALL_K, "value": round(recall, 4), "queries": queries},
        "vectors": {"total": int(index.ntotal), "tombstones": len(update.tombstones), "update": update.mode,
                    "reason": update.reason},
        "skipped": skipped,
        "sync": {"embeddedDocuments": len(plan.to_embed), "reusedDocuments": len(plan.unchanged),
                 "deletedDocuments": len(plan.deleted), "addedDocuments": len(plan.added),
                 "changedDocuments": len(plan.changed),
                 "embeddedChunks": embedded_chunks, "resumedChunks": resumed_chunks,
                 "reusedChunks": table.num_rows - embedded_chunks - resumed_chunks},
    }
    phases.enter("Writing")
    heartbeat.update(phase="Writing", message=f"writing version {version}")
    commit_version(storage.store, storage.prefix, version, out, manifest)
    removed = apply_retention(storage.store, storage.prefix, version, spec.keep_versions)
    manifest = read_manifest(storage.store, storage.prefix, version)
    return {**_result(context, spec, manifest, storage.prefix, version), "removedVersions": removed,
            "phaseSeconds": phases.seconds()}


def _update_index(storage: WorkloadStorage, previous: Optional[Previous], index_config: dict, table, stored,
                  spec: VectorIndexSpec) -> IndexUpdate:
    """Grow the previous version's index by this sync's new vectors when it has the same shape, else build."""
    hnsw = spec.index.hnsw
    reused_ids = np.asarray(table.column("vector_id").to_numpy(zero_copy_only=False), dtype=np.int64)
    previous_index, why = None, "no previous version"
    if previous is not None and previous.documents:
        if index_shape(previous.manifest.get("index") or {}) == index_shape(index_config):
            download_version(storage.store, storage.prefix, previous.version, previous.manifest, previous.local_dir,
                             [INDEX_VECTORS_FILE])
            previous_index = engine.load(str(previous.local_dir / INDEX_VECTORS_FILE))
        else:
            why = "the index's metric, type, m or efConstruction changed"
    elif previous is not None:
        why = "chunking or embedding changed"
    return update_index(stored, reused_ids, previous_index, spec.index.metric.value, spec.index.type.value, hnsw.m,
                        hnsw.ef_construction, why)


def _documents_schema():
    import pyarrow as pa

    return pa.schema([("object", pa.string()), ("etag", pa.string()), ("size", pa.int64()),
                      ("document_id", pa.string()), ("document_hash", pa.string()), ("cause", pa.string()),
                      ("message", pa.string()), ("chunks", pa.int64())])


def _bucket(uri: str) -> str:
    from kubeforge.storage.layout import parse_s3_uri

    return parse_s3_uri(uri)[0]


def _shutdown_local_ray() -> None:
    """Stop the Ray this driver started (never a cluster it joined)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        ray.shutdown()


def _read(objects: list[SourceObject], bucket: str, spec: VectorIndexSpec) -> list[dict]:
    """Read and parse `objects` in the driver (a small re-sync); the Ray path reads in _stream."""
    if not objects:
        return []
    jsonl = spec.source.jsonl
    items = read_items(objects)
    rows = _rows(read_and_parse({name: [item[name] for item in items] for name in items[0]}, bucket,
                                jsonl.text_field, jsonl.id_field, tuple(jsonl.metadata_fields)))
    return sorted(rows, key=lambda row: row["document_id"])


def preload_model(spec: VectorIndexSpec) -> threading.Thread:
    """Import torch and sentence-transformers and load the model in the background while the driver lists the
    source, downloads the previous version's chunks and reads the changed documents (network waits): a small
    re-sync embeds in the driver, and those imports are most of its cost. load_model() caches the model; a failure
    here is left for it to report."""
    from kubeforge_workloads.index.embedding import load_model

    def load() -> None:
        try:
            load_model(spec.embedding.model, spec.embedding.device.value)
        except Exception:  # noqa: BLE001 - the embedding phase loads it again and reports why
            pass

    thread = threading.Thread(target=load, name="kubeforge-preload-model", daemon=True)
    thread.start()
    return thread


def embeds_in_driver(previous: Optional[Previous], to_read: list[SourceObject]) -> bool:
    return bool(previous and previous.documents) and sum(o.size for o in to_read) <= IN_PROCESS_MAX_BYTES


def read_batch_size(objects: int, cpus: int) -> int:
    return max(8, -(-objects // max(1, cpus * READ_TASKS_PER_CPU)))


def documents_per_call(objects: int, actors: int) -> int:
    return min(MAX_DOCUMENTS_PER_CALL,
               max(MIN_DOCUMENTS_PER_CALL, -(-objects // max(1, actors * CALLS_PER_ACTOR))))


def _rows(columns: dict) -> list[dict]:
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*(columns[name] for name in names))]


def _embedded_batches(documents: list[dict], spec: VectorIndexSpec):
    """Batches (numpy columns) of embedding.batchSize chunks with their `vector`, embedded in the driver."""
    from kubeforge_workloads.index.embedding import ChunkEmbedder

    size, chunking = spec.embedding.batch_size, spec.chunking
    chunks = chunk_documents({name: [row[name] for row in documents] for name in documents[0]},
                             spec.embedding.model, chunking.strategy.value, chunking.size, chunking.overlap)
    embedder = ChunkEmbedder(spec.embedding.model, size, spec.embedding.normalize, spec.embedding.device.value)
    call = size * ENCODE_CALL_BATCHES
    for start in range(0, len(chunks["text"]), call):
        embedded = embedder({name: np.asarray(values[start:start + call]) for name, values in chunks.items()})
        for offset in range(0, len(embedded["text"]), size):
            yield {name: values[offset:offset + size] for name, values in embedded.items()}


def _stream(objects: list[SourceObject], bucket: str, spec: VectorIndexSpec, skip: frozenset):
    """Read, parse, chunk and embed `objects` as one streaming Ray Data pipeline (the actor pool starts while the
    first objects are read); yields numpy batches of embedded chunks and record rows (DocumentEmbedder). Order is
    preserved, so the same objects always make the same embedding batches, and so the same vectors."""
    import ray
    import ray.data
    from ray.data import DataContext

    if not objects:
        return
    DataContext.get_current().execution_options.preserve_order = True
    jsonl, embedding, resources, chunking = spec.source.jsonl, spec.embedding, spec.resources, spec.chunking
    items = read_items(objects)
    use_gpu = resources.gpus_per_worker > 0 and embedding.device.value != "cpu"
    layout = actor_layout(resources, use_gpu, model_bytes(model_path(embedding.model)))
    read_batch = min(read_batch_size(len(items), int(ray.cluster_resources().get("CPU", 1))), READ_BATCH_DOCUMENTS)
    dataset = ray.data.from_items(items).map_batches(
        read_and_parse, batch_size=read_batch, num_cpus=layout.read_cpus,
        fn_kwargs={"bucket": bucket, "text_field": jsonl.text_field, "id_field": jsonl.id_field,
                   "metadata_fields": tuple(jsonl.metadata_fields)},
    ).map_batches(
        DocumentEmbedder, batch_size=documents_per_call(len(items), layout.actors),
        compute=ray.data.ActorPoolStrategy(size=layout.actors), num_cpus=layout.cpus, num_gpus=layout.gpus,
        fn_constructor_kwargs={"model": embedding.model, "strategy": chunking.strategy.value, "size": chunking.size,
                               "overlap": chunking.overlap, "batch_size": embedding.batch_size,
                               "normalize": embedding.normalize, "device": embedding.device.value,
                               "threads": layout.threads, "skip": skip})
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy")


def _chunk_table(previous: Optional[Previous], reused_documents: set[str], embedded: list):
    """Reused chunks (unchanged documents, from the previous version, with their vector ids) and new ones
    (embedded_table()s, vector id -1), sorted by document and ordinal."""
    import hashlib

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    columns = ["document_id", "ordinal", "text", "metadata", "document_hash", "vector"]
    parts = []
    if previous is not None and reused_documents:
        old = pq.read_table(previous.local_dir / INDEX_CHUNKS_FILE)
        if "vector_id" not in old.column_names:  # a format-1 version: row r is vector id r
            old = old.append_column("vector_id", pa.array(np.arange(old.num_rows, dtype=np.int64)))
        old = old.filter(pc.is_in(old.column("document_id"), value_set=pa.array(sorted(reused_documents))))
        parts.append(old.select(columns + ["vector_id"]))
    # New chunks get their vector ids when the index is updated (-1 until then).
    parts.extend(part.select(columns).append_column("vector_id", pa.array(np.full(part.num_rows, -1, np.int64)))
                 for part in embedded)
    if not parts:
        return pa.table({"document_id": pa.array([], pa.string())})
    dims = {p.schema.field("vector").type.list_size for p in parts}
    if len(dims) > 1:
        raise UserError(f"embedding dimensions differ between reused and new chunks: {sorted(dims)}")
    table = pa.concat_tables(parts).sort_by([("document_id", "ascending"), ("ordinal", "ascending")])
    chunk_ids = [f"{d}#c{o}" for d, o in zip(table.column("document_id").to_pylist(),
                                               table.column("ordinal").to_pylist())]
    hashes = [hashlib.sha256(t.encode()).hexdigest() for t in table.column("text").to_pylist()]
    return table.add_column(0, "chunk_id", pa.array(chunk_ids, pa.string())).append_column(
        "content_hash", pa.array(hashes, pa.string()))


def _skipped_summary(rows: list[dict]) -> dict[str, dict]:
    summary: dict[str, dict] = {}
    for row in rows:
        if row["cause"]:
            entry = summary.setdefault(row["cause"], {"count": 0, "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < SKIP_EXAMPLES:
                entry["examples"].append(row["message"])
    return summary


def _result(context: WorkloadContext, spec: VectorIndexSpec, manifest: dict, prefix: ResourcePrefix, version: int,
            unchanged: bool = False) -> dict:
    """outputs/result.json: what the operator copies to status."""
    recall = manifest["recall"]
    return {
        "version": version, "documents": manifest["documents"], "chunks": manifest["chunks"],
        "indexUri": f"s3://{prefix.bucket}/{prefix.index_version_key(version)}",
        "metric": manifest["metric"], "dims": manifest["dims"], "type": manifest["index"]["type"],
        "model": manifest["embedding"]["model"],
        "recall": recall["value"], "recallK": recall["k"], "recallQueries": recall["queries"],
        "minRecall": spec.index.min_recall, "degraded": recall["value"] < spec.index.min_recall,
        "skipped": manifest["skipped"],
        "skippedDocuments": sum(entry["count"] for entry in manifest["skipped"].values()),
        **({"sync": {**{k: 0 for k in manifest["sync"]}, "reusedDocuments": manifest["documents"],
                     "reusedChunks": manifest["chunks"]}} if unchanged else {"sync": manifest["sync"]}),
        "indexUpdate": "none" if unchanged else (manifest.get("vectors") or {}).get("update"),
        "unchanged": unchanged, "lastSyncTime": utcnow(), "syncGeneration": spec.sync_generation,
        "resourceUid": context.uid, "generation": context.generation, "attempt": context.attempt,
    }


def main() -> None:
    run_entrypoint(run, "VectorIndex sync")
