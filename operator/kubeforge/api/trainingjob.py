"""TrainingJob: pretrain or continue-train a causal LM with Ray Train (DDP/FSDP), resumable."""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional

from pydantic import Field

from kubeforge.api.finetune import DATA_URI_PATTERN, MODEL_URI_PATTERN, Precision
from kubeforge.api.meta import ApiModel
from kubeforge.api.shared import CommonSpec


class Strategy(str, Enum):
    DDP = "ddp"
    FSDP = "fsdp"


class ModelSpec(ApiModel):
    """The model to train: an architecture config, or an existing checkpoint to continue from."""

    config: Optional[dict[str, Any]] = Field(default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    """transformers config (e.g. LlamaConfig fields with model_type) to build the model from scratch."""
    init_from: Optional[str] = Field(default=None, pattern=MODEL_URI_PATTERN)
    """Continue training from this model directory."""
    tokenizer_uri: Optional[str] = Field(default=None, pattern=MODEL_URI_PATTERN)
    """Tokenizer directory; defaults to initFrom."""


class TextDataset(ApiModel):
    """Training text: JSON Lines in the object store."""

    train_uri: str = Field(pattern=DATA_URI_PATTERN)
    """s3:// URI of a JSONL file with a text field per row."""
    text_field: str = "text"
    """Row field holding the text to train on."""


class PretrainConfig(ApiModel):
    """Optimisation and distribution settings."""

    max_steps: int = Field(ge=1)
    """Optimizer steps to train for (required: pretraining has no natural end)."""
    batch_size: int = Field(default=8, ge=1)
    """Sequences per worker per optimizer step."""
    learning_rate: float = Field(default=3e-4, gt=0, le=1)
    """Peak learning rate of the optimizer."""
    max_seq_length: int = Field(default=512, ge=8)
    """Sequence length in tokens that the text is packed into."""
    seed: int = Field(default=42, ge=0)
    """Random seed for initialisation and data order; the same seed repeats a run."""
    precision: Precision = Precision.FP32
    """Numeric precision of training: fp32, or bf16 / fp16 mixed precision (needs hardware that supports it)."""
    checkpoint_every_steps: int = Field(default=100, ge=1)
    """Commit a checkpoint to the object store every this many optimizer steps; a retry resumes from the latest."""
    strategy: Strategy = Strategy.DDP
    """ddp (each worker holds the whole model) or fsdp (parameters sharded across workers)."""
    ema_decay: Optional[float] = Field(default=None, gt=0, lt=1)
    """Keep an exponential moving average of the weights with this decay."""


class TrainingJobSpec(CommonSpec):
    """Pretrain or continue-train a model; survives hardware failures by resuming mid-epoch."""

    model: ModelSpec
    """The architecture to build, or the checkpoint to continue from."""
    dataset: TextDataset
    """Training text."""
    training: PretrainConfig
    """Optimisation and distribution settings."""
