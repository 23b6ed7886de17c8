"""task: diffusion: a latent diffusion U-Net (diffusers' UNet2DConditionModel) trained on image-caption pairs in
phases of increasing resolution, on the same loop as causal LMs (train.py's TrainingLoop: checkpoints, every rank's
RNG, scheduled EMA, goodput, heartbeat).

What is trained and checkpointed: the U-Net only. The VAE and the CLIP text encoder are frozen (eval mode, no
gradients) and never checkpointed; with precomputed latents they run once per phase resolution (latents.py) and
not while training. The noise of each micro-batch comes from its own generator seeded by (training.seed, step,
micro-batch slot), so a resumed run draws the same noise whatever RNG state it restored, and sampling images at a
checkpoint cannot shift it.

Training adds noise with DDPM's forward process built from the chosen scheduler's config (its betas,
num_train_timesteps and prediction_type), as diffusers' training scripts do; model.noiseScheduler.type is the
sampler of the checkpoint grids and of the exported pipeline.

A checkpoint's sample grid is drawn in the step loop, and its time is a checkpoint stall, not productive: drawn in
the background, it slowed the steps beside it by about its own cost (measured on CPU: the same wall time, with the
grid's compute counted as step time). So grids are drawn at every samples.everyCheckpoints-th checkpoint (and the
last step): checkpoints can be frequent while grids stay few. The sampling U-Net is built once per attempt without
a random init (its weights are loaded before every row).

The image dataset is only listed at start-up (its fingerprint keys the latent cache); it is downloaded only when
latents are to be computed or encoding happens at every batch, never by an attempt that finds them all cached.
"""

from __future__ import annotations

import bisect
import contextlib
import shutil
from pathlib import Path
from typing import Optional

from kubeforge.api.trainingjob import NoiseScheduler, NoiseSchedulerType
from kubeforge_workloads.common.errors import DataError, UserError
from kubeforge_workloads.pretrain.sampler import GlobalSampler
from kubeforge_workloads.pretrain.train import TrainingLoop

SCHEDULER_CLASSES = {NoiseSchedulerType.DDPM: "DDPMScheduler", NoiseSchedulerType.DDIM: "DDIMScheduler",
                     NoiseSchedulerType.EULER_DISCRETE: "EulerDiscreteScheduler",
                     NoiseSchedulerType.PNDM: "PNDMScheduler"}
UNET_BLOCK_LISTS = ("down_blocks", "up_blocks")
EMA_UNET_FOLDER = "unet_ema"
"""The EMA U-Net's folder inside the exported pipeline (not in model_index.json: the pipeline loads the trained
U-Net; `UNet2DConditionModel.from_pretrained(dir, subfolder="unet_ema")` swaps in the average)."""


def noise_seed(seed: int, step: int, slot: int) -> int:
    """The seed of one micro-batch's noise and timesteps: slot a x workers + rank of global step `step`."""
    import numpy as np

    return int(np.random.SeedSequence([seed, step, slot]).generate_state(2, np.uint32).view(np.uint64)[0])


def phase_starts(phases) -> list[int]:
    """The global step (0-based) each phase begins at."""
    starts, total = [], 0
    for phase in phases:
        starts.append(total)
        total += phase.steps
    return starts


def sampling_scheduler(source: Optional[NoiseScheduler]):
    """The diffusers scheduler model.noiseScheduler names, with its config passed through."""
    import diffusers

    source = source or NoiseScheduler()
    cls = getattr(diffusers, SCHEDULER_CLASSES[source.type])
    try:
        return cls(**source.config)
    except (TypeError, ValueError, NotImplementedError) as error:
        raise UserError(f"spec.model.noiseScheduler.config is not valid for {cls.__name__}: {error}") from error


def vae_downsampling(vae_config: dict) -> int:
    return 2 ** (len(vae_config.get("block_out_channels", (64,))) - 1)


def component_mismatches(spec) -> list[str]:
    """What does not fit between model.unet, model.vae and model.textEncoder, from the configs given (a
    component given by uri is checked once loaded)."""
    model = spec.model
    unet = model.unet.config if model.unet and model.unet.config is not None else None
    vae = model.vae.config if model.vae and model.vae.config is not None else None
    text = model.text_encoder.config if model.text_encoder and model.text_encoder.config is not None else None
    return fit_problems(spec, unet, vae, text)


def fit_problems(spec, unet: Optional[dict], vae: Optional[dict], text: Optional[dict]) -> list[str]:
    problems = []
    if unet is not None and vae is not None:
        latent_channels = vae.get("latent_channels", 4)
        if unet.get("in_channels", 4) != latent_channels or unet.get("out_channels", 4) != latent_channels:
            problems.append(f"spec.model.unet in_channels/out_channels ({unet.get('in_channels', 4)}/"
                            f"{unet.get('out_channels', 4)}) must equal spec.model.vae latent_channels "
                            f"({latent_channels})")
        halvings = 2 ** (len(unet.get("down_block_types", (None,) * 4)) - 1)
        factor = vae_downsampling(vae)
        for index, phase in enumerate(spec.phases or []):
            if phase.resolution % (factor * halvings):
                problems.append(f"spec.phases[{index}].resolution {phase.resolution} gives {phase.resolution // factor}"
                                f"-pixel latents that spec.model.unet's down blocks cannot halve "
                                f"{halvings.bit_length() - 1} times: use a multiple of {factor * halvings}")
    if unet is not None and text is not None:
        cross, hidden = unet.get("cross_attention_dim", 1280), text.get("hidden_size", 512)
        if cross != hidden:
            problems.append(f"spec.model.unet cross_attention_dim ({cross}) must equal spec.model.textEncoder "
                            f"hidden_size ({hidden})")
    return problems


def _low_precision(norm_class):
    """A subclass of LayerNorm / GroupNorm that, under autocast, normalises in the autocast dtype instead of
    float32 (the seed's speed-up #3, as MosaicML's diffusion repo does); outside autocast it is the original."""
    import torch
    import torch.nn.functional as F

    class LowPrecision(norm_class):
        def forward(self, x):
            if not torch.is_autocast_enabled(x.device.type):
                return super().forward(x)
            dtype = torch.get_autocast_dtype(x.device.type)
            weight = self.weight.to(dtype) if self.weight is not None else None
            bias = self.bias.to(dtype) if self.bias is not None else None
            with torch.autocast(x.device.type, enabled=False):
                if isinstance(self, torch.nn.GroupNorm):
                    return F.group_norm(x.to(dtype), self.num_groups, weight, bias, self.eps)
                return F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps)

    LowPrecision.__name__ = f"LowPrecision{norm_class.__name__}"
    return LowPrecision


def use_low_precision_norms(model) -> int:
    """Switch every LayerNorm and GroupNorm of `model` to its low-precision subclass in place (same parameters,
    same state-dict names); returns how many."""
    import torch

    classes = {torch.nn.LayerNorm: _low_precision(torch.nn.LayerNorm),
               torch.nn.GroupNorm: _low_precision(torch.nn.GroupNorm)}
    switched = 0
    for module in model.modules():
        if type(module) in classes:
            module.__class__ = classes[type(module)]
            switched += 1
    return switched


class DiffusionPretraining(TrainingLoop):
    """task: diffusion on TrainingLoop's steps, checkpoints, EMA and goodput."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sampling_unet = None

    # data and frozen components
    def load_data(self) -> None:
        from kubeforge_workloads.pretrain.images import ImageDataset

        self.tokenizer = self.load_tokenizer()
        self.text_encoder = self.frozen(self.load_text_encoder())
        self.vae = self.frozen(self.load_vae())
        self.scheduler_for_sampling = sampling_scheduler(self.spec.model.noise_scheduler)
        from diffusers import DDPMScheduler

        self.noise = DDPMScheduler.from_config(self.scheduler_for_sampling.config)
        self.dataset = ImageDataset(self.spec, self.storage.store, self.cache)  # listed; read only if needed
        self.starts = phase_starts(self.spec.phases)
        self.inputs: dict[int, object] = {}
        self.samplers: dict[int, GlobalSampler] = {}

    def component_dir(self, uri: str, name: str, field: str) -> Path:
        from kubeforge_workloads.common.models import load_model_dir
        from kubeforge_workloads.common.storage import download_uri

        if uri.startswith("s3://"):  # a tokenizer directory holds no config.json, which load_model_dir asks for
            return download_uri(self.storage.store, uri, self.cache / name)
        return load_model_dir(uri, self.cache / name, self.storage.store, field=field)

    def load_tokenizer(self):
        from transformers import CLIPTokenizer

        uri = self.spec.model.tokenizer.uri
        try:
            return CLIPTokenizer.from_pretrained(self.component_dir(uri, "tokenizer", "spec.model.tokenizer.uri"))
        except (OSError, ValueError, TypeError) as error:
            raise UserError(f"spec.model.tokenizer.uri {uri} holds no CLIP tokenizer: {error}") from error

    def seeded(self):
        """Components built from a config get the same weights on every rank and attempt, without touching the
        training RNG (which run() seeds afterwards anyway)."""
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.random.fork_rng(devices=[]))
        torch.manual_seed(self.spec.training.seed)
        return stack

    def load_text_encoder(self):
        from transformers import CLIPTextConfig, CLIPTextModel

        source = self.spec.model.text_encoder
        if source.uri:
            return CLIPTextModel.from_pretrained(self.component_dir(source.uri, "text_encoder",
                                                                    "spec.model.textEncoder.uri"))
        try:
            config = CLIPTextConfig(**source.config)
        except (TypeError, ValueError) as error:
            raise UserError(f"spec.model.textEncoder.config is not a valid CLIPTextConfig: {error}") from error
        with self.seeded():
            return CLIPTextModel(config)

    def load_vae(self):
        from diffusers import AutoencoderKL

        source = self.spec.model.vae
        if source.uri:
            return AutoencoderKL.from_pretrained(self.component_dir(source.uri, "vae", "spec.model.vae.uri"))
        with self.seeded():
            try:
                return AutoencoderKL(**source.config)
            except (TypeError, ValueError) as error:
                raise UserError(f"spec.model.vae.config is not valid for AutoencoderKL: {error}") from error

    def frozen(self, module):
        module.requires_grad_(False)
        return module.eval().to(self.device)

    def plan_steps(self) -> int:
        return self.spec.total_steps

    # the U-Net
    def build_model(self):
        from diffusers import UNet2DConditionModel

        source = self.spec.model.unet
        if source.uri:
            unet = UNet2DConditionModel.from_pretrained(self.component_dir(source.uri, "unet", "spec.model.unet.uri"))
        else:
            try:
                unet = UNet2DConditionModel(**source.config)
            except (TypeError, ValueError) as error:
                raise UserError(f"spec.model.unet.config is not valid for UNet2DConditionModel: {error}") from error
        problems = fit_problems(self.spec, dict(unet.config), dict(self.vae.config), self.text_encoder.config.to_dict())
        if problems:
            raise UserError("; ".join(problems))
        self.unet_config = dict(unet.config)
        self.unet_parameters = sum(p.numel() for p in unet.parameters())
        if self.spec.low_precision_norms and self.use_gpu:
            use_low_precision_norms(unet)
        return unet

    def sharded_blocks(self, model) -> list:
        blocks = [block for name in UNET_BLOCK_LISTS for block in getattr(model, name)]
        return blocks + ([model.mid_block] if model.mid_block is not None else [])

    def checkpoint_activations(self, model) -> None:
        model.enable_gradient_checkpointing()

    # phases
    def phase_of(self, step: int) -> int:
        """The phase global step `step` (0-based) belongs to."""
        return bisect.bisect_right(self.starts, step) - 1

    def prepare(self, start: int) -> None:
        """The inputs of the phases still to train (latents computed by rank 0 or found in the cache)."""
        from kubeforge_workloads.pretrain.latents import phase_inputs

        training = self.spec.training
        seed = self.spec.dataset.shuffle_seed if self.spec.dataset.shuffle_seed is not None else training.seed
        first = self.phase_of(min(start, self.total_steps - 1))
        for index in range(first, len(self.spec.phases)):
            resolution = self.spec.phases[index].resolution
            inputs = phase_inputs(self.spec, resolution, self.dataset, self.vae, self.text_encoder, self.tokenizer,
                                  self.storage, self.cache, is_writer=self.rank == 0, wait=self.barrier)
            try:
                self.samplers[index] = GlobalSampler(inputs.count, training.global_batch_size, seed)
            except ValueError as error:
                raise DataError(f"{self.spec.dataset.uri}: {inputs.count} usable image-caption pairs, fewer than "
                                f"one global batch (spec.training.globalBatchSize {training.global_batch_size})"
                                ) from error
            self.inputs[index] = inputs
        self.pairs = self.inputs[first].summary  # count, skipped, first captions: the images may be unread
        self.beat(message=self.data_summary())

    def latents_report(self) -> list[dict]:
        return [{"resolution": self.spec.phases[index].resolution, "uri": inputs.uri, "reused": inputs.reused}
                for index, inputs in sorted(self.inputs.items())]

    def data_summary(self) -> str:
        """For the heartbeat's message: what was skipped, and which latents were reused or computed."""
        latents = ", ".join(f"{entry['resolution']}px {'reused' if entry['reused'] else 'computed'}"
                            for entry in self.latents_report() if entry["uri"])
        parts = [f"{self.pairs.count} image-caption pairs"]
        if self.pairs.skipped:
            parts.append(f"skipped {self.pairs.skipped_count} ({', '.join(sorted(self.pairs.skipped))})")
        if latents:
            parts.append(f"latents {latents}")
        return "; ".join(parts)

    # steps
    def micro_batches(self, step: int) -> list:
        phase = self.phase_of(step)
        micro = self.spec.phases[phase].micro_batch_size or self.spec.training.micro_batch_size
        inputs = self.inputs[phase]
        return [inputs.batch(ids) for ids in
                self.samplers[phase].micro_batches(step - self.starts[phase], self.rank, self.world, micro)]

    def micro_batch_loss(self, batch, step: int, index: int):
        import torch
        import torch.nn.functional as F

        latents = batch["latents"]
        generator = torch.Generator().manual_seed(noise_seed(self.spec.training.seed, step,
                                                             index * self.world + self.rank))
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
        timesteps = torch.randint(0, self.noise.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator)
        noisy = self.noise.add_noise(latents, noise, timesteps)
        prediction_type = self.noise.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = self.noise.get_velocity(latents, noise, timesteps)
        else:
            raise UserError(f"spec.model.noiseScheduler.config prediction_type {prediction_type!r} cannot be "
                            "trained: use epsilon or v_prediction")
        prediction = self.model(noisy.to(self.device), timesteps.to(self.device),
                                encoder_hidden_states=batch["encoder_hidden_states"].to(self.device)).sample
        return F.mse_loss(prediction.float(), target.to(self.device).float())

    def step_items(self, step: int) -> int:
        return self.spec.training.global_batch_size  # images

    def epoch_at(self, done: int) -> float:
        """Epochs of the phase step `done` was trained in."""
        phase = self.phase_of(max(done - 1, 0))
        sampler = self.samplers.get(phase)
        return (done - self.starts[phase]) / sampler.steps_per_epoch if sampler else 0.0

    def tracking_params(self) -> dict:
        t, spec = self.spec.training, self.spec
        return {"task": "diffusion", "unet": spec.model.unet.uri or "config",
                "unet_parameters": self.unet_parameters,
                "phases": ", ".join(f"{p.resolution}px x {p.steps}" for p in spec.phases),
                "noise_scheduler": (spec.model.noise_scheduler or NoiseScheduler()).type.value,
                "prediction_type": self.noise.config.prediction_type,
                "strategy": spec.parallelism.strategy.value,
                "sharding": spec.parallelism.fsdp_sharding_strategy.value, "workers": self.world,
                "global_batch_size": t.global_batch_size, "micro_batch_size": t.micro_batch_size,
                "learning_rate": t.learning_rate, "scheduler": t.scheduler.value, "warmup_steps": t.warmup_steps,
                "total_steps": self.total_steps, "seed": t.seed, "precision": t.precision.value,
                "precomputed_latents": bool(spec.precompute and spec.precompute.enabled and spec.precompute.latents),
                "low_precision_norms": spec.low_precision_norms,
                "ema_decay": spec.ema.decay if spec.ema else None, "pairs": self.pairs.count,
                "skipped_pairs": self.pairs.skipped_count}

    # samples
    def unet_from(self, state: dict):
        """The one sampling U-Net (built on first use), in eval mode on the device, holding `state`'s weights."""
        import torch
        from diffusers import UNet2DConditionModel

        if self.sampling_unet is None:
            # on the meta device: no random init (0.6 s for the bench's sd2/8 U-Net) of weights load_state_dict
            # overwrites; a U-Net with buffers (which a state dict may not hold) is built for real
            with torch.device("meta"):
                unet = UNet2DConditionModel.from_config(self.unet_config)
            if any(True for _ in unet.buffers()):
                unet = UNet2DConditionModel.from_config(self.unet_config).to(self.device)
            else:
                unet = unet.to_empty(device=self.device)
            self.sampling_unet = unet.eval()
        self.sampling_unet.load_state_dict(state)  # strict: every parameter is overwritten
        return self.sampling_unet

    def pipeline(self, unet):
        from diffusers import StableDiffusionPipeline

        scheduler = type(self.scheduler_for_sampling).from_config(self.scheduler_for_sampling.config)
        pipeline = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                           unet=unet, scheduler=scheduler, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def prompts(self) -> list[str]:
        samples = self.spec.samples
        if samples.count == 0:
            return []
        return list(samples.prompts) or self.pairs.first_captions[:samples.count]

    def draws_grid(self, step: int) -> bool:
        """Whether checkpoint `step` gets a sample grid: every samples.everyCheckpoints-th checkpoint, and the last
        step (a function of the step: a resumed run draws the grids an uninterrupted one does)."""
        every = self.spec.training.checkpoint_every_steps * self.spec.samples.every_checkpoints
        return step % every == 0 or step == self.total_steps

    def after_checkpoint(self, step: int) -> None:
        """Collective (the weights are gathered from every rank); rank 0 draws the grid: one row per prompt set,
        the U-Net's and, once it runs, the EMA's."""
        prompts = self.prompts()
        if not prompts or not self.draws_grid(step):
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        states = {"unet": get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True,
                                                                                    cpu_offload=True))}
        if self.ema and self.ema.active:
            states["ema"] = self.full_state(self.ema.state_dict())
        if self.rank != 0:
            return
        self.log_grid(states, prompts, self.spec.phases[self.phase_of(step - 1)].resolution, step)

    def log_grid(self, states: dict, prompts: list[str], resolution: int, step: int) -> None:
        from mlflow.tracking import MlflowClient

        grid = self.sample_grid(states, prompts, resolution)
        MlflowClient().log_image(self.run_id, grid, f"samples/step-{step:08d}.png")

    def sample_grid(self, states: dict, prompts: list[str], resolution: int):
        """Touches no global RNG (its noise comes from samples.seed's generator): a run with samples trains and
        checkpoints the same RNG state as one without."""
        import torch
        from diffusers.utils import make_image_grid

        samples = self.spec.samples
        images = []
        for state in states.values():
            pipeline = self.pipeline(self.unet_from(state))
            with torch.no_grad():
                images += pipeline(prompts, height=resolution, width=resolution,
                                   num_inference_steps=samples.inference_steps,
                                   guidance_scale=samples.guidance_scale,
                                   generator=torch.Generator().manual_seed(samples.seed)).images
        return make_image_grid(images, rows=len(states), cols=len(prompts))

    # output
    def export(self, model_state: dict, ema_state: Optional[dict]) -> dict:
        from kubeforge_workloads.pretrain.publish import publish

        def write_pipeline(directory: Path) -> None:
            shutil.rmtree(directory, ignore_errors=True)  # a retried publish writes the same files afresh
            self.pipeline(self.unet_from(model_state)).save_pretrained(directory)
            if ema_state is not None:
                self.unet_from(ema_state).save_pretrained(directory / EMA_UNET_FOLDER)

        result = publish(self, {"model": write_pipeline}, ema_artifact=f"model/{EMA_UNET_FOLDER}")
        return {**result, "skipped": self.pairs.skipped, "latents": self.latents_report()}
