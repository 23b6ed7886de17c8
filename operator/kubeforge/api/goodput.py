"""Goodput: how much of a training resource's wall time built the final model. The workload measures it, its
heartbeat carries it (kubeforge.storage.progress) and a TrainingJob's status shows it."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Recovery(BaseModel):
    """One resume after a failure: what it cost."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    attempt: int
    """The attempt that resumed."""
    resumed_at_step: int
    """The checkpoint's step it resumed from."""
    steps_lost: int
    """Steps the failed worker group had trained past that checkpoint (its last heartbeat's step): trained again."""
    recovery_seconds: Optional[float] = None
    """From the failed group's last heartbeat to the first step finished after the resume."""


class Goodput(BaseModel):
    """productive / wall: productive counts the seconds of the steps the final model is built from (steps trained
    again after a resume count once, the lost run of them not at all; checkpoint stalls are not productive); wall
    counts from the resource's first attempt."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    ratio: float
    productive_seconds: float
    wall_seconds: float
    recoveries: list[Recovery] = []
