"""Per-row results in the object store, saved in batches as rows complete, so a later attempt skips rows already
scored (their answers and verdicts are kept, not requested again).

outputs/rows/a<attempt>-<seq>.jsonl  one JSON row result a line: id, question, expected_answer, answer,
    retrieved {index: [document ids]}, scores {criterion: 0-3}, justifications {criterion: text}, score (weighted),
    latency_seconds, prompt_tokens, completion_tokens, judge_requests, error (null when scored), raw_reply (the
    judge's last reply of an error row), fingerprint
outputs/results.jsonl  the final table, in dataset order (resultsUri)

Each saved row carries the fingerprint of what produced it (spec and resolved inputs); a row saved under another
fingerprint is not reused. Error rows are tried again by a later attempt.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time

from kubeforge_workloads.common.storage import WorkloadStorage

PARTS = "rows"
RESULTS_FILE = "results.jsonl"
FLUSH_ROWS = 8
FLUSH_SECONDS = 5.0


def fingerprint(spec: dict, inputs: dict) -> str:
    return hashlib.sha256(json.dumps([spec, inputs], sort_keys=True).encode()).hexdigest()[:16]


def saved_rows(storage: WorkloadStorage, run_fingerprint: str) -> dict[str, dict]:
    """row id -> the row result saved by earlier attempts (the latest saved wins)."""
    prefix = storage.prefix
    keys = sorted(storage.store.list(prefix.bucket, prefix.output_key(PARTS) + "/"), key=_part_order)
    rows: dict[str, dict] = {}
    for key in keys:
        raw = storage.store.get(prefix.bucket, key) or b""
        for line in raw.decode().splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("fingerprint") == run_fingerprint:
                    rows[row["id"]] = row
    return rows


def _part_order(key: str) -> tuple[int, int]:
    attempt, seq = key.rsplit("/", 1)[-1].removesuffix(".jsonl").lstrip("a").split("-")
    return int(attempt), int(seq)


class RowSaver:
    """Collects finished rows and writes them as one part every FLUSH_ROWS rows or FLUSH_SECONDS."""

    def __init__(self, storage: WorkloadStorage, run_fingerprint: str, flush_rows: int = FLUSH_ROWS,
                 flush_seconds: float = FLUSH_SECONDS):
        self.storage, self.fingerprint = storage, run_fingerprint
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.pending: list[dict] = []
        self.sequence = 0
        self.last_flush = time.monotonic()
        self._lock = threading.Lock()

    def add(self, row: dict) -> None:
        with self._lock:
            self.pending.append({**row, "fingerprint": self.fingerprint})
            if len(self.pending) >= self.flush_rows or time.monotonic() - self.last_flush >= self.flush_seconds:
                self._flush()

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            body = "".join(json.dumps(row, sort_keys=True) + "\n" for row in self.pending)
            self.sequence += 1
            prefix, attempt = self.storage.prefix, self.storage.context.attempt
            self.storage.store.put(prefix.bucket, prefix.output_key(PARTS, f"a{attempt}-{self.sequence:05d}.jsonl"),
                                   body.encode())
            self.pending = []
        self.last_flush = time.monotonic()


def write_results(storage: WorkloadStorage, rows: list[dict]) -> str:
    """The final per-row table; returns its s3:// URI."""
    prefix = storage.prefix
    key = prefix.output_key(RESULTS_FILE)
    storage.store.put(prefix.bucket, key, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode())
    return f"s3://{prefix.bucket}/{key}"
