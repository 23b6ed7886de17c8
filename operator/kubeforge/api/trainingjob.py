"""TrainingJob: pretrain (or continue training) a causal LM with Ray Train (DDP/FSDP, scheduled EMA), resumable
mid-epoch and bit-exact after failures."""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional

from pydantic import Field, model_validator

from kubeforge.api.finetune import DATA_URI_PATTERN, MODEL_URI_PATTERN, LrScheduler, Precision
from kubeforge.api.meta import DEFAULT_EMPTY_OBJECT, ApiModel
from kubeforge.api.shared import BatchSpec, cel


class Strategy(str, Enum):
    DDP = "ddp"
    FSDP = "fsdp"


class FsdpShardingStrategy(str, Enum):
    FULL_SHARD = "FULL_SHARD"
    SHARD_GRAD_OP = "SHARD_GRAD_OP"
    NO_SHARD = "NO_SHARD"


class TextFormat(str, Enum):
    JSONL_TEXT = "jsonl-text"
    TOKENIZED_SHARDS = "tokenized-shards"


class ModelSource(ApiModel):
    """The model to train: a transformers config built from scratch, or an existing model to continue training."""

    model_config = cel(("has(self.config) != has(self.uri)", "set exactly one of model.config or model.uri"))

    config: Optional[dict[str, Any]] = Field(default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    """transformers config fields (with model_type, e.g. llama) of a model built from scratch with the seed."""
    uri: Optional[str] = Field(default=None, pattern=MODEL_URI_PATTERN, max_length=1024)
    """Continue training this model: s3://bucket/dir, models:/<name>/<version> (MLflow registry) or hf://org/name."""

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSource":
        # The CRD's CEL rules say the same at admission; these hold for specs that never went through it.
        if (self.config is None) == (self.uri is None):
            raise ValueError("set exactly one of model.config or model.uri")
        return self


class TokenizerSource(ApiModel):
    """The tokenizer the text is encoded with."""

    uri: str = Field(pattern=MODEL_URI_PATTERN, max_length=1024)
    """Directory holding the tokenizer files: s3://, models:/<name>/<version> or hf://."""


class PretrainDataset(ApiModel):
    """Training text in the object store."""

    uri: str = Field(pattern=DATA_URI_PATTERN, max_length=1024)
    """jsonl-text: an s3:// JSONL file (or prefix of them); tokenized-shards: the s3:// prefix of shards a
    precompute step wrote."""
    format: TextFormat = TextFormat.JSONL_TEXT
    """jsonl-text (tokenized and packed at start-up) or tokenized-shards (already packed)."""
    text_field: str = Field(default="text", min_length=1, max_length=128)
    """Row field holding the text (jsonl-text)."""
    shuffle_seed: Optional[int] = Field(default=None, ge=0)
    """Seed of the global sample order (a function of this seed and the epoch only); defaults to training.seed."""


class PretrainTraining(ApiModel):
    """Optimisation settings."""

    model_config = cel(("has(self.maxSteps) != has(self.epochs)", "set exactly one of training.maxSteps or "
                                                                   "training.epochs"))

    max_steps: Optional[int] = Field(default=None, ge=1)
    """Optimizer steps to train for."""
    epochs: Optional[float] = Field(default=None, gt=0, le=1000)
    """Passes over the packed dataset (a partial global batch at the end of an epoch is dropped)."""
    global_batch_size: int = Field(default=8, ge=1, le=1048576)
    """Sequences per optimizer step, all workers together; must be divisible by workers x microBatchSize."""
    micro_batch_size: int = Field(default=1, ge=1, le=4096)
    """Sequences per worker per forward pass; gradient accumulation = globalBatchSize / (workers x microBatchSize)."""
    sequence_length: int = Field(default=512, ge=8, le=131072)
    """Tokens per packed training sequence."""
    learning_rate: float = Field(default=3e-4, gt=0, le=1)
    """Peak learning rate of AdamW."""
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    """AdamW weight decay."""
    scheduler: LrScheduler = LrScheduler.COSINE
    """Learning-rate schedule after warmup: linear, cosine, constant or constant_with_warmup."""
    warmup_steps: int = Field(default=0, ge=0)
    """Steps over which the learning rate rises linearly from 0 to learningRate."""
    precision: Precision = Precision.FP32
    """fp32, or bf16 / fp16 autocast (bf16 on CPU and recent GPUs)."""
    seed: int = Field(default=42, ge=0)
    """Seed of the initial weights and of every rank's RNG; the same seed repeats a run exactly."""
    gradient_clipping: Optional[float] = Field(default=1.0, gt=0)
    """Clip the global gradient norm to this value; unset: no clipping."""
    checkpoint_every_steps: int = Field(default=100, ge=1)
    """Commit a checkpoint to the object store every this many optimizer steps (and at the end)."""
    keep_checkpoints: Optional[int] = Field(default=3, ge=1, le=1000)
    """Committed checkpoints kept in the object store (older ones are deleted); unset keeps all."""

    @model_validator(mode="after")
    def _one_length(self) -> "PretrainTraining":
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of training.maxSteps or training.epochs")
        return self


class Parallelism(ApiModel):
    """How the model is spread over the workers."""

    strategy: Strategy = Strategy.DDP
    """ddp (every worker holds the whole model) or fsdp (parameters, gradients and optimizer state sharded)."""
    fsdp_sharding_strategy: FsdpShardingStrategy = FsdpShardingStrategy.FULL_SHARD
    """fsdp only: FULL_SHARD (re-shard after forward), SHARD_GRAD_OP (keep parameters gathered between forward
    and backward, ZeRO-2-like) or NO_SHARD (replicated, as ddp)."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass: less memory, about a third more compute."""


class EmaSpec(ApiModel):
    """A scheduled exponential moving average of the weights, exported next to the final model."""

    decay: float = Field(gt=0, lt=1)
    """Weight of the previous average at each step (e.g. 0.9999)."""
    start_fraction: float = Field(default=0.0, ge=0, le=1)
    """Fraction of the steps after which averaging starts (the seed's schedule: about 0.965); no EMA cost before."""


class PrecomputeSpec(ApiModel):
    """Tokenize and pack the dataset once into shards in the object store, reused by later attempts and re-runs
    with the same dataset, tokenizer and sequence length."""

    enabled: bool = True
    """Run the precompute step (keyed by a hash of dataset, tokenizer and sequence length)."""


class TrainingOutput(ApiModel):
    """Where the result goes."""

    registered_model_name: Optional[str] = Field(default=None, min_length=1, max_length=256,
                                                 pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """MLflow registered model name for the final model (the EMA model as <name>-ema); unset: not registered."""


class TrainingJobSpec(BatchSpec):
    """Pretrain or continue training a causal LM; survives hardware failures by resuming mid-epoch."""

    model_config = cel(
        ("has(self.tokenizer) || has(self.model.uri)",
         "set tokenizer.uri: a model built from model.config has no tokenizer of its own"),
        ("!has(self.training.globalBatchSize) || self.training.globalBatchSize % "
         "((has(self.resources) && has(self.resources.workers) ? self.resources.workers : 1) * "
         "(has(self.training.microBatchSize) ? self.training.microBatchSize : 1)) == 0",
         "training.globalBatchSize must be divisible by resources.workers x training.microBatchSize"),
    )

    model: ModelSource
    """The architecture to build, or the model to continue from."""
    tokenizer: Optional[TokenizerSource] = None
    """The tokenizer; defaults to model.uri's."""
    dataset: PretrainDataset
    """Training text."""
    training: PretrainTraining
    """Optimisation settings."""
    parallelism: Parallelism = Field(default_factory=Parallelism, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """DDP or FSDP."""
    ema: Optional[EmaSpec] = None
    """Scheduled EMA of the weights; unset: none."""
    precompute: Optional[PrecomputeSpec] = None
    """Tokenize and pack once into shards in the object store."""
    output: TrainingOutput = Field(default_factory=TrainingOutput, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """Registration of the final (and EMA) model."""

    @model_validator(mode="after")
    def _consistent(self) -> "TrainingJobSpec":
        if self.tokenizer is None and self.model.uri is None:
            raise ValueError("set tokenizer.uri: a model built from model.config has no tokenizer of its own")
        if self.training.global_batch_size % (self.resources.workers * self.training.micro_batch_size):
            raise ValueError("training.globalBatchSize must be divisible by resources.workers x "
                             "training.microBatchSize")
        return self
