"""FineTune: supervised fine-tuning (LoRA / QLoRA / full) of a causal LM on instruction data."""

from __future__ import annotations

from enum import Enum
from typing import Optional

from pydantic import Field

from kubeforge.api.meta import DEFAULT_EMPTY_OBJECT, ApiModel
from kubeforge.api.shared import BatchSpec, cel

MODEL_URI_PATTERN = r"^(s3://[^/]+/.+|models:/[^/]+/[^/]+|hf://[^/]+/[^/]+)$"
"""s3://bucket/dir, models:/<name>/<version> (MLflow's registry URI, what FineTune publishes as modelUri) or
hf://org/name."""
DATA_URI_PATTERN = r"^s3://[^/]+/.+$"


class Method(str, Enum):
    LORA = "lora"
    QLORA = "qlora"
    FULL = "full"


class DatasetFormat(str, Enum):
    INSTRUCTION = "instruction"
    CHAT = "chat"
    TEXT = "text"


class Precision(str, Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class LrScheduler(str, Enum):
    LINEAR = "linear"
    COSINE = "cosine"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"


class BaseModelRef(ApiModel):
    """The model to fine-tune."""

    uri: str = Field(pattern=MODEL_URI_PATTERN, max_length=1024)
    """s3://bucket/dir (Hugging Face format directory), models:/<name>/<version> (MLflow registry), or hf://org/name where a hub is reachable."""


class LoraConfig(ApiModel):
    """peft LoRA settings (also used by qlora)."""

    r: int = Field(default=8, ge=1, le=1024)
    """Rank of the low-rank update matrices; higher adapts more but trains and stores more parameters."""
    alpha: int = Field(default=16, ge=1, le=4096)
    """Scaling numerator (lora_alpha): the update is scaled by alpha / r."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout probability (0 to 1) on the LoRA input during training."""
    target_modules: list[str] = Field(default_factory=lambda: ["all-linear"], min_length=1, max_length=64)
    """Module names to adapt (e.g. q_proj, v_proj). Default ["all-linear"] adapts every linear layer except the
    output head."""


class DatasetSpec(ApiModel):
    """Training data: JSON Lines in the object store."""

    train_uri: str = Field(pattern=DATA_URI_PATTERN, max_length=1024)
    """s3:// URI of the training JSONL file."""
    eval_uri: Optional[str] = Field(default=None, pattern=DATA_URI_PATTERN, max_length=1024)
    """s3:// URI of the evaluation JSONL file."""
    format: DatasetFormat = DatasetFormat.INSTRUCTION
    """instruction: rows with inputField/outputField; chat: rows with messages[]; text: rows with a text field."""
    prompt_template: Optional[str] = Field(default=None, max_length=8192)
    """Python format string applied to each row, e.g. "### Question\\n{instruction}\\n### Answer\\n"; fields must exist in every row."""
    input_field: str = Field(default="instruction", min_length=1, max_length=128)
    """Row field holding the prompt (instruction format)."""
    output_field: str = Field(default="response", min_length=1, max_length=128)
    """Row field holding the expected answer (instruction format)."""


class TrainingConfig(ApiModel):
    """Optimisation settings, passed to transformers TrainingArguments."""

    epochs: float = Field(default=1, gt=0, le=1000)
    """Passes over the training data; may be fractional (0.5 trains on half). Ignored when maxSteps is set."""
    max_steps: Optional[int] = Field(default=None, ge=1)
    """Stop after this many optimizer steps (overrides epochs). Unset: the steps that epochs give."""
    batch_size: int = Field(default=8, ge=1, le=4096)
    """Rows per worker per forward pass (micro-batch); the effective batch is batchSize x
    gradientAccumulationSteps x workers."""
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    """Micro-batches whose gradients are summed before one optimizer step."""
    learning_rate: float = Field(default=2e-4, gt=0, le=1)
    """Peak learning rate of the AdamW optimizer."""
    lr_scheduler: LrScheduler = LrScheduler.COSINE
    """How the learning rate changes after warmup: linear, cosine, constant or constant_with_warmup."""
    warmup_ratio: float = Field(default=0.0, ge=0, le=1)
    """Fraction (0 to 1) of the total steps over which the learning rate rises linearly from 0 to learningRate."""
    max_seq_length: int = Field(default=512, ge=8, le=131072)
    """Longest training example in tokens; longer rows are truncated."""
    seed: int = Field(default=42, ge=0)
    """Random seed for weight initialisation, data shuffling and dropout; the same seed repeats a run."""
    precision: Precision = Precision.FP32
    """Numeric precision of training: fp32, or bf16 / fp16 mixed precision (needs hardware that supports it)."""
    checkpoint_every_steps: int = Field(default=50, ge=1)
    """Commit a checkpoint to the object store every this many optimizer steps; a retry resumes from the latest."""
    eval_every_steps: Optional[int] = Field(default=None, ge=1)
    """Evaluate on evalUri every this many optimizer steps (and always at the start and end). Unset: only at the
    start and end."""


class OutputSpec(ApiModel):
    """Where the result goes."""

    registered_model_name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """MLflow registered model name the adapter (or full model) is registered under; each successful run adds a
    version."""
    merge: bool = False
    """Also register the base model with the adapter merged in (merge_and_unload), ready for serving."""


class FineTuneSpec(BatchSpec):
    """Fine-tune a causal language model on instruction data and register it in MLflow."""

    model_config = cel(
        ("self.method != 'qlora' || (has(self.resources) && has(self.resources.gpusPerWorker) && self.resources.gpusPerWorker >= 1)",
         "method qlora needs GPUs: set resources.gpusPerWorker >= 1 or use method lora"),
        ("self.method != 'full' || !has(self.output) || !self.output.merge",
         "output.merge only applies to lora and qlora: a full fine-tune is already a merged model"),
    )

    base_model: BaseModelRef
    """The model to fine-tune."""
    method: Method = Method.LORA
    """lora (low-rank adapter), qlora (adapter over a 4-bit base, GPUs only) or full (every weight)."""
    lora: LoraConfig = Field(default_factory=LoraConfig, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """Adapter settings for method lora and qlora; ignored by full."""
    dataset: DatasetSpec
    """Training and evaluation data."""
    training: TrainingConfig = Field(default_factory=TrainingConfig, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """Optimisation settings."""
    output: OutputSpec
    """Where the trained model is registered."""
