"""The per-worker training loop of a TrainingJob: a plain torch loop (no Trainer) over the global sampler, DDP or
FSDP2, a scheduled EMA, and checkpoints through the Checkpointer with torch distributed checkpoint (every rank
writes its own shard files and RNG state; rank 0 writes the manifest last, in the background).

What a checkpoint restores: model, optimizer (DCP, sharded under FSDP), EMA once started (DCP), every rank's RNG
state; the learning-rate schedule and the sampler position are functions of the step alone.

`TrainingLoop` is that loop, the same for every task; what a task trains (its data, model, the loss of one
micro-batch, its tracking parameters and its export) are the methods a task overrides: `Pretraining` for causal
LMs here, `DiffusionPretraining` (diffusion.py) for latent diffusion U-Nets.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

from kubeforge.api.finetune import Precision
from kubeforge.api.trainingjob import FsdpShardingStrategy, Strategy, TrainingJobSpec
from kubeforge.api.workload import WorkloadContext
from kubeforge_workloads.common import chaos
from kubeforge_workloads.common.checkpoint import (CONTRIBUTIONS_TIMEOUT_SECONDS, AsyncShardedSaver, Checkpointer,
                                                   load_sharded, transfer_concurrency_per_rank)
from kubeforge_workloads.common.errors import UserError
from kubeforge_workloads.common.heartbeat import Heartbeat
from kubeforge_workloads.common.models import load_model_dir
from kubeforge_workloads.common.nodecheck import node_check
from kubeforge_workloads.common.raytrain import worker_attempt
from kubeforge_workloads.common.storage import WorkloadStorage
from kubeforge_workloads.pretrain.ema import ScheduledEMA, ema_start_step
from kubeforge_workloads.pretrain.goodput import GOODPUT_STATE_FILE, GoodputMeter
from kubeforge_workloads.pretrain.sampler import GlobalSampler

STEP_DELAY_ENV = "KUBEFORGE_STEP_DELAY_SECONDS"  # slows steps down for chaos tests and demos


def train_loop(config: dict) -> None:
    """Runs in every Ray Train worker; again in a new worker group when Ray Train restarts one in the attempt."""
    with worker_attempt(config) as (context, rank, storage, heartbeat):
        spec = TrainingJobSpec.model_validate(context.spec)
        if spec.diffusion:
            from kubeforge_workloads.pretrain.diffusion import DiffusionPretraining as task
        else:
            task = Pretraining
        task(context, spec, storage, rank, heartbeat).run()


def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def decoder_layers(model) -> list:
    """The repeated blocks FSDP shards one by one (and activation checkpointing recomputes)."""
    return [module for module in model.modules() if type(module).__name__.endswith("DecoderLayer")]


class TrainingLoop:
    clock = staticmethod(time.time)
    """Step times and goodput's wall time (a test replaces it with a deterministic clock)."""

    def __init__(self, context: WorkloadContext, spec: TrainingJobSpec, storage: WorkloadStorage, rank: int,
                 heartbeat: Optional[Heartbeat]):
        import torch.distributed as dist

        self.context, self.spec, self.storage, self.rank, self.heartbeat = context, spec, storage, rank, heartbeat
        self.distributed = dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size() if self.distributed else 1
        self.use_gpu = spec.resources.gpus_per_worker > 0
        self.cache = Path(tempfile.mkdtemp(prefix=f"kubeforge-{context.name}-{context.attempt}-{rank}-"))
        self.checkpointer = Checkpointer(storage, rank=rank, keep_latest=spec.training.keep_checkpoints,
                                         transfer_concurrency=transfer_concurrency_per_rank(
                                             int(os.environ.get("LOCAL_WORLD_SIZE") or 1)))  # set by Ray Train
        self.metrics = None
        self.run_id: Optional[str] = None
        self.resumed_from: Optional[str] = None
        self.goodput = GoodputMeter(storage, now=self.clock) if rank == 0 else None
        self.checkpoint_stalls: dict[int, float] = {}  # step -> seconds the step loop waited for its checkpoint
        self.logged_commits: list = []
        # Checkpoints are written in the background; their collectives (DCP's plans, the file names' gather) run on
        # a gloo group of their own, created here by every rank, never on the training's default group.
        self.checkpoint_group = dist.new_group(backend="gloo") if self.distributed else None
        self.sharded_saver = AsyncShardedSaver(self.checkpoint_group)

    def beat(self, **fields) -> None:
        if self.heartbeat:
            self.heartbeat.update(**fields)

    def barrier(self) -> None:
        """Every rank waits here (a no-op on one worker), e.g. while rank 0 writes a precompute cache."""
        if self.distributed and self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    # set-up
    def run(self) -> None:
        import torch

        spec, training = self.spec, self.spec.training
        self.startup: dict[str, float] = {}  # what this worker group spent before its first step, for the log
        self.startup_at = time.monotonic()
        node_check(expect_gpu=self.use_gpu)
        self.beat(phase="Loading")
        self.device = torch.device("cpu")
        if self.use_gpu:
            from ray.train.torch import get_device

            self.device = get_device()
        self.startup_phase("node check")
        self.load_data()
        self.total_steps = self.plan_steps()
        self.startup_phase("data")
        torch.manual_seed(training.seed)
        random.seed(training.seed)
        self.model = self.wrap(self.build_model())
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=training.learning_rate,
                                           weight_decay=training.weight_decay)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(training.scheduler.value, self.optimizer,
                                       num_warmup_steps=training.warmup_steps, num_training_steps=self.total_steps)
        self.ema = ScheduledEMA(spec.ema.decay, ema_start_step(self.total_steps, spec.ema.start_fraction)) \
            if spec.ema else None
        self.startup_phase("model")
        start = self.restore()
        self.startup_phase("restore")
        self.prepare(start)
        if self.rank == 0:
            self.start_tracking()
        self.startup_phase("prepare and tracking")
        self.train(start)
        self.finish()

    # what a task defines
    def load_data(self) -> None:
        """Read the training data (every rank, before the model is built)."""
        raise NotImplementedError

    def plan_steps(self) -> int:
        """Optimizer steps of the whole run."""
        raise NotImplementedError

    def build_model(self):
        """The trained module, unwrapped, on the CPU (built after seeding, so its initial weights follow the seed)."""
        raise NotImplementedError

    def sharded_blocks(self, model) -> list:
        """The repeated blocks FSDP shards one by one."""
        raise NotImplementedError

    def checkpoint_activations(self, model) -> None:
        raise NotImplementedError

    def prepare(self, start: int) -> None:
        """After the restore, before the first step from `start`: the work that needs to know where training
        resumes (not counted as productive step time)."""

    def micro_batches(self, step: int) -> list:
        """This rank's micro-batches of global step `step` (0-based), ready for micro_batch_loss."""
        raise NotImplementedError

    def micro_batch_loss(self, batch, step: int, index: int):
        """The mean loss of micro-batch `index` of this rank at `step` (inside autocast)."""
        raise NotImplementedError

    def step_items(self, step: int) -> int:
        """What one global step processes (tokens, images), for the throughput in the heartbeat."""
        raise NotImplementedError

    def epoch_at(self, done: int) -> float:
        raise NotImplementedError

    def tracking_params(self) -> dict:
        raise NotImplementedError

    def after_checkpoint(self, step: int) -> None:
        """Collective, on every rank after checkpoint `step` was handed to the background commit."""

    def export(self, model_state: dict, ema_state: Optional[dict]) -> dict:
        """On rank 0 after training: publish the model; returns what goes into result.json."""
        raise NotImplementedError

    def wrap(self, model):
        """DDP, or FSDP2 per block (SHARD_GRAD_OP keeps parameters gathered between forward and
        backward); NO_SHARD and a single worker need no sharding."""
        parallelism = self.spec.parallelism
        if parallelism.activation_checkpointing:
            self.checkpoint_activations(model)
        model.to(self.device)
        sharded = (parallelism.strategy == Strategy.FSDP
                   and parallelism.fsdp_sharding_strategy != FsdpShardingStrategy.NO_SHARD)
        if sharded:
            from torch.distributed.fsdp import fully_shard

            reshard = parallelism.fsdp_sharding_strategy == FsdpShardingStrategy.FULL_SHARD
            for layer in self.sharded_blocks(model):
                fully_shard(layer, reshard_after_forward=reshard)
            return fully_shard(model, reshard_after_forward=reshard)
        if self.distributed and self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            return DistributedDataParallel(model, device_ids=[self.device.index] if self.use_gpu else None)
        return model

    # checkpoints
    def state(self, with_ema: dict) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        if with_ema:
            state["ema"] = with_ema
        return state

    def restore(self) -> int:
        """Load the latest committed checkpoint, if any; returns the step to continue from."""
        import torch
        from torch.distributed.checkpoint.state_dict import set_state_dict

        latest = self.checkpointer.latest()
        if latest is None:
            return 0
        local = self.cache / f"restore-{latest}"
        files = self.checkpointer.files(latest, local)  # this rank downloads only what it reads
        uri = self.checkpointer.uri(latest)
        ema = self.ema.prepare_to_restore(self.model.named_parameters(), latest) if self.ema else {}
        state = self.state(ema)
        load_sharded(state, local, files.fetch)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])
        rng_file = f"rng_state_{self.rank}.pt"
        if rng_file in files.sizes:
            files.fetch([rng_file])
            set_rng_state(torch.load(local / rng_file, weights_only=False))
        else:  # more workers than the checkpoint had: this rank keeps its seeded RNG
            print(f"kubeforge: {uri} has no RNG state for rank {self.rank}; it keeps its seeded RNG", flush=True)
        if self.goodput is not None:
            productive = 0.0
            if GOODPUT_STATE_FILE in files.sizes:
                files.fetch([GOODPUT_STATE_FILE])
                productive = json.loads((local / GOODPUT_STATE_FILE).read_text())["productiveSeconds"]
            self.goodput.resumed(latest, productive)
        with warnings.catch_warnings():  # the schedule is a function of the step: replay it
            warnings.simplefilter("ignore")
            for _ in range(latest):
                self.scheduler.step()
        shutil.rmtree(local, ignore_errors=True)
        print(f"kubeforge: resuming from {uri}", flush=True)
        self.resumed_from = uri
        self.beat(resumed_from=uri, last_checkpoint=uri, step=latest)
        return latest

    def save(self, step: int) -> None:
        """Collective: every rank copies its state (model, optimizer, EMA: DCP staging) and its RNG state, then
        goes back to training; in the background each rank's DCP write ends, the ranks exchange their file names
        (on the checkpoint group), ranks > 0 upload theirs, and rank 0 uploads its own and writes the manifest last,
        once every rank's files are up. The previous checkpoint's background work ends first (one at a time, its
        error is raised here). What the step loop waits for here is recorded as the checkpoint's stall
        (checkpoint_stalls)."""
        import torch

        started = time.monotonic()
        phases: dict[str, float] = {}  # where the stall went, for the log line below

        def phase_ended(name: str) -> None:
            phases[name] = time.monotonic() - started - sum(phases.values())

        self.beat(phase="Checkpointing")
        self.checkpointer.wait()  # the previous checkpoint's write and commit ended (or its error is raised here)
        phase_ended("previous checkpoint")
        if self.rank == 0:
            self.log_commits()
            if self.metrics:
                self.metrics.flush()  # every metric up to a committed step is durable
        phase_ended("flush")
        local = self.cache / f"save-{step}"
        written = self.sharded_saver.start(self.state(self.ema.state_dict() if self.ema else {}), local)
        phase_ended("stage")
        extra = [f"rng_state_{self.rank}.pt"]
        torch.save(rng_state(), local / extra[0])
        if self.goodput is not None:
            (local / GOODPUT_STATE_FILE).write_text(json.dumps(self.goodput.state()))
            extra.append(GOODPUT_STATE_FILE)
        phase_ended("rng and goodput state")
        self.checkpointer.in_background(lambda: self.commit_checkpoint(step, local, written, extra))
        if self.rank == 0:
            stall = time.monotonic() - started
            self.checkpoint_stalls[step] = stall
            print(f"kubeforge: checkpoint step-{step} stalled training {stall:.3f}s ("
                  + ", ".join(f"{name} {seconds:.3f}s" for name, seconds in phases.items()) + ")", flush=True)
            if self.metrics:
                self.metrics.add({"checkpoint_stall_seconds": stall}, step)
        self.after_checkpoint(step)
        self.beat(phase="Training")

    def commit_checkpoint(self, step: int, local: Path, written, extra: list[str]) -> None:
        """On every rank's background thread: the rest of save(step) once the step loop went on."""
        import torch.distributed as dist

        files = written.result() + extra  # DCP's write ended (the staging buffers are free again)
        if self.rank == 0:
            # Leftovers of an interrupted earlier writer go before any rank uploads: ranks > 0 upload only after
            # the exchange below, which rank 0 joins after this.
            self.checkpointer.clear(step)
        files_by_rank = {self.rank: files}
        if self.distributed and self.world > 1:
            gathered: list = [None] * self.world
            dist.all_gather_object(gathered, files, group=self.checkpoint_group)
            files_by_rank = dict(enumerate(gathered))
        if self.rank == 0:
            uri = self.checkpointer.save(step, files_by_rank, local, self.epoch_at(step),
                                         contributions_timeout=CONTRIBUTIONS_TIMEOUT_SECONDS)
            self.beat(last_checkpoint=uri)
        else:
            self.checkpointer.contribute(step, local, files)
        shutil.rmtree(local, ignore_errors=True)

    def log_commits(self) -> None:
        """On rank 0: the commits that ended since the last call go to MLflow (their seconds are known only once
        they end, in the background)."""
        for commit in self.checkpointer.commits[len(self.logged_commits):]:
            self.logged_commits.append(commit)
            if self.metrics:
                self.metrics.add({"checkpoint_commit_seconds": commit.seconds,
                                  "checkpoint_commit_mb_per_s": commit.bytes / 1e6 / max(commit.seconds, 1e-9)},
                                 commit.step)

    def checkpoint_report(self) -> list[dict]:
        """Per checkpoint committed by this attempt: the step loop's stall, the commit's seconds and bytes, and
        their ratio (the stall is what a background commit could not hide)."""
        report = []
        for commit in self.checkpointer.commits:
            stall = self.checkpoint_stalls.get(commit.step)
            report.append({"step": commit.step, "stallSeconds": None if stall is None else round(stall, 4),
                           "commitSeconds": round(commit.seconds, 4), "bytes": commit.bytes,
                           "stallOverCommit": None if stall is None else round(stall / max(commit.seconds, 1e-9), 4)})
        return report

    # training
    def start_tracking(self) -> None:
        from kubeforge_workloads.common.tracking import MetricsBuffer, start_run

        params = self.tracking_params()
        remembered = (self.storage.get_json("mlflow_run.json") or {}).get("runId")
        self.run_id = start_run(self.context, params, remembered)
        self.storage.put_json({"runId": self.run_id}, "mlflow_run.json")
        self.metrics = MetricsBuffer(self.run_id)

    def autocast(self):
        import contextlib

        import torch

        precision = self.spec.training.precision
        if precision == Precision.FP32:
            return contextlib.nullcontext()
        if precision == Precision.FP16 and not self.use_gpu:
            raise UserError("spec.training.precision fp16 needs GPUs; use bf16 or fp32 on CPU")
        dtype = torch.bfloat16 if precision == Precision.BF16 else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def train(self, start: int) -> None:
        import torch
        import torch.distributed as dist

        training = self.spec.training
        delay = float(os.environ.get(STEP_DELAY_ENV) or 0)
        self.model.train()
        self.beat(phase="Training", total_steps=self.total_steps)
        self.last_loss = None
        for step in range(start, self.total_steps):
            chaos.stall_point()
            started = self.clock()
            local_loss = torch.zeros((), dtype=torch.float64)
            batches = self.micro_batches(step)
            for index, batch in enumerate(batches):
                with self.autocast():
                    loss = self.micro_batch_loss(batch, step, index) / len(batches)
                loss.backward()
                local_loss += float(loss.detach())
            if training.gradient_clipping:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), training.gradient_clipping)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            done = step + 1
            if self.ema:
                self.ema.update(self.model.named_parameters(), done)
            if self.distributed and self.world > 1:
                dist.all_reduce(local_loss)
            self.last_loss = float(local_loss) / self.world
            if delay:
                time.sleep(delay)
            if self.rank == 0:
                self.step_finished(done, self.clock() - started, self.step_items(step))
            if done % training.checkpoint_every_steps == 0 or done == self.total_steps:
                self.save(done)

    def startup_phase(self, name: str) -> None:
        now = time.monotonic()
        self.startup[name], self.startup_at = now - self.startup_at, now

    def step_finished(self, done: int, seconds: float, tokens: int) -> None:
        """On rank 0 after each optimizer step (its checkpoint not yet saved): metrics, goodput, heartbeat."""
        if "first step" not in self.startup:
            self.startup_phase("first step")
            print(f"kubeforge: first step {done} finished at {time.time():.3f}; this worker group's start-up: "
                  + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in self.startup.items()), flush=True)
        self.metrics.add({"loss": self.last_loss, "learning_rate": self.scheduler.get_last_lr()[0]}, done)
        self.goodput.step_finished(done, seconds)
        self.beat(step=done, epoch=round(self.epoch_at(done), 4), loss=self.last_loss,
                  throughput=round(tokens / max(seconds, 1e-6), 1), goodput=self.goodput.report())

    # output
    def full_state(self, tensors: dict) -> dict:
        """Whole CPU tensors of (possibly sharded) parameters, named as in the unwrapped model."""
        from torch.distributed.tensor import DTensor

        out = {}
        for name, tensor in tensors.items():
            whole = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            out[name.removeprefix("module.")] = whole.detach().cpu()
        return out

    def finish(self) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # The last checkpoint is durable (every rank's files up, the manifest written) before anything is exported,
        # and a background write's error fails the run here.
        self.checkpointer.close()
        self.sharded_saver.close()
        model_state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True,
                                                                                cpu_offload=True))
        ema_state = self.full_state(self.ema.state_dict()) if self.ema and self.ema.active else None
        if self.rank != 0:
            return
        self.log_commits()
        self.goodput.close()
        self.beat(phase="Registering")
        self.metrics.flush()
        result = {**self.export(model_state, ema_state), "resumedFrom": self.resumed_from,
                  "goodput": self.goodput.report().model_dump(by_alias=True, exclude_none=True),
                  "checkpoints": self.checkpoint_report()}
        self.storage.put_json(result, "result.json")
        import mlflow

        mlflow.end_run()
        self.beat(phase="Done", step=self.total_steps, goodput=self.goodput.report())
        if self.heartbeat:
            self.heartbeat.beat()


class Pretraining(TrainingLoop):
    """task: causal-lm: a transformers causal LM on packed token sequences."""

    def load_data(self) -> None:
        from kubeforge_workloads.pretrain.precompute import training_sequences

        spec, training = self.spec, self.spec.training
        self.tokenizer = self.load_tokenizer()
        self.data = training_sequences(spec, self.tokenizer, self.cache, self.storage, is_writer=self.rank == 0,
                                       wait=self.barrier)
        self.sequences = self.data.sequences
        if self.data.uri:
            self.beat(message=f"tokenized shards {'reused' if self.data.reused else 'written'}: {self.data.uri}")
        self.sampler = GlobalSampler(len(self.sequences), training.global_batch_size,
                                     spec.dataset.shuffle_seed if spec.dataset.shuffle_seed is not None
                                     else training.seed)

    def plan_steps(self) -> int:
        training = self.spec.training
        return training.max_steps or max(1, int(training.epochs * self.sampler.steps_per_epoch))

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        uri, field = ((self.spec.tokenizer.uri, "spec.tokenizer.uri") if self.spec.tokenizer
                      else (self.spec.model.uri, "spec.model.uri"))
        tokenizer = AutoTokenizer.from_pretrained(load_model_dir(uri, self.cache / "tokenizer", self.storage.store,
                                                                 field=field))
        if tokenizer.eos_token_id is None:
            raise UserError(f"{field} {uri}: the tokenizer has no end-of-sequence token to separate texts with")
        return tokenizer

    def build_model(self):
        from transformers import AutoConfig, AutoModelForCausalLM

        source = self.spec.model
        if source.uri:
            model_dir = load_model_dir(source.uri, self.cache / "model", self.storage.store, field="spec.model.uri")
            model = AutoModelForCausalLM.from_pretrained(model_dir)
        else:
            fields = dict(source.config or {})
            model_type = fields.pop("model_type", None)
            if not model_type:
                raise UserError("spec.model.config needs model_type (e.g. llama) to build a model from scratch")
            fields.setdefault("vocab_size", len(self.tokenizer))
            try:
                config = AutoConfig.for_model(model_type, **fields)
            except (ValueError, TypeError) as error:
                raise UserError(f"spec.model.config is not a valid transformers config: {error}") from error
            model = AutoModelForCausalLM.from_config(config)
        self.hf_config = model.config
        return model

    def sharded_blocks(self, model) -> list:
        return decoder_layers(model)

    def checkpoint_activations(self, model) -> None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def micro_batches(self, step: int) -> list:
        micro = self.spec.training.micro_batch_size
        return [self.sequences[ids] for ids in self.sampler.micro_batches(step, self.rank, self.world, micro)]

    def micro_batch_loss(self, batch, step: int, index: int):
        batch = batch.to(self.device)
        return self.model(input_ids=batch, labels=batch).loss

    def step_items(self, step: int) -> int:
        return self.spec.training.global_batch_size * self.spec.training.sequence_length

    def epoch_at(self, done: int) -> float:
        return done / self.sampler.steps_per_epoch

    def tracking_params(self) -> dict:
        t = self.spec.training
        return {"model": self.spec.model.uri or (self.spec.model.config or {}).get("model_type"),
                "strategy": self.spec.parallelism.strategy.value,
                "sharding": self.spec.parallelism.fsdp_sharding_strategy.value, "workers": self.world,
                "global_batch_size": t.global_batch_size, "micro_batch_size": t.micro_batch_size,
                "sequence_length": t.sequence_length, "learning_rate": t.learning_rate,
                "scheduler": t.scheduler.value, "warmup_steps": t.warmup_steps, "total_steps": self.total_steps,
                "seed": t.seed, "precision": t.precision.value,
                "ema_decay": self.spec.ema.decay if self.spec.ema else None, "sequences": len(self.sequences)}

    def export(self, model_state: dict, ema_state: Optional[dict]) -> dict:
        from kubeforge_workloads.pretrain.publish import publish, save_hf

        exports = {"model": lambda directory: save_hf(self, model_state, directory)}
        if ema_state is not None:
            exports["ema-model"] = lambda directory: save_hf(self, ema_state, directory)
        result = publish(self, exports, ema_artifact="ema-model")
        return {**result, "tokenizedShards": self.data.report()} if self.data.uri else result
