"""Training text to packed token sequences: every row's text tokenized with an end-of-sequence token, the token
stream cut into sequences of `sequence_length` (the remainder dropped). Sample id i is the i-th sequence, the same
on every rank and every attempt, so the sampler's ids name the same tokens everywhere."""

from __future__ import annotations

import json
from pathlib import Path

from kubeforge_workloads.common.errors import DataError
from kubeforge_workloads.common.storage import download_uri

MAX_REPORTED = 5


def read_texts(path: Path, text_field: str, source: str) -> list[str]:
    """Texts of every row of a JSONL file, or of every *.jsonl file under a directory (sorted by name); all
    problems are reported together with file and line."""
    files = [path] if path.is_file() else sorted(path.rglob("*.jsonl"))
    texts, problems = [], []
    for file in files:
        name = file.name if path.is_dir() else source
        with open(file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    problems.append(f"{name} line {number}: not JSON ({error.msg})")
                    continue
                text = row.get(text_field) if isinstance(row, dict) else None
                if not isinstance(text, str) or not text:
                    problems.append(f"{name} line {number}: no non-empty string field {text_field!r} "
                                    "(spec.dataset.textField)")
                    continue
                texts.append(text)
    if problems:
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{source}: {len(problems)} invalid row(s): {'; '.join(problems[:MAX_REPORTED])}{more}")
    if not texts:
        raise DataError(f"{source}: no rows (spec.dataset.uri)")
    return texts


def pack(texts: list[str], tokenizer, sequence_length: int):
    """A [num_sequences, sequence_length] int64 tensor of the concatenated token stream."""
    import torch

    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(tokenizer.eos_token_id)
    count = len(stream) // sequence_length
    return torch.tensor(stream[:count * sequence_length], dtype=torch.int64).reshape(count, sequence_length)


def load_sequences(spec, tokenizer, cache: Path, store):
    """spec.dataset (jsonl-text) tokenized and packed here, without a cache."""
    source = spec.dataset.uri
    path = download_uri(store, source, cache / "dataset")
    sequences = pack(read_texts(path, spec.dataset.text_field, source), tokenizer, spec.training.sequence_length)
    require_one_batch(spec, len(sequences))
    return sequences


def require_one_batch(spec, count: int) -> None:
    if count < spec.training.global_batch_size:
        raise DataError(f"{spec.dataset.uri}: {count} packed sequences of {spec.training.sequence_length} tokens, "
                        f"fewer than one global batch (spec.training.globalBatchSize "
                        f"{spec.training.global_batch_size}); add text or lower either")
