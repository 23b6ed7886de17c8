"""The progress heartbeat a workload writes and the operator reads (DESIGN.md §3.1)."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from kubeforge.api.goodput import Goodput


class Progress(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    attempt: int
    phase: str
    """Starting, NodeCheck, Loading, Training, Checkpointing, Evaluating, Registering, Done."""
    step: int = 0
    total_steps: Optional[int] = None
    epoch: Optional[float] = None
    loss: Optional[float] = None
    eval_loss: Optional[float] = None
    throughput: Optional[float] = None
    """Tokens per second over the last interval."""
    last_checkpoint: Optional[str] = None
    resumed_from: Optional[str] = None
    updated_at: str
    """RFC 3339 UTC timestamp of this heartbeat."""
    message: Optional[str] = None
    goodput: Optional[Goodput] = None
    """Written by workloads that measure it (TrainingJob); None from the others."""

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


class FailureReport(BaseModel):
    """Written by a workload that fails in a way it understands, before it exits."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    attempt: int
    exit_code: int
    reason: str
    """A FailureReason value the workload is sure of (UserError, OutOfMemory, NodeCheckFailed...)."""
    message: str
    traceback_tail: Optional[str] = None


class CheckpointManifest(BaseModel):
    """Written last into checkpoints/step-<n>/; lists every file so a reader can verify completeness."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    step: int
    epoch: float
    attempt: int
    files: dict[str, int]
    """Relative path → size in bytes."""
    created_at: str
