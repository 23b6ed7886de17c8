"""TrainingJob: pretrain (or continue training) a causal LM, or train a latent diffusion model (task: diffusion,
the seed's Stable Diffusion 2 recipe), with Ray Train (DDP/FSDP, scheduled EMA), resumable mid-epoch and bit-exact
after failures."""

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


class Task(str, Enum):
    CAUSAL_LM = "causal-lm"
    DIFFUSION = "diffusion"


class DatasetFormat(str, Enum):
    JSONL_TEXT = "jsonl-text"
    TOKENIZED_SHARDS = "tokenized-shards"
    WEBDATASET = "webdataset"
    PARQUET = "parquet"


TEXT_FORMATS = (DatasetFormat.JSONL_TEXT, DatasetFormat.TOKENIZED_SHARDS)
IMAGE_FORMATS = (DatasetFormat.WEBDATASET, DatasetFormat.PARQUET)
PRESERVE_UNKNOWN = {"x-kubernetes-preserve-unknown-fields": True}


class TokenizerSource(ApiModel):
    """The tokenizer the text is encoded with."""

    uri: str = Field(pattern=MODEL_URI_PATTERN, max_length=1024)
    """Directory holding the tokenizer files: s3://, models:/<name>/<version> or hf://."""


class ComponentSource(ApiModel):
    """One part of a diffusion model: a config built from scratch with the seed, or a trained one to load."""

    model_config = cel(("has(self.config) != has(self.uri)", "set exactly one of config or uri"))

    config: Optional[dict[str, Any]] = Field(default=None, json_schema_extra=PRESERVE_UNKNOWN)
    """Constructor arguments of the diffusers / transformers class (e.g. UNet2DConditionModel's block_out_channels)."""
    uri: Optional[str] = Field(default=None, pattern=MODEL_URI_PATTERN, max_length=1024)
    """A saved component directory: s3://bucket/dir, models:/<name>/<version> or hf://org/name."""

    @model_validator(mode="after")
    def _one_source(self) -> "ComponentSource":
        if (self.config is None) == (self.uri is None):
            raise ValueError("set exactly one of config or uri")
        return self


class NoiseSchedulerType(str, Enum):
    DDPM = "ddpm"
    DDIM = "ddim"
    EULER_DISCRETE = "euler-discrete"
    PNDM = "pndm"


class NoiseScheduler(ApiModel):
    """The diffusers noise scheduler of training (noise added per timestep) and sampling."""

    type: NoiseSchedulerType = NoiseSchedulerType.DDPM
    """ddpm (the seed's), ddim, euler-discrete or pndm."""
    config: dict[str, Any] = Field(default_factory=dict, json_schema_extra={**PRESERVE_UNKNOWN,
                                                                             **DEFAULT_EMPTY_OBJECT})
    """Scheduler constructor arguments, e.g. num_train_timesteps, beta_schedule, prediction_type."""


class ModelSource(ApiModel):
    """The model to train. causal-lm: a transformers config built from scratch, or an existing model to continue
    training. diffusion: a U-Net (trained), a VAE and a CLIP text encoder with its tokenizer (frozen), and a
    noise scheduler."""

    config: Optional[dict[str, Any]] = Field(default=None, json_schema_extra=PRESERVE_UNKNOWN)
    """causal-lm: transformers config fields (with model_type, e.g. llama) of a model built from scratch."""
    uri: Optional[str] = Field(default=None, pattern=MODEL_URI_PATTERN, max_length=1024)
    """causal-lm: continue training this model: s3://bucket/dir, models:/<name>/<version> or hf://org/name."""
    unet: Optional[ComponentSource] = None
    """diffusion: the UNet2DConditionModel that is trained (config, or uri to continue training)."""
    vae: Optional[ComponentSource] = None
    """diffusion: the AutoencoderKL that maps images to latents (frozen, not checkpointed)."""
    text_encoder: Optional[ComponentSource] = None
    """diffusion: the CLIPTextModel that encodes captions (frozen, not checkpointed); config is a CLIPTextConfig."""
    tokenizer: Optional[TokenizerSource] = None
    """diffusion: the text encoder's tokenizer."""
    noise_scheduler: Optional[NoiseScheduler] = None
    """diffusion: the noise scheduler; defaults to ddpm with diffusers' defaults."""


class PretrainDataset(ApiModel):
    """Training data in the object store: text (causal-lm) or image-caption pairs (diffusion)."""

    uri: str = Field(pattern=DATA_URI_PATTERN, max_length=1024)
    """jsonl-text: an s3:// JSONL file (or prefix of them); tokenized-shards: an s3:// prefix holding MANIFEST.json
    (format kubeforge.tokenized-shards/1: count, sequenceLength, dtype int32|int64, shards [{file, count}] in sample
    order) and safetensors shards of input_ids [count, sequenceLength], as a precompute run writes under
    s3://<bucket>/_precompute/<key>/ (status.output.tokenizedShards.uri), its sequenceLength equal to
    training.sequenceLength; webdataset: a prefix of .tar shards; parquet: a Parquet file or prefix of them."""
    format: DatasetFormat = DatasetFormat.JSONL_TEXT
    """causal-lm: jsonl-text (tokenized and packed at start-up) or tokenized-shards (already packed). diffusion:
    webdataset (tar shards whose members <key>.png|jpg|jpeg|webp and <key>.txt form a sample) or parquet (an image
    bytes column and a caption column)."""
    text_field: str = Field(default="text", min_length=1, max_length=128)
    """Row field holding the text (jsonl-text)."""
    image_field: str = Field(default="image", min_length=1, max_length=128)
    """parquet: the column of encoded image bytes (or {bytes} structs, as Hugging Face datasets write them)."""
    caption_field: str = Field(default="caption", min_length=1, max_length=128)
    """parquet: the caption column; webdataset: captions are the .txt members."""
    shuffle_seed: Optional[int] = Field(default=None, ge=0)
    """Seed of the global sample order (a function of this seed and the epoch only); defaults to training.seed."""


class PretrainTraining(ApiModel):
    """Optimisation settings."""

    max_steps: Optional[int] = Field(default=None, ge=1)
    """Optimizer steps to train for (causal-lm; diffusion counts the phases' steps)."""
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


class PrecomputeDtype(str, Enum):
    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"


class PrecomputeSpec(ApiModel):
    """Compute the model's inputs once into shards in the object store, reused by later attempts and re-runs with
    the same inputs. causal-lm: tokenize and pack (keyed by dataset, tokenizer and sequence length). diffusion:
    encode every image with the VAE and every caption with the text encoder, once per phase resolution (keyed by
    dataset, encoders, resolution and dtype), so that only the U-Net runs while training."""

    enabled: bool = True
    """Run the precompute step. causal-lm: rank 0 tokenizes and packs the dataset once into
    s3://<bucket>/_precompute/<key>/ (key: the dataset's listing and textField, the tokenizer, sequenceLength); later
    attempts and runs with the same inputs read it without tokenizing. No effect with format tokenized-shards."""
    latents: bool = True
    """diffusion: train from precomputed latents and caption embeddings (false: encode at every step)."""
    dtype: PrecomputeDtype = PrecomputeDtype.FP16
    """diffusion: precision the latents and embeddings are stored in (the seed: fp16)."""


class Phase(ApiModel):
    """A diffusion training phase: the seed trained 550k steps at 256 px, then 850k at 512 px."""

    resolution: int = Field(ge=8, le=4096, multiple_of=8)
    """Image side in pixels (images are resized on the short side and centre-cropped)."""
    steps: int = Field(ge=1)
    """Optimizer steps of this phase."""
    micro_batch_size: Optional[int] = Field(default=None, ge=1, le=4096)
    """Per-worker micro-batch of this phase; defaults to training.microBatchSize."""


class SampleSpec(ApiModel):
    """Images generated at checkpoints (with the U-Net and, once started, its EMA) and logged to MLflow as a grid,
    so progress shows as pictures."""

    prompts: list[str] = Field(default_factory=list, max_length=16)
    """Captions to sample; empty: the first `count` captions of the dataset."""
    count: int = Field(default=4, ge=0, le=16)
    """Captions taken from the dataset when prompts is empty; 0 turns sampling off."""
    inference_steps: int = Field(default=20, ge=1, le=1000)
    """Denoising steps per image."""
    guidance_scale: float = Field(default=1.0, ge=1, le=50)
    """Classifier-free guidance scale (1: no guidance)."""
    seed: int = Field(default=0, ge=0)
    """Seed of the initial noise: the same images at every checkpoint differ only by the weights."""
    every_checkpoints: int = Field(default=1, ge=1, le=1000)
    """Draw a grid at every this many checkpoints (those of steps that are multiples of
    training.checkpointEverySteps x everyCheckpoints) and at the last step: checkpoints can be frequent, to lose little
    work to a failure, while grids (whose sampling stalls training) stay as frequent as a person looks at them."""


class TrainingOutput(ApiModel):
    """Where the result goes."""

    registered_model_name: Optional[str] = Field(default=None, min_length=1, max_length=256,
                                                 pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """MLflow registered model name for the final model (the EMA model as <name>-ema); unset: not registered."""


_DIFFUSION = "(has(self.task) && self.task == 'diffusion')"
_WORKERS = "(has(self.resources) && has(self.resources.workers) ? self.resources.workers : 1)"
_GLOBAL_BATCH = "(has(self.training.globalBatchSize) ? self.training.globalBatchSize : 8)"


class TrainingJobSpec(BatchSpec):
    """Pretrain or continue training a causal LM, or train a latent diffusion model; survives hardware failures
    by resuming mid-epoch."""

    model_config = cel(
        (f"{_DIFFUSION} || has(self.model.config) != has(self.model.uri)",
         "set exactly one of model.config or model.uri"),
        (f"{_DIFFUSION} || has(self.tokenizer) || has(self.model.uri)",
         "set tokenizer.uri: a model built from model.config has no tokenizer of its own"),
        (f"{_DIFFUSION} || !has(self.model.unet) && !has(self.model.vae) && !has(self.model.textEncoder) && "
         "!has(self.model.noiseScheduler) && !has(self.phases)",
         "model.unet, model.vae, model.textEncoder, model.noiseScheduler and phases are for task: diffusion"),
        (f"{_DIFFUSION} || has(self.training.maxSteps) != has(self.training.epochs)",
         "set exactly one of training.maxSteps or training.epochs"),
        (f"!{_DIFFUSION} || has(self.model.unet) && has(self.model.vae) && has(self.model.textEncoder) && "
         "has(self.model.tokenizer) && !has(self.model.config) && !has(self.model.uri)",
         "task: diffusion needs model.unet, model.vae, model.textEncoder and model.tokenizer (model.config and "
         "model.uri are for causal-lm)"),
        (f"!{_DIFFUSION} || has(self.phases) && size(self.phases) > 0",
         "task: diffusion needs phases, e.g. [{resolution: 256, steps: 1000}]"),
        (f"!{_DIFFUSION} || !has(self.training.maxSteps) && !has(self.training.epochs)",
         "task: diffusion counts its steps in phases[].steps: remove training.maxSteps and training.epochs"),
        (f"{_DIFFUSION} == (has(self.dataset.format) && "
         "(self.dataset.format == 'webdataset' || self.dataset.format == 'parquet'))",
         "dataset.format: task diffusion reads webdataset or parquet image-caption pairs, causal-lm reads jsonl-text "
         "or tokenized-shards"),
        ("!has(self.lowPrecisionNorms) || !self.lowPrecisionNorms || (has(self.resources) && "
         "has(self.resources.gpusPerWorker) && self.resources.gpusPerWorker > 0)",
         "lowPrecisionNorms runs LayerNorm and GroupNorm in the autocast precision, which only GPUs do: set "
         "resources.gpusPerWorker >= 1 or remove lowPrecisionNorms"),
        (f"{_GLOBAL_BATCH} % ({_WORKERS} * "
         "(has(self.training.microBatchSize) ? self.training.microBatchSize : 1)) == 0",
         "training.globalBatchSize must be divisible by resources.workers x training.microBatchSize"),
        (f"!has(self.phases) || self.phases.all(p, !has(p.microBatchSize) || "
         f"{_GLOBAL_BATCH} % ({_WORKERS} * p.microBatchSize) == 0)",
         "training.globalBatchSize must be divisible by resources.workers x phases[].microBatchSize"),
    )

    task: Task = Task.CAUSAL_LM
    """causal-lm (a transformers causal LM on text) or diffusion (a latent diffusion U-Net on image-caption
    pairs)."""
    model: ModelSource
    """The architecture to build, or the model to continue from."""
    tokenizer: Optional[TokenizerSource] = None
    """The tokenizer; defaults to model.uri's."""
    dataset: PretrainDataset
    """Training data."""
    training: PretrainTraining
    """Optimisation settings."""
    parallelism: Parallelism = Field(default_factory=Parallelism, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """DDP or FSDP."""
    ema: Optional[EmaSpec] = None
    """Scheduled EMA of the weights; unset: none."""
    precompute: Optional[PrecomputeSpec] = None
    """Compute the model's inputs once into shards in the object store (tokens, or latents and embeddings)."""
    phases: Optional[list[Phase]] = Field(default=None, max_length=16)
    """diffusion: training phases run in order (e.g. 256 px, then 512 px); a resume lands in the right phase."""
    low_precision_norms: bool = False
    """diffusion on GPUs: run LayerNorm and GroupNorm in the autocast precision (the seed's speed-up #3)."""
    samples: SampleSpec = Field(default_factory=SampleSpec, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """diffusion: images sampled at every checkpoint and logged to MLflow."""
    output: TrainingOutput = Field(default_factory=TrainingOutput, json_schema_extra=DEFAULT_EMPTY_OBJECT)
    """Registration of the final (and EMA) model; diffusion registers the Diffusers pipeline."""

    @property
    def diffusion(self) -> bool:
        return self.task == Task.DIFFUSION

    @property
    def total_steps(self) -> Optional[int]:
        """diffusion: the phases' steps together; causal-lm: training.maxSteps (None when counted in epochs)."""
        return sum(phase.steps for phase in self.phases or []) if self.diffusion else self.training.max_steps

    @model_validator(mode="after")
    def _consistent(self) -> "TrainingJobSpec":
        # The CRD's CEL rules say the same at admission; these hold for specs that never went through it.
        model, training, workers = self.model, self.training, self.resources.workers
        if self.diffusion:
            if not (model.unet and model.vae and model.text_encoder and model.tokenizer) or model.config or model.uri:
                raise ValueError("task: diffusion needs model.unet, model.vae, model.textEncoder and model.tokenizer "
                                 "(model.config and model.uri are for causal-lm)")
            if not self.phases:
                raise ValueError("task: diffusion needs phases, e.g. [{resolution: 256, steps: 1000}]")
            if training.max_steps is not None or training.epochs is not None:
                raise ValueError("task: diffusion counts its steps in phases[].steps: remove training.maxSteps "
                                 "and training.epochs")
        else:
            if (model.config is None) == (model.uri is None):
                raise ValueError("set exactly one of model.config or model.uri")
            if self.tokenizer is None and model.uri is None:
                raise ValueError("set tokenizer.uri: a model built from model.config has no tokenizer of its own")
            if model.unet or model.vae or model.text_encoder or model.noise_scheduler or self.phases:
                raise ValueError("model.unet, model.vae, model.textEncoder, model.noiseScheduler and phases are "
                                 "for task: diffusion")
            if (training.max_steps is None) == (training.epochs is None):
                raise ValueError("set exactly one of training.maxSteps or training.epochs")
        if self.diffusion != (self.dataset.format in IMAGE_FORMATS):
            raise ValueError("dataset.format: task diffusion reads webdataset or parquet image-caption pairs, "
                             "causal-lm reads jsonl-text or tokenized-shards")
        if self.low_precision_norms and self.resources.gpus_per_worker < 1:
            raise ValueError("lowPrecisionNorms runs LayerNorm and GroupNorm in the autocast precision, which only "
                             "GPUs do: set resources.gpusPerWorker >= 1 or remove lowPrecisionNorms")
        if training.global_batch_size % (workers * training.micro_batch_size):
            raise ValueError("training.globalBatchSize must be divisible by resources.workers x "
                             "training.microBatchSize")
        if any(training.global_batch_size % (workers * phase.micro_batch_size)
               for phase in self.phases or [] if phase.micro_batch_size):
            raise ValueError("training.globalBatchSize must be divisible by resources.workers x "
                             "phases[].microBatchSize")
        return self
