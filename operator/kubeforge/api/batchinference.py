"""The contract between `kubeforge batch` and its workload (`kubeforge_workloads.batch`): what one batch
inference run over a table does, carried in the RayJob's WorkloadContext as inputs["batch"] (with the endpoint's
resolved ServeAppConfig as inputs["app"]).

Output layout under `output` (one JSON line per input row, `{"row": <index>, "id": <id column>, "text": ...,
"json": <parsed answer or null>}`):

    part-<first row, 9 digits>.jsonl    the results of rows [first, first + blockRows); written in one PUT, so a
                                        shard either exists whole or not at all, and a rerun skips it
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

INPUT_FORMATS = (".jsonl", ".json", ".parquet")
SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".jsonl"


class BatchInference(BaseModel):
    id: str
    """Stable for the same endpoint, template, model, input and output: reruns share (and resume) the output."""
    template: str
    """A promptTemplates entry of the endpoint."""
    model: str
    """Which weights answer: the endpoint's name (its base model) or one of its adapters."""
    input: str
    """s3://bucket/key of a JSONL or Parquet table."""
    output: str
    """s3://bucket/prefix/ the shards are written under."""
    column: str = "text"
    """The input column whose value fills the template's {input}."""
    id_column: Optional[str] = None
    """Copied into each result as `id` when set and present in the row."""
    block_rows: int = Field(default=16, ge=1)
    """Rows per output shard: the unit of progress and of resume."""


def shard_name(first_row: int) -> str:
    return f"{SHARD_PREFIX}{first_row:09d}{SHARD_SUFFIX}"


def shard_first_row(name: str) -> Optional[int]:
    """The first row of a shard from its object name (`…/part-000000016.jsonl` -> 16); None for anything else."""
    base = name.rsplit("/", 1)[-1]
    if not (base.startswith(SHARD_PREFIX) and base.endswith(SHARD_SUFFIX)):
        return None
    digits = base[len(SHARD_PREFIX):-len(SHARD_SUFFIX)]
    return int(digits) if digits.isdigit() else None


def block_starts(total_rows: int, block_rows: int) -> list[int]:
    return list(range(0, total_rows, block_rows))


def pending_blocks(total_rows: int, block_rows: int, existing: list[str]) -> list[int]:
    """First rows of the blocks still to do: every block whose shard is not among `existing` object names."""
    done = {shard_first_row(name) for name in existing}
    return [start for start in block_starts(total_rows, block_rows) if start not in done]


class BatchProgress(BaseModel):
    """What the workload writes at `ResourcePrefix.batch_progress_key(id)` after each shard, and the CLI prints."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    attempt: int
    phase: str
    """Loading, Generating, Done."""
    rows_done: int
    """Rows with a committed result, including those an earlier attempt wrote."""
    rows_total: int
    rows_skipped: int = 0
    """Rows this attempt found already written (not generated again)."""
    updated_at: str
