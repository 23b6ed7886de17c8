"""task: diffusion, the seed's Stable Diffusion 2 recipe on CPU: what precomputed latents, scheduled EMA and
in-job recovery are worth, measured on the real workload loop (DiffusionPretraining on train.py's TrainingLoop,
in this process, without Ray: moto S3 in its own process, MLflow on sqlite), in one run.

1. images/s of U-Net training with precomputed latents (PrecomputedInputs: the VAE and text encoder ran once, in
   prepare(), before the steps) against encoding with the VAE and the text encoder at every step (OnTheFlyInputs,
   inside the step: micro_batches() encodes). Both run TrainingLoop.train unchanged: the same micro_batch_loss,
   AdamW step and LR schedule, same batch, resolution, seed and sample order; a step's time is the loop's own
   (goodput's productive seconds: batch fetch + forward + backward + optimizer + EMA), on the wall clock and as
   this process's CPU seconds (one torch thread: CPU time is what other processes on a shared machine do not
   inflate; the wall row shows the same runs as they ran). The first --warmup steps of each run are dropped; the
   median step of each run, then the median over --repeats runs, the modes alternating in changing order so
   drift hits both. Measured on two model sizes:
   - "sd2/8": the seed's SD2 shapes with every width divided by 8 (VAE encoder [16,32,64,64] x 2 layers, U-Net
     [40,80,160,160] x 2 layers with SD2's head counts, a 23-layer CLIP text model of width 128) at 128 px, so the
     VAE encode weighs against a U-Net step about as SD2's does at 256 px (both scale with width^2 and pixels);
   - "seed-tiny": the sandbox's TINY_UNET_CONFIG / TINY_VAE_CONFIG / tiny CLIP at 32 px (encoding is nearly free
     there: the ratio says little, it is printed because the tests train on it).
2. EMA: ScheduledEMA.update timed on the sd2/8 U-Net (median of many calls) against its precomputed step, and
   in the loop (precomputed with ema.startFraction 0, i.e. EMA every step, against no EMA); then the run-level
   cost of EMA every step against the seed's schedule (startFraction 0.965: only the last 3.5 % of the steps).
3. Goodput with two failures: the sd2/8 recipe in two phases (the first half of --goodput-steps at half the
   resolution, as the seed's 256 then 512 px; precomputed latents; EMA over the last two checkpoint intervals; a
   checkpoint every --every steps and a sample grid at every --grid-every-th of them, samples.everyCheckpoints)
   run uninterrupted, and the same run killed twice (an exception raised in the step loop --every/2 steps after a
   checkpoint, the mean loss of a failure at a random time, never right after one: one in the middle of phase 1,
   one after the last checkpoint before the end, inside the EMA window of phase 2; what the dead attempt had in
   flight is let finish) and resumed at once as attempts 2 and 3 by new DiffusionPretraining objects (restore from
   S3, latent cache reused, the image dataset not downloaded). Both runs add --goodput-step-delay seconds to every
   step (KUBEFORGE_STEP_DELAY_SECONDS, counted as step time, as bench/pretrain_goodput.py does): it stands for a
   larger model's compute, so that a kill lands between two checkpoints and the fixed costs weigh against the
   steps as they would with a bigger U-Net, and a sleeping step leaves the shared cores to others. Goodput is the
   workload's own ledger (issue 11's status.goodput: productive step seconds / wall seconds since the first
   attempt started; lost steps, start-up, restore, latent loading, checkpoint stalls, sample grids and the export
   count as wall time only). Printed: both goodputs and their ratio, per failure the ledger's recovery seconds and
   steps lost next to what the bench saw, where the killed run's wall time went (steps lost, start-up, checkpoint
   saves, sample grids, the end), where a resumed attempt's start-up went (restore, loading the frozen components,
   the U-Net, latents, tracking), and, from those measured costs, the run length at which two failures still
   leave goodput >= 0.90 (with the best checkpoint interval for it). Not included: process start (python + torch
   import, measured once and printed, and a goodput with it added per attempt), Ray start-up, pod rescheduling
   and the operator's back-off; those are bench/recovery_time.py's.

   Measured 2026-12-04 (`.venv/bin/python bench/diffusion_recipe.py --json FILE`, defaults, 2 shared cores, load
   average 4-6 from other sessions' tests): goodput uninterrupted 0.826, two failures 0.666 (ratio 0.807; last
   session's one-phase run with a checkpoint and grid every 10 steps: 0.694 / 0.602). Killed run's wall 98.9 s:
   steps kept 66.0, steps lost 7.6 (2 per failure, ledger = seen), start-up 11.7, checkpoint saves 4.6 (0.30 s
   each, asynchronous DCP), sample grids 6.6 (1.4 s each), end 2.4. A resumed attempt's start-up 5.4 s, of it the
   restore 4.85 s (90 %: the checkpoint's 163 MB download from the moto S3 and DCP's per-tensor loads; train.py
   and common/checkpoint.py), loading the frozen components 0.33, U-Net 0.11, latents 0.07, tracking 0.06. At
   these costs two failures reach 0.90 only at ~1,200 steps (every 17): the restore is what stands between.

   Measured 2026-12-04 at a run length where the checkpoint interval can balance its costs (`--goodput-steps 800
   --every 16 --grid-every 4 --json FILE`, 2 shared cores, bench/pretrain_goodput.py running beside it): goodput
   uninterrupted 0.956, **two failures 0.919** (ratio 0.961), 0.904 with a process start (5.9 s of python and
   torch imports) added per attempt; each failure lost 8 steps (ledger = seen), recovery 5.1 and 8.4 s; killed
   run's wall 781 s: steps lost 16.7, start-up 12.4, checkpoint saves 13.4 (50 of them), sample grids 16.7 (a grid
   every 64 steps), end 3.2; a resumed attempt's start-up 5.9 s, of it the restore 5.4 s. The cost model from
   these costs: two failures reach 0.90 from ~420 steps (every 11). The same bench at 600 steps every 20, run
   while the whole test suite ran (load 4-7): 0.869 two failures, 0.942 uninterrupted (the restore took 11.4 s
   and steps lost cost 2.5 s each under that load). Images/s, precomputed vs on the fly, sd2/8 at 128 px in that
   800-step run: 1.255 (CPU) and 1.270 (wall).

Not covered here (no GPU on this machine): bf16 autocast, low-precision norms, FSDP SHARD_GRAD_OP and a >= 100M
U-Net at 256 px; the issue's cumulative 2.71x table needs a GPU run.

    .venv/bin/python bench/diffusion_recipe.py            # full: about 5 min on 2 shared cores
    .venv/bin/python bench/diffusion_recipe.py --quick    # every row, small sizes, one repeat, goodput on
                                                          # seed-tiny: a smoke run, its numbers mean little
    .venv/bin/python bench/diffusion_recipe.py --goodput-steps 800 --every 16   # goodput >= 0.90: ~30 min
    options: --repeats 3 --steps 6 --warmup 2 --goodput-steps 60 --every 4 --grid-every 4
             --goodput-step-delay 0.5 --threads 1 --json FILE
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "operator", REPO / "workloads", Path(__file__).parent):
    sys.path.insert(0, str(path))

BUCKET = "bench"
BATCH = 4
SEED_EMA_START_FRACTION = 0.965
SEED_STEPS = 1_400_000
SCALE = 8  # SD2's widths divided by this
SD2_SCALED_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 8,
    "block_out_channels": [128 // SCALE, 256 // SCALE, 512 // SCALE, 512 // SCALE],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD2_SCALED_TEXT = {"hidden_size": 1024 // SCALE, "layers": 23}
SD2_SCALED_UNET = {
    "in_channels": 4, "out_channels": 4, "layers_per_block": 2, "norm_num_groups": 8,
    "block_out_channels": [320 // SCALE, 640 // SCALE, 1280 // SCALE, 1280 // SCALE],
    "attention_head_dim": [5, 10, 20, 20],  # SD2's head counts (diffusers' name for them)
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 1024 // SCALE, "use_linear_projection": True,
}


class Killed(BaseException):
    """Stands for the worker dying (a BaseException: nothing in the loop catches it)."""


def workload_classes():
    from kubeforge_workloads.pretrain.diffusion import DiffusionPretraining

    class StepTimed(DiffusionPretraining):
        """The unchanged training loop, without MLflow, checkpoints and export: only the step times are kept."""

        def start_tracking(self) -> None:
            self.step_seconds, self.step_cpu_seconds = [], []
            self.cpu_mark = time.process_time()

        def step_finished(self, done: int, seconds: float, items: int) -> None:
            now = time.process_time()  # this process's CPU: what other processes on the machine do not inflate
            self.step_seconds.append(seconds)
            self.step_cpu_seconds.append(now - self.cpu_mark)
            self.cpu_mark = now

        def save(self, step: int) -> None:
            pass

        def finish(self) -> None:
            self.checkpointer.close()
            self.goodput.close()

    class Killable(DiffusionPretraining):
        """The whole workload; dies `kill_at` steps in when set. Records where its wall time went (start-up up to
        the first step, each checkpoint's stall of the step loop, the end) and each step's seconds."""
        kill_at = 0

        def run(self) -> None:
            self.spent = {"started": time.monotonic(), "checkpoint_stalls": [], "grids": [], "steps": {},
                          "start_up_parts": {}}
            super().run()

        def timed(self, part: str, method, *args):
            started = time.monotonic()
            try:
                return method(*args)
            finally:
                parts = self.spent["start_up_parts"]
                parts[part] = parts.get(part, 0.0) + time.monotonic() - started

        def load_tokenizer(self):
            return self.timed("tokenizer", super().load_tokenizer)

        def load_text_encoder(self):
            return self.timed("text_encoder", super().load_text_encoder)

        def load_vae(self):
            return self.timed("vae", super().load_vae)

        def load_data(self) -> None:
            self.timed("load_data", super().load_data)

        def build_model(self):
            return self.timed("unet", super().build_model)

        def restore(self) -> int:
            return self.timed("restore", super().restore)

        def prepare(self, start: int) -> None:
            self.timed("latents", super().prepare, start)

        def start_tracking(self) -> None:
            self.timed("tracking", super().start_tracking)

        def after_checkpoint(self, step: int) -> None:
            started = time.monotonic()
            super().after_checkpoint(step)
            if self.prompts() and self.draws_grid(step):
                self.spent["grids"].append(time.monotonic() - started)

        def train(self, start: int) -> None:
            self.spent["start_up"] = time.monotonic() - self.spent["started"]
            self.spent["resumed_at"] = start
            super().train(start)

        def save(self, step: int) -> None:
            started = time.monotonic()
            super().save(step)
            self.spent["checkpoint_stalls"].append(time.monotonic() - started)
            self.spent["last_checkpoint"] = step

        def finish(self) -> None:
            started = time.monotonic()
            super().finish()
            self.spent["end"] = time.monotonic() - started

        def step_finished(self, done: int, seconds: float, items: int) -> None:
            super().step_finished(done, seconds, items)
            self.spent["steps"][done] = (seconds, time.monotonic())
            if done == self.kill_at:
                self.spent["killed_at"] = time.monotonic()
                raise Killed()

    return StepTimed, Killable


class Bench:
    def __init__(self, work: Path, args):
        import boto3

        from finetune_overhead import start_s3_server
        from kubeforge_workloads.common.storage import upload_tree
        from kubeforge_workloads.seed.shapes import TEXT_HIDDEN_SIZE, build_tiny_clip, write_shapes

        self.work, self.args = work, args
        self.server, endpoint = start_s3_server(work)
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                           "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
                           "TOKENIZERS_PARALLELISM": "false"})
        for leftover in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
            os.environ.pop(leftover, None)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        from mlflow.tracking import MlflowClient

        # the tracking server's database exists before any job does: its schema creation (about 7 s on sqlite)
        # is not the first goodput run's start-up
        MlflowClient().create_experiment("bench")
        upload_tree(s3, build_tiny_clip(work / "tiny-clip", hidden_size=TEXT_HIDDEN_SIZE), BUCKET, "clip-tiny/")
        upload_tree(s3, build_tiny_clip(work / "sd2-clip", **SD2_SCALED_TEXT), BUCKET, "clip-sd2/")
        upload_tree(s3, write_shapes(work / "shapes", count=32), BUCKET, "shapes/")
        self.StepTimed, self.Killable = workload_classes()

    def close(self) -> None:
        self.server.terminate()
        self.server.wait()

    @staticmethod
    def spec(model: str, resolution: int, steps: int, precompute: bool, ema_start: float | None,
             every: int, samples: int = 0, grid_every: int = 1, first_phase: tuple[int, int] | None = None):
        """One phase of `steps` at `resolution`, or (first_phase = (resolution, steps)) that phase first and the rest
        of the steps at `resolution`."""
        from kubeforge.api.trainingjob import TrainingJobSpec
        from kubeforge_workloads.seed.shapes import TINY_UNET_CONFIG, TINY_VAE_CONFIG

        unet, vae = (SD2_SCALED_UNET, SD2_SCALED_VAE) if model == "sd2/8" else (TINY_UNET_CONFIG, TINY_VAE_CONFIG)
        clip = f"s3://{BUCKET}/clip-{'sd2' if model == 'sd2/8' else 'tiny'}"
        fields = {"task": "diffusion",
                  "model": {"unet": {"config": unet}, "vae": {"config": vae},
                            "textEncoder": {"uri": clip}, "tokenizer": {"uri": clip}},
                  "dataset": {"uri": f"s3://{BUCKET}/shapes/", "format": "webdataset"},
                  "phases": ([{"resolution": first_phase[0], "steps": first_phase[1]}] if first_phase else [])
                  + [{"resolution": resolution, "steps": steps - (first_phase[1] if first_phase else 0)}],
                  "training": {"globalBatchSize": BATCH, "microBatchSize": BATCH, "learningRate": 1e-4,
                               "warmupSteps": 1, "scheduler": "constant_with_warmup",
                               "checkpointEverySteps": every, "keepCheckpoints": 2, "seed": 7},
                  "samples": {"count": samples, "inferenceSteps": 2, "everyCheckpoints": grid_every},
                  "output": {"registeredModelName": f"bench-{model.replace('/', '-')}"}}
        if precompute:
            fields["precompute"] = {"latents": True, "dtype": "fp16"}
        if ema_start is not None:
            fields["ema"] = {"decay": 0.9999, "startFraction": ema_start}
        return TrainingJobSpec.model_validate(fields)

    def job(self, cls, name: str, spec, attempt: int = 1):
        from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext
        from kubeforge_workloads.common.storage import WorkloadStorage

        context = WorkloadContext(kind="TrainingJob", namespace="bench", name=name, uid=f"bench-{name}",
                                  generation=1, attempt=attempt, spec=spec.model_dump(mode="json", by_alias=True),
                                  storage=StorageContext(bucket=BUCKET, prefix=f"bench/TrainingJob/{name}"),
                                  mlflow=MlflowContext(experiment="bench", run_name=name,
                                                       tracking_uri=os.environ["MLFLOW_TRACKING_URI"]))
        return cls(context, spec, WorkloadStorage(context), rank=0, heartbeat=None)

    def step_seconds(self, name: str, spec) -> tuple[float, float]:
        """Median wall and CPU seconds of a step of one run, warm-up steps dropped."""
        job = self.job(self.StepTimed, name, spec)
        try:
            job.run()
        finally:
            shutil.rmtree(job.cache, ignore_errors=True)
        warm = self.args.warmup
        return median(job.step_seconds[warm:]), median(job.step_cpu_seconds[warm:])

    def attempt(self, name: str, spec, attempt: int, kill_at: int = 0):
        import mlflow

        job = self.job(self.Killable, name, spec, attempt)
        job.kill_at = kill_at
        try:
            job.run()
        except Killed:
            # what was already uploading when the worker died is let finish (a kill --every/2 steps after a
            # checkpoint finds its commit done); nothing else of the attempt runs
            job.checkpointer.close()
            if job.goodput._writer is not None:
                job.goodput._writer.shutdown()
        finally:
            job.spent["wall"] = time.monotonic() - job.spent["started"]
            while mlflow.active_run():
                mlflow.end_run()
            shutil.rmtree(job.cache, ignore_errors=True)
        return job

    def result(self, name: str) -> dict:
        from kubeforge.storage.objectstore import S3ObjectStore

        return json.loads(S3ObjectStore().get(BUCKET, f"bench/TrainingJob/{name}/outputs/result.json"))


def throughput(bench: Bench, model: str, resolution: int, with_ema: bool) -> dict:
    """Median step seconds per mode over the repeats, modes alternating within each repeat."""
    args = bench.args
    steps = args.warmup + args.steps
    modes = {"precomputed": (True, None), "on_the_fly": (False, None)}
    if with_ema:
        modes["precomputed_ema_every_step"] = (True, 0.0)
    runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    for repeat in range(args.repeats):
        order = list(modes.items())
        for mode, (precompute, ema_start) in order if repeat % 2 == 0 else reversed(order):  # neither always first
            spec = Bench.spec(model, resolution, steps, precompute, ema_start, every=steps)
            runs[mode].append(bench.step_seconds(f"{model.replace('/', '-')}-{mode}-{repeat}".replace("_", "-"),
                                                 spec))
            print(f"{model} {resolution}px repeat {repeat} {mode}: wall {runs[mode][-1][0]:.3f} s/step, CPU "
                  f"{runs[mode][-1][1]:.3f} s/step", file=sys.stderr)
    out = {}
    for mode, values in runs.items():
        wall, cpu = median(v[0] for v in values), median(v[1] for v in values)
        out[mode] = {"wall_step_s_per_run": [round(v[0], 4) for v in values],
                     "cpu_step_s_per_run": [round(v[1], 4) for v in values],
                     "wall_step_s": round(wall, 4), "cpu_step_s": round(cpu, 4),
                     "images_per_wall_s": round(BATCH / wall, 2), "images_per_cpu_s": round(BATCH / cpu, 2)}
    return out


def ema_update_seconds(model: str, resolution: int, calls: int) -> tuple[float, int]:
    """Median CPU seconds of one ScheduledEMA.update (a blend, after the first copy) on the model's U-Net."""
    from diffusers import UNet2DConditionModel

    from kubeforge_workloads.pretrain.ema import ScheduledEMA

    unet = UNet2DConditionModel(**Bench.spec(model, resolution, 1, True, None, 1).model.unet.config)
    ema = ScheduledEMA(0.9999, start_step=1)
    ema.update(unet.named_parameters(), 1)
    times = []
    for step in range(2, calls + 2):
        started = time.process_time()
        ema.update(unet.named_parameters(), step)
        times.append(time.process_time() - started)
    return median(times), sum(p.numel() for p in unet.parameters())


def import_seconds() -> float:
    """What a restarted worker process spends importing the workload before it can start (not in the goodput)."""
    code = "import torch, diffusers, transformers, kubeforge_workloads.pretrain.diffusion"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "workloads")])}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True)
    return time.perf_counter() - started


def kill_steps(steps: int, first_phase_steps: int, every: int) -> list[int]:
    """Where the two failures strike, each every/2 steps after a checkpoint (the mean loss of a failure at a random
    time, never right after a checkpoint): one in the middle of phase 1, one after the last checkpoint before the
    end (in the EMA window of phase 2, which goodput() starts two intervals before the end)."""
    kills = [max(every, first_phase_steps // 2 // every * every) + every // 2,
             (steps - 1) // every * every + every // 2]
    if every < 2 or not every < kills[0] < first_phase_steps < kills[1] - every // 2 < kills[1] < steps:
        sys.exit(f"--goodput-steps {steps} (phase 1: {first_phase_steps}) is too short for a kill mid-phase-1 and "
                 f"one in phase 2 with checkpoints every {every} (>= 2) steps")
    return kills


def goodput(bench: Bench, model: str, resolution: int) -> dict:
    """The recipe uninterrupted, then killed twice and resumed twice, every step --goodput-step-delay longer: two
    phases (the first half at half the resolution, as the seed's 256 then 512 px), precomputed latents, EMA over the
    last two checkpoint intervals, a checkpoint every --every steps and a sample grid every --grid-every of them."""
    from kubeforge_workloads.pretrain.train import STEP_DELAY_ENV

    args = bench.args
    steps, every = args.goodput_steps, args.every
    first_phase = (resolution // 2, steps // 2)
    ema_fraction = 1 - 2 * every / steps
    spec = Bench.spec(model, resolution, steps, True, ema_fraction, every, samples=2, grid_every=args.grid_every,
                      first_phase=first_phase)
    ema_start = math.ceil(steps * ema_fraction)
    kills = kill_steps(steps, first_phase[1], every)
    if kills[1] < ema_start:
        sys.exit(f"the second kill (step {kills[1]}) is not in the EMA window (from step {ema_start})")
    os.environ[STEP_DELAY_ENV] = str(args.goodput_step_delay)
    try:
        straight_job = bench.attempt("uninterrupted", spec, 1)
        jobs = []
        for attempt, kill_at in enumerate([*kills, 0], start=1):
            jobs.append(bench.attempt("killed", spec, attempt, kill_at=kill_at))
            print(f"goodput attempt {attempt} (kill at step {kill_at or '-'}): {jobs[-1].spent['wall']:.1f} s",
                  file=sys.stderr)
    finally:
        os.environ.pop(STEP_DELAY_ENV, None)
    killed = bench.result("killed")
    if killed.get("resumedFrom") is None or len(killed["goodput"]["recoveries"]) != 2:
        sys.exit(f"the killed run did not resume twice: {killed.get('goodput')}")
    straight = bench.result("uninterrupted")["goodput"]
    failures = []
    for dead, resumed, recovery in zip(jobs, jobs[1:], killed["goodput"]["recoveries"]):
        first_step_after = min(resumed.spent["steps"].items())[1][1]
        failures.append({"killed_at_step": dead.kill_at, "resumed_at_step": resumed.spent["resumed_at"],
                         "steps_lost_ledger": recovery["stepsLost"],
                         "steps_lost_seen": dead.kill_at - resumed.spent["resumed_at"],
                         "recovery_s_ledger": recovery["recoverySeconds"],
                         "recovery_s_seen": round(first_step_after - dead.spent["killed_at"], 2),
                         "restart_s": round(resumed.spent["start_up"], 2)})
    return {"model": model, "resolution": resolution, "first_phase": list(first_phase), "steps": steps,
            "checkpoint_every": every, "grid_every_checkpoints": args.grid_every, "ema_start_fraction": ema_fraction,
            "step_delay_s": args.goodput_step_delay, "ema_start_step": ema_start, "kills_at_steps": kills,
            "uninterrupted": straight, "killed_twice": killed["goodput"],
            "ratio_killed_over_uninterrupted": round(killed["goodput"]["ratio"] / straight["ratio"], 4),
            "failures": failures, "attempt_walls_s": [round(job.spent["wall"], 1) for job in jobs],
            "uninterrupted_wall_s": round(straight_job.spent["wall"], 1),
            "where_the_wall_went": {"uninterrupted": wall_spent([straight_job]), "killed_twice": wall_spent(jobs)},
            "costs": costs(straight_job, jobs, every, args.grid_every),
            "start_up_parts_s": {"first": parts(straight_job), "resumed": [parts(job) for job in jobs[1:]]},
            "grid_s": round(median(straight_job.spent["grids"]), 2) if straight_job.spent["grids"] else 0.0}


def parts(job) -> dict:
    """Where an attempt's start-up went (seconds): loading the frozen components and the dataset (load_data, of
    it the tokenizer, text encoder and VAE), building the U-Net, the restore, the latents and tracking."""
    spent = job.spent["start_up_parts"]
    out = {name: round(seconds, 2) for name, seconds in spent.items()}
    out["other"] = round(job.spent["start_up"] - sum(spent.values()) + sum(
        spent.get(name, 0.0) for name in ("tokenizer", "text_encoder", "vae")), 2)
    return out


def wall_spent(jobs: list) -> dict:
    """Seconds of the attempts' wall time: steps kept (productive), steps lost to a kill, start-up (to the first
    step: loading, restore, latents, tracking), checkpoint stalls of the step loop (the save's own, and the sample
    grids drawn at some of them), the end (waiting for the last commit, export, registration), and the rest."""
    kept = lost = start_up = stalls = grids = end = wall = 0.0
    for job in jobs:
        spent = job.spent
        dead_after = spent.get("last_checkpoint", spent["resumed_at"]) if "killed_at" in spent else None
        for step, (seconds, _) in spent["steps"].items():
            if dead_after is not None and step > dead_after:
                lost += seconds
            else:
                kept += seconds
        start_up += spent["start_up"]
        grids += sum(spent["grids"])
        stalls += sum(spent["checkpoint_stalls"]) - sum(spent["grids"])
        end += spent.get("end", 0.0)
        wall += spent["wall"]
    out = {"wall": wall, "steps_kept": kept, "steps_lost": lost, "start_up": start_up, "checkpoint_saves": stalls,
           "sample_grids": grids, "end": end}
    out["other"] = wall - kept - lost - start_up - stalls - grids - end
    return {name: round(value, 2) for name, value in out.items()}


def costs(straight_job, jobs: list, every: int, grid_every: int) -> dict:
    """The measured costs a longer run pays the same way: mean productive step, start-up of a first and of a
    resumed attempt, a checkpoint's own stall, a sample grid (drawn every grid_every checkpoints), the end."""
    spent = straight_job.spent
    resumed = [job.spent["start_up"] for job in jobs[1:]]
    steps = [seconds for seconds, _ in spent["steps"].values()]
    saves = spent["checkpoint_stalls"]
    return {"step_s": round(sum(steps) / len(steps), 3),
            "first_start_up_s": round(spent["start_up"], 2),
            "resumed_start_up_s": round(sum(resumed) / len(resumed), 2),
            "checkpoint_stall_s": round((sum(saves) - sum(spent["grids"])) / len(saves), 3),
            "grid_s": round(sum(spent["grids"]) / max(1, len(spent["grids"])), 2),
            "grid_interval_steps": every * grid_every, "end_s": round(spent["end"], 2)}


def predicted_goodput(costs: dict, productive_s: float, interval_s: float, failures: int = 2) -> float:
    """Goodput of a run of `productive_s` step seconds with a checkpoint every `interval_s` of them and a grid
    every grid_interval_steps, paying the measured costs, each failure losing half an interval and a resumed
    start-up."""
    checkpoints = math.floor(productive_s / interval_s)
    grids = math.floor(productive_s / (costs["grid_interval_steps"] * costs["step_s"]))
    wall = (productive_s + costs["first_start_up_s"] + costs["end_s"] + checkpoints * costs["checkpoint_stall_s"]
            + grids * costs["grid_s"] + failures * (interval_s / 2 + costs["resumed_start_up_s"]))
    return productive_s / wall


def run_length_for(costs: dict, goal: float = 0.90) -> dict:
    """The shortest run (productive seconds) whose best checkpoint interval (sqrt(run x stall), the balance of
    stalls against the half interval each failure loses) leaves two failures goodput >= goal."""
    productive = 10.0
    while productive < 1e7:
        interval = max(math.sqrt(productive * costs["checkpoint_stall_s"]), costs["step_s"])
        if predicted_goodput(costs, productive, interval) >= goal:
            return {"productive_s": round(productive), "checkpoint_interval_s": round(interval, 1),
                    "steps": math.ceil(productive / costs["step_s"]),
                    "checkpoint_every_steps": max(1, round(interval / costs["step_s"]))}
        productive *= 1.05
    return {}


def table(report: dict) -> str:
    rows = [("metric", "value", "baseline", "ratio", "goal")]
    for model, measured in report["throughput"].items():
        pre, fly = measured["precomputed"], measured["on_the_fly"]
        for clock in ("cpu", "wall"):
            key = f"images_per_{clock}_s"
            rows.append((f"{model} images/{clock} s, precomputed vs on-the-fly", f"{pre[key]}", f"{fly[key]}",
                         f"{pre[key] / fly[key]:.3f}", "> 1 (speed-up #2)"))
    ema = report["ema"]
    rows.append(("sd2/8 step CPU s, EMA every step vs none (in loop)", f"{ema['loop_step_s_ema_every_step']}",
                 f"{ema['loop_step_s_no_ema']}", f"{ema['loop_step_ratio']:.3f}", "-"))
    rows.append(("sd2/8 EMA update vs step, CPU s (isolated)", f"{ema['update_s']:.4f}", f"{ema['step_s']}",
                 f"{ema['update_over_step']:.4f}", "-"))
    rows.append(("run cost of EMA: scheduled 0.965 vs every step", f"{ema['run_overhead_scheduled']:.5f}",
                 f"{ema['run_overhead_every_step']:.5f}", f"{ema['scheduled_over_every_step']:.4f}", "~0.035"))
    good = report["goodput"]
    two, straight = good["killed_twice"]["ratio"], good["uninterrupted"]["ratio"]
    run = (f"{good['model']} {good['first_phase'][0]}->{good['resolution']}px {good['steps']} steps "
           f"+{good['step_delay_s']} s/step")
    rows.append((f"goodput ({run}), uninterrupted", f"{straight}", "-", "-", "-"))
    rows.append((f"goodput ({run}), two failures vs uninterrupted", f"{two}", f"{straight}",
                 f"{good['ratio_killed_over_uninterrupted']:.3f}", ">= 0.90 (value)"))
    for number, failure in enumerate(good["failures"], start=1):
        rows.append((f"failure {number} (step {failure['killed_at_step']}): steps lost, ledger vs seen",
                     f"{failure['steps_lost_ledger']}", f"{failure['steps_lost_seen']}",
                     f"{failure['steps_lost_ledger'] / failure['steps_lost_seen']:.3f}", "-"))
        rows.append((f"failure {number} (step {failure['killed_at_step']}): recovery s, ledger vs seen",
                     f"{failure['recovery_s_ledger']}", f"{failure['recovery_s_seen']}",
                     f"{failure['recovery_s_ledger'] / failure['recovery_s_seen']:.3f}", "-"))
    rows.append((f"goodput ({run}), two failures + process import per attempt", f"{good['with_process_imports']}", "-",
                 "-", ">= 0.90 (value)"))
    spent = good["where_the_wall_went"]["killed_twice"]
    for part in ("steps_lost", "start_up", "checkpoint_saves", "sample_grids", "end"):
        rows.append((f"two failures: {part.replace('_', ' ')} s vs wall s", f"{spent[part]}", f"{spent['wall']}",
                     f"{spent[part] / spent['wall']:.3f}", "-"))
    resumed = good["start_up_parts_s"]["resumed"]
    start_up = round(sum(good["failures"][i]["restart_s"] for i in range(len(resumed))) / len(resumed), 2)
    for part in ("restore", "load_data", "unet", "latents", "tracking"):
        mean = round(sum(parts.get(part, 0.0) for parts in resumed) / len(resumed), 2)
        rows.append((f"resumed attempt: {part.replace('_', ' ')} s vs its start-up s", f"{mean:.2f}",
                     f"{start_up:.2f}", f"{mean / start_up:.3f}", "-"))
    needed = good["run_for_goal"]
    if needed:
        rows.append(("two failures, run length for >= 0.90 at these costs: steps", f"{needed['steps']}",
                     f"{good['steps']}", f"{needed['steps'] / good['steps']:.1f}",
                     f"(every {needed['checkpoint_every_steps']} steps)"))
    else:  # the grids alone (or the checkpoint stalls) cost more than a tenth of the steps
        rows.append(("two failures, run length for >= 0.90 at these costs: steps", "inf", f"{good['steps']}", "-",
                     "(unreachable)"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every row at small sizes, one repeat (1-2 min)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per throughput run")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each throughput run")
    parser.add_argument("--resolution", type=int, default=128, help="pixels of the sd2/8 runs")
    parser.add_argument("--goodput-steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=4, help="checkpoint interval of the goodput runs (even: "
                        "each kill loses exactly every/2 steps, a random failure's mean)")
    parser.add_argument("--grid-every", type=int, default=4,
                        help="samples.everyCheckpoints of the goodput runs (a sample grid every this many checkpoints)")
    parser.add_argument("--goodput-step-delay", type=float, default=0.5,
                        help="seconds added to every step of the goodput runs (stands for a larger model's compute)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2 shared cores thrash with more)")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps, args.warmup, args.resolution = 1, 2, 1, 64
        args.goodput_steps, args.every, args.grid_every, args.goodput_step_delay = 16, 2, 2, 0.05

    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="kubeforge-bench-diffusion-"))
    os.chdir(work)  # MLflow's artifacts and any stray output stay in the scratch directory
    stdout = contextlib.redirect_stdout(sys.stderr)  # the workload's own prints; stdout is the table's
    stdout.__enter__()
    bench = Bench(work, args)
    try:
        measured = {"sd2/8": throughput(bench, "sd2/8", args.resolution, with_ema=True),
                    "seed-tiny": throughput(bench, "seed-tiny", 32, with_ema=False)}
        update_s, unet_parameters = ema_update_seconds("sd2/8", args.resolution, 5 if args.quick else 30)
        good = goodput(bench, "seed-tiny", 32) if args.quick else goodput(bench, "sd2/8", args.resolution)
        imports_s = import_seconds()
    finally:
        bench.close()
        os.chdir(REPO)
        shutil.rmtree(work, ignore_errors=True)
        stdout.__exit__(None, None, None)

    sd2 = measured["sd2/8"]
    step_s = sd2["precomputed"]["cpu_step_s"]
    every_step = update_s / step_s
    scheduled_fraction = 1 - SEED_EMA_START_FRACTION
    scheduled = every_step * (math.floor(SEED_STEPS * scheduled_fraction) + 1) / SEED_STEPS
    attempts = len(good["attempt_walls_s"])
    killed = good["killed_twice"]
    good["import_s_per_attempt"] = round(imports_s, 2)
    good["with_process_imports"] = round(killed["productiveSeconds"] /
                                         (killed["wallSeconds"] + attempts * imports_s), 4)
    good["run_for_goal"] = run_length_for(good["costs"])
    good["predicted_for_this_run"] = round(predicted_goodput(
        good["costs"], good["steps"] * good["costs"]["step_s"], good["checkpoint_every"] * good["costs"]["step_s"]), 4)
    report = {
        "batch": BATCH, "threads": args.threads, "repeats": args.repeats, "measured_steps": args.steps,
        "warmup_steps": args.warmup,
        "configs": {"sd2/8": {"resolution": args.resolution, "unet": SD2_SCALED_UNET, "vae": SD2_SCALED_VAE,
                              "text_encoder": SD2_SCALED_TEXT, "unet_parameters": unet_parameters},
                    "seed-tiny": {"resolution": 32, "unet": "TINY_UNET_CONFIG", "vae": "TINY_VAE_CONFIG",
                                  "text_encoder": "build_tiny_clip defaults"}},
        "throughput": {model: {mode: values for mode, values in modes.items() if mode != "precomputed_ema_every_step"}
                       for model, modes in measured.items()},
        "ema": {"update_s": round(update_s, 5), "step_s": step_s, "update_over_step": round(every_step, 5),
                "loop_step_s_no_ema": step_s,
                "loop_step_s_ema_every_step": sd2["precomputed_ema_every_step"]["cpu_step_s"],
                "loop_step_ratio": round(sd2["precomputed_ema_every_step"]["cpu_step_s"] / step_s, 4),
                "run_overhead_every_step": round(every_step, 5), "run_overhead_scheduled": round(scheduled, 6),
                "scheduled_over_every_step": round(scheduled / every_step, 4),
                "schedule": f"startFraction {SEED_EMA_START_FRACTION} of {SEED_STEPS} steps"},
        "goodput": good,
    }
    print(table(report))
    print(json.dumps(report, indent=1), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
