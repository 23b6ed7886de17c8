"""TrainingJob pretraining: Kubeforge's workload (Ray Train, DDP over gloo, S3 checkpoints, heartbeat, MLflow,
goodput) versus a raw torch loop over the same model, data, sample order and optimizer in one process, in one run;
then the goodput of a run that fails twice against an uninterrupted one.

Prints:
- tokens/s of the workload with 1 and 2 CPU workers against the raw loop with the same number of threads
  (ratio workload / raw; goal >= 0.95 for 1 worker; 2 workers show what DDP over gloo buys on this machine).
  The workload's tokens/s counts its step loop (its goodput's productive seconds), as the raw loop's does;
  wall time including Ray start-up is printed beside it.
- goodput (productive step seconds / wall seconds since the first attempt) of an uninterrupted 2-worker run with a
  scheduled EMA and of the same run failing twice (once mid-epoch at ~35%, once in the EMA window at ~85%, each
  once the goodput ledger shows half a checkpoint interval trained past a committed checkpoint): with
  --goodput-failure job (default) the whole process group is SIGKILLed, as a lost head node, and resumed right
  away as the next attempt (no operator back-off: what the workload itself costs); with --goodput-failure worker
  one Ray Train worker process is SIGKILLed, as a lost worker node, and Ray Train restarts the worker group inside
  the attempt (--goodput-killed-only skips the uninterrupted run). Printed: per failure the steps lost and
  recovery seconds, the cost breakdown (not-productive seconds, checkpoint stalls, the seconds of the steps lost)
  and each attempt's start-up (process start to first step, of
  which the worker group's own phases: data, model, restore, tracking; the rest is Python and Ray start-up, the
  driver's preflight and Ray Train's worker group). The goodput runs add --goodput-step-delay seconds to every
  step (KUBEFORGE_STEP_DELAY_SECONDS, counted as step time): it stands for the compute of a larger model.
  Measured (--only-goodput --goodput-steps 100 --goodput-every 6 --goodput-step-delay 0.5; 2 shared cores, other
  benches queued): uninterrupted goodput 0.668 (wall 89 s, productive 60 s, 17 stalls summing 0.65 s, median
  0.036 s; 29.7 s not productive, nearly all start-up); killed twice 0.459 (wall 129 s; kills landed 1 step past
  checkpoints 42 and 90 with the kill rule of that run, see Workload.run; steps lost 1 and 1, recovery 23.9 and
  21.9 s); ratio 0.688. Each attempt spends 24-30 s from process start to its first step, of which 19-23 s are
  Python + local Ray start + Ray Train's controller and worker group, data 1.0-1.5 s, model 1.1-1.7 s, restore
  0.26-0.28 s, MLflow run 1.4-2.9 s. At such costs a 5-minute run cannot reach 0.90 with two failures (2 x ~23 s
  of restart alone is ~15% of it); the goal needs about 630 productive seconds at these costs (the bench prints
  9 x the not-productive seconds).
  Measured 2026-12-04, killed twice only (--only-goodput --goodput-killed-only --goodput-every 10
  --goodput-step-delay 0.5; 2 shared cores):
  - job failures, 1500 steps (the diffusion bench running beside it): goodput 0.895 (wall 1015 s, productive
    908 s, 107 s not productive; first attempt 35.7 s to its first step, recoveries 27.2 and 27.0 s, 9 and 8 steps
    lost, checkpoint stall median 0.057 s);
  - job failures, 2000 steps (the diffusion bench beside it for its first 10 minutes): **0.923** (wall 1293 s,
    productive 1193 s, 99 s not productive; each attempt 27-29 s from process start to its first step, 22-23 s of
    it Python, local Ray, and Ray Train's controller and worker group; recoveries 27.2 and 25.4 s; 9 and 8 steps
    lost; stall median 0.045 s);
  - worker failures, 120 steps (a smoke run of the mode): both absorbed inside attempt 1, recoveries 18.2 and
    18.2 s (a new worker group, no new Ray or driver), 6 and 5 steps lost; goodput 0.488 (the first attempt's
    start-up dominates so short a run).
  - worker failures, 1500 steps (nothing else running): **0.934** (wall 937 s, productive 875 s, 62 s not
    productive; first attempt 24.3 s to its first step; both failures absorbed inside attempt 1, recoveries 13.9
    and 13.7 s, 5 and 5 steps lost; stall median 0.037 s).
  A 5-minute run cannot reach 0.90 here whatever Kubeforge does: a bare local Ray head plus a 2-worker
  TorchTrainer takes about 22 s to a trivial fit on these 2 cores (../shared/ENVIRONMENT.md), and a run with two
  failures starts three times.

- checkpoints, on a larger model (--checkpoint-hidden/--checkpoint-layers; the default's model, AdamW and RNG
  state come to about 270 MB) so that bytes dominate:
  - the training stall per checkpoint: a 2-worker run of the workload records, per checkpoint, how long its step
    loop was blocked (stallSeconds: DCP serialization, the all-gather of file names, handing the upload over)
    and how long the background commit took (commitSeconds: every rank's upload, the manifest, retention); the
    ratio's goal is <= 0.1.
  - save and restore throughput of the Checkpointer against raw boto3 on the same bytes (the files of that run's
    last checkpoint, both ranks'), alternated, medians. Save: rank 1 contribute_in_background + rank 0 save with
    the manifest and keep_latest=2, as the loop commits; raw: boto3's transfer manager with the Checkpointer's
    TransferConfig (max_concurrency=TRANSFER_CONCURRENCY, boto3's default 8 MB multipart) uploading the same files
    at once. Restore: latest() + load() of the whole checkpoint (manifest, size checks) against the transfer
    manager downloading the same keys. Goal for both ratios: >= 0.9.
  - serialization: DCP writing the same state in one process (what the stall is mostly made of), MB/s.
  Measured before (synchronous DCP in the step loop; 2 shared cores, load 3-4, 260 MB, --only-checkpoints
  defaults): stall/commit median 0.147 (stall 0.34-0.86 s, nearly all DCP serialization); save 0.80; restore 1.005.
  Now (asynchronous DCP: staged copies written in the background on a gloo group of their own; per-rank transfer
  concurrency 8 / local ranks; retention after the manifest on its own thread; load 4-9, other benches running):
  stall 0.184, 0.080, 0.694 s (flush of MLflow metrics ~0.025 s, staging 0.02-0.1 s; the last one waited for the
  previous commit), commit 6.5, 6.3, 1.7 s (the DCP write and both ranks' uploads now share the 2 cores with
  training, so a commit takes longer than before while training goes on), stall/commit median 0.028; save 157 vs
  raw 172 MB/s (0.911); restore 110 vs 104 MB/s (1.058); DCP serialization alone 1014 MB/s (0.26 s).

Runs alternate (raw, workload) so drift on a shared machine hits both; medians are compared.

    .venv/bin/python bench/pretrain_goodput.py [--quick] [--steps 40] [--every 10] [--hidden 128] [--layers 4]
    .venv/bin/python bench/pretrain_goodput.py --only-checkpoints [--checkpoint-hidden 512 --checkpoint-layers 8]
    .venv/bin/python bench/pretrain_goodput.py --only-goodput [--goodput-steps 240 --goodput-every 5
                                                               --goodput-step-delay 1.0]
    .venv/bin/python bench/pretrain_goodput.py --only-goodput --goodput-killed-only --goodput-steps 2000 \
        --goodput-every 10 --goodput-step-delay 0.5 [--goodput-failure worker]     # 0.90 or more: ~22 min
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from finetune_overhead import start_s3_server  # noqa: E402

BUCKET = "bench"
SEQUENCE, GLOBAL_BATCH, MICRO_BATCH = 64, 8, 2


def spec(args, workers: int, every: int, hidden: int | None = None, layers: int | None = None) -> dict:
    hidden, layers = hidden or args.hidden, layers or args.layers
    config = {"model_type": "llama", "hidden_size": hidden, "intermediate_size": 2 * hidden,
              "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 4}
    return {"model": {"config": config},
            "tokenizer": {"uri": f"s3://{BUCKET}/tokenizer"},
            "dataset": {"uri": f"s3://{BUCKET}/data/train.jsonl", "textField": "response"},
            "training": {"maxSteps": args.steps, "globalBatchSize": GLOBAL_BATCH, "microBatchSize": MICRO_BATCH,
                         "sequenceLength": SEQUENCE, "learningRate": 0.003, "warmupSteps": 2,
                         "checkpointEverySteps": every, "keepCheckpoints": 2, "seed": 3},
            "parallelism": {"strategy": "ddp"},
            "resources": {"workers": workers, "cpusPerWorker": 1},
            "output": {"registeredModelName": "bench-pretrain"}}


def raw_loop(args, tokenizer_dir: Path, train_file: Path) -> float:
    """The honest baseline: the loop a user writes by hand for the same model, data, sample order, optimizer and
    schedule, in one process, nothing else. Returns tokens per second of its step loop."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, get_scheduler

    from kubeforge.api.trainingjob import TrainingJobSpec
    from kubeforge_workloads.pretrain.data import pack, read_texts
    from kubeforge_workloads.pretrain.sampler import GlobalSampler

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    parsed = TrainingJobSpec.model_validate(spec(args, 1, args.steps))
    training = parsed.training
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    sequences = pack(read_texts(train_file, "response", str(train_file)), tokenizer, SEQUENCE)
    sampler = GlobalSampler(len(sequences), GLOBAL_BATCH, training.seed)
    torch.manual_seed(training.seed)
    fields = dict(parsed.model.config)
    config = AutoConfig.for_model(fields.pop("model_type"), vocab_size=len(tokenizer), **fields)
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)
    scheduler = get_scheduler(training.scheduler.value, optimizer, num_warmup_steps=training.warmup_steps,
                              num_training_steps=args.steps)
    accumulation = GLOBAL_BATCH // MICRO_BATCH
    model.train()
    started = time.perf_counter()
    for step in range(args.steps):
        for ids in sampler.micro_batches(step, 0, 1, MICRO_BATCH):
            batch = sequences[ids]
            (model(input_ids=batch, labels=batch).loss / accumulation).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return args.steps * GLOBAL_BATCH * SEQUENCE / (time.perf_counter() - started)


def run_raw(args, tokenizer_dir: Path, train_file: Path, threads: int) -> float:
    command = [sys.executable, __file__, "--raw", str(tokenizer_dir), str(train_file), "--steps", str(args.steps),
               "--hidden", str(args.hidden), "--layers", str(args.layers)]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True,
                            text=True)
    if result.returncode != 0:
        sys.exit(f"raw loop failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return float(result.stdout.strip().splitlines()[-1])


class Workload:
    """Runs `python -m kubeforge_workloads.pretrain` as a RayJob's entrypoint runs it, on a fresh local Ray."""

    def __init__(self, work: Path, s3):
        self.work, self.s3 = work, s3
        self.started_at: dict[tuple[str, int], float] = {}  # (name, attempt) -> wall clock at the process start

    def startup(self, name: str, attempt: int) -> dict:
        """Where an attempt's time before its first step went: the process start to the first step (the log's
        `first step ... finished at`), of which the worker group's own phases (data, model, restore, ...); the
        rest is Python/Ray start-up, the driver's preflight and the worker group's creation."""
        text = (self.work / f"{name}-{attempt}.log").read_text()
        match = re.search(r"kubeforge: first step (\d+) finished at ([\d.]+); this worker group's start-up: (.*)",
                          text)
        if not match:
            return {}
        phases = {part.rsplit(" ", 1)[0]: float(part.rsplit(" ", 1)[1].rstrip("s"))
                  for part in match.group(3).split(", ")}
        total = float(match.group(2)) - self.started_at[(name, attempt)]
        return {"first_step": int(match.group(1)), "process_start_to_first_step_s": round(total, 2),
                "ray_driver_and_worker_group_s": round(total - sum(phases.values()), 2),
                "worker_phases_s": phases}

    def context(self, name: str, the_spec: dict, attempt: int) -> str:
        from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext

        return WorkloadContext(kind="TrainingJob", namespace="bench", name=name, uid=f"bench-{name}", generation=1,
                               attempt=attempt, spec=the_spec,
                               storage=StorageContext(bucket=BUCKET, prefix=f"bench/TrainingJob/{name}"),
                               mlflow=MlflowContext(experiment="bench", run_name=name)).model_dump_json()

    def result(self, name: str) -> dict:
        key = f"bench/TrainingJob/{name}/outputs/result.json"
        return json.loads(self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    def committed(self, name: str, step: int) -> bool:
        key = f"bench/TrainingJob/{name}/checkpoints/step-{step}/MANIFEST.json"
        return "Contents" in self.s3.list_objects_v2(Bucket=BUCKET, Prefix=key)

    def newest_committed(self, name: str) -> int:
        """The newest step with a manifest (-1 if none)."""
        listing = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"bench/TrainingJob/{name}/checkpoints/")
        steps = [int(match.group(1)) for item in listing.get("Contents", [])
                 if (match := re.search(r"step-(\d+)/MANIFEST\.json$", item["Key"]))]
        return max(steps, default=-1)

    def last_step(self, name: str) -> int:
        """The last step the run's goodput ledger recorded (every step goes up, in the background)."""
        try:
            body = self.s3.get_object(Bucket=BUCKET, Key=f"bench/TrainingJob/{name}/outputs/goodput.json")["Body"]
        except self.s3.exceptions.NoSuchKey:
            return 0
        return int(json.loads(body.read()).get("lastStep") or 0)

    def due(self, name: str, kill_after: tuple[int, int]) -> bool:
        """A checkpoint at or after kill_after[0] is committed and the run trained kill_after[1] steps past the
        newest committed one (the ledger says so): between two checkpoints, never right after one. (Measured once
        with "steps_past after checkpoint `step`" instead: a commit lagging behind the step loop let the kill land
        one step after the next checkpoint.)"""
        newest = self.newest_committed(name)
        return newest >= kill_after[0] and self.last_step(name) - newest >= kill_after[1]

    def run(self, name: str, the_spec: dict, attempt: int = 1, step_delay: float = 0.0,
            kill_after: tuple[int, int] | None = None, worker_kills: tuple[tuple[int, int], ...] = ()) -> float:
        """Wall seconds. kill_after=(step, steps_past): SIGKILL the whole process group (a lost head node: the
        attempt dies) once due(). worker_kills: SIGKILL one Ray Train worker process (a lost worker node: Ray
        Train restarts the worker group inside the attempt) once each is due(), in order, and let the attempt
        finish."""
        from kubeforge.api.workload import CONTEXT_ENV

        workers = the_spec["resources"]["workers"]
        env = {**os.environ, CONTEXT_ENV: self.context(name, the_spec, attempt), "RAY_ADDRESS": "",
               "KUBEFORGE_LOCAL_RAY_CPUS": str(workers + 1), "KUBEFORGE_STEP_DELAY_SECONDS": str(step_delay)}
        log = self.work / f"{name}-{attempt}.log"
        started = time.monotonic()
        self.started_at[(name, attempt)] = time.time()
        with open(log, "w") as out:
            process = subprocess.Popen([sys.executable, "-m", "kubeforge_workloads.pretrain"], cwd=self.work,
                                       env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            pending = list(worker_kills)
            try:
                while process.poll() is None:
                    if kill_after is not None and self.due(name, kill_after):
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
                        return time.monotonic() - started
                    if pending and self.due(name, pending[0]) and kill_one_train_worker(process.pid):
                        print(f"killed a Ray Train worker of {name} at ledger step {self.last_step(name)}",
                              file=sys.stderr)
                        pending.pop(0)
                    time.sleep(0.1)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        if process.returncode != 0:
            sys.exit(f"workload {name} attempt {attempt} failed ({process.returncode}); see {log}")
        if kill_after is not None or pending:
            sys.exit(f"workload {name} finished before it was killed: make --steps larger")
        return time.monotonic() - started


def kill_one_train_worker(driver_pid: int) -> bool:
    """SIGKILL one of the driver's Ray Train worker processes (the local Ray's processes descend from the driver),
    as a lost worker node; False while none is running."""
    import psutil

    from kubeforge.dev.processes import ray_train_workers

    for process in ray_train_workers(driver_pid):
        try:
            process.kill()
            return True
        except psutil.Error:  # gone since it was listed
            continue
    return False


def goodput_spec(args) -> dict:
    """The goodput runs' spec: 2 workers, a scheduled EMA over the last quarter (the second failure lands in it)."""
    the_spec = spec(args, 2, args.goodput_every)
    the_spec["training"]["maxSteps"] = args.goodput_steps
    the_spec["ema"] = {"decay": 0.99, "startFraction": 0.75}
    return the_spec


def goodput_bench(args, workload: "Workload") -> dict:
    """Goodput of an uninterrupted 2-worker run against the same run failing twice, each failure once the run
    trained half a checkpoint interval past a committed checkpoint (the goodput ledger's last step), the first
    mid-epoch at about a third of the run, the second inside the EMA window, so each loses about half an interval
    of steps, as a failure at a random time does. --goodput-failure job: SIGKILL of the whole process group (a lost
    head node), resumed at once as the next attempt (no operator back-off: what the workload itself costs);
    worker: SIGKILL of one Ray Train worker process (a lost worker node), which Ray Train recovers inside the
    attempt. Every step of both runs takes --goodput-step-delay seconds more (KUBEFORGE_STEP_DELAY_SECONDS, counted
    as step time): the compute of a larger model. --goodput-killed-only skips the uninterrupted run."""
    the_spec, delay, every = goodput_spec(args), args.goodput_step_delay, args.goodput_every
    steps = args.goodput_steps
    kills = [every * round(steps * 0.35 / every), every * round(steps * 0.85 / every)]
    past = max(1, every // 2)  # steps past the checkpoint: about half an interval lost
    uninterrupted = uninterrupted_wall = None
    if not args.goodput_killed_only:
        uninterrupted_wall = workload.run("uninterrupted", the_spec, step_delay=delay)
        uninterrupted = workload.result("uninterrupted")
    walls = []
    if args.goodput_failure == "worker":
        walls.append(workload.run("killed", the_spec, step_delay=delay,
                                  worker_kills=tuple((step, past) for step in kills)))
    else:
        for attempt, step in enumerate(kills, start=1):
            walls.append(workload.run("killed", the_spec, attempt=attempt, step_delay=delay,
                                      kill_after=(step, past)))
        walls.append(workload.run("killed", the_spec, attempt=len(kills) + 1, step_delay=delay))
    killed = workload.result("killed")
    good_k = killed["goodput"]

    def costs(result: dict) -> dict:
        """Where the wall went that was not productive step time."""
        goodput = result["goodput"]
        stalls = [c["stallSeconds"] for c in result["checkpoints"] if c["stallSeconds"] is not None]
        step_s = goodput["productiveSeconds"] / steps
        lost = [round(r["stepsLost"] * step_s, 1) for r in goodput.get("recoveries", [])]
        return {"wall_s": goodput["wallSeconds"], "productive_s": goodput["productiveSeconds"],
                "not_productive_s": round(goodput["wallSeconds"] - goodput["productiveSeconds"], 1),
                "mean_step_s": round(step_s, 3),
                "checkpoint_stalls_last_attempt_s": {"count": len(stalls), "sum": round(sum(stalls), 2),
                                                     "median": round(median(stalls), 3) if stalls else None},
                "per_failure_steps_lost_s": lost,
                "per_failure_recovery_s": [r.get("recoverySeconds") for r in goodput.get("recoveries", [])]}

    if len(good_k.get("recoveries", [])) != len(kills):
        sys.exit(f"the killed run recorded {good_k.get('recoveries')} recoveries, not {len(kills)}")
    overhead = good_k["wallSeconds"] - good_k["productiveSeconds"]
    report = {
        "failure": args.goodput_failure, "step_delay_s": delay, "steps": steps, "checkpoint_every": every,
        "kills_after_checkpoints": kills, "kill_steps_past_checkpoint": past,
        "killed_twice": {"goodput": good_k["ratio"], "attempt_process_walls_s": [round(w, 1) for w in walls],
                         "recoveries": good_k.get("recoveries", []), "costs": costs(killed),
                         "start_up_per_attempt": [workload.startup("killed", a) for a in range(1, len(walls) + 1)]},
        "productive_s_the_0_90_goal_needs_at_these_costs": round(9 * overhead, 1),
    }
    if uninterrupted is not None:
        report["uninterrupted"] = {"goodput": uninterrupted["goodput"]["ratio"],
                                   "process_wall_s": round(uninterrupted_wall, 1), "costs": costs(uninterrupted),
                                   "start_up": workload.startup("uninterrupted", 1)}
        report["ratio_killed_over_uninterrupted"] = round(good_k["ratio"] / uninterrupted["goodput"]["ratio"], 3)
    return report


def tokens_per_second(result: dict, steps: int) -> float:
    return steps * GLOBAL_BATCH * SEQUENCE / result["goodput"]["productiveSeconds"]


def checkpoint_bench(args, workload: "Workload", s3, work: Path, tokenizer_dir: Path) -> dict:
    """The training stall per checkpoint of a real 2-worker run, then the Checkpointer's save and restore of that
    run's last checkpoint against raw boto3 transfers of the same files (see the module docstring)."""
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    from kubeforge_workloads.common.checkpoint import Checkpointer, transfer_concurrency_per_rank
    from kubeforge_workloads.common.storage import TRANSFER_CONCURRENCY, WorkloadStorage
    from kubeforge.api.workload import WorkloadContext

    name = "checkpoints"
    the_spec = spec(args, 2, args.checkpoint_every, args.checkpoint_hidden, args.checkpoint_layers)
    the_spec["training"]["maxSteps"] = args.checkpoint_steps
    wall = workload.run(name, the_spec)
    stalls = [c for c in workload.result(name)["checkpoints"] if c["stallSeconds"] is not None]

    # the run's last checkpoint, every rank's files, on local disk (not timed)
    context = WorkloadContext.model_validate_json(workload.context(name, the_spec, 2))
    run_checkpoints = Checkpointer(WorkloadStorage(context))
    step = run_checkpoints.latest()
    manifest = run_checkpoints.manifest(step)
    source = work / "checkpoint-files"
    run_checkpoints.load(step, source)
    files_by_rank = {int(rank): names for rank, names in manifest["filesByRank"].items()}
    total = sum(manifest["files"].values())
    config = TransferConfig(max_concurrency=TRANSFER_CONCURRENCY, use_threads=True)

    bench_context = WorkloadContext.model_validate_json(workload.context("checkpoint-saves", the_spec, 1))
    per_rank = transfer_concurrency_per_rank(2)  # as the loop's 2 ranks on one machine
    rank_0 = Checkpointer(WorkloadStorage(bench_context), rank=0, keep_latest=2, transfer_concurrency=per_rank)
    rank_1 = Checkpointer(WorkloadStorage(bench_context), rank=1, transfer_concurrency=per_rank)

    def raw_upload(repeat: int) -> float:
        started = time.perf_counter()
        with create_transfer_manager(s3, config) as manager:
            futures = [manager.upload(str(source / name), BUCKET, f"raw/{repeat}/{name}")
                       for name in manifest["files"]]
        for future in futures:
            future.result()
        return time.perf_counter() - started

    def kubeforge_save(repeat: int) -> float:
        started = time.perf_counter()
        rank_1.contribute_in_background(repeat, source, files_by_rank.get(1, []))
        rank_0.save(repeat, {rank: names for rank, names in files_by_rank.items()}, source, 0.0,
                    contributions_timeout=600)
        rank_1.wait()
        seconds = time.perf_counter() - started
        rank_0.wait()  # retention (deleting the checkpoint before last) runs after the commit, untimed as the
        return seconds  # raw side's deletes are

    def raw_download(target: Path) -> float:
        started = time.perf_counter()
        for name in manifest["files"]:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
        with create_transfer_manager(s3, config) as manager:
            futures = [manager.download(BUCKET, f"raw/last/{name}", str(target / name))
                       for name in manifest["files"]]
        for future in futures:
            future.result()
        return time.perf_counter() - started

    def kubeforge_restore(target: Path) -> float:
        started = time.perf_counter()
        rank_0.load(rank_0.latest(), target)
        return time.perf_counter() - started

    saves: dict[str, list[float]] = {"raw": [], "kubeforge": []}
    restores: dict[str, list[float]] = {"raw": [], "kubeforge": []}
    for repeat in range(1, args.checkpoint_repeats + 1):
        order = ("raw", "kubeforge") if repeat % 2 else ("kubeforge", "raw")
        for side in order:
            saves[side].append(raw_upload(repeat) if side == "raw" else kubeforge_save(repeat))
        for key in [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="raw/").get("Contents", [])]:
            s3.delete_object(Bucket=BUCKET, Key=key)
    raw_upload("last")  # the same files at raw keys, for the raw downloads
    for repeat in range(args.checkpoint_repeats):
        order = ("raw", "kubeforge") if repeat % 2 == 0 else ("kubeforge", "raw")
        for side in order:
            target = work / f"restore-{side}-{repeat}"
            restores[side].append(raw_download(target) if side == "raw" else kubeforge_restore(target))
            shutil.rmtree(target)

    serialize = serialization_seconds(args, tokenizer_dir, work / "serialized")
    mb = total / 1e6

    def rates(seconds: list[float]) -> dict:
        return {"seconds": [round(v, 3) for v in seconds], "median_mb_per_s": round(mb / median(seconds), 1)}

    return {
        "model": {"hidden": args.checkpoint_hidden, "layers": args.checkpoint_layers},
        "checkpoint_mb": round(mb, 1), "files": len(manifest["files"]),
        "files_by_rank_mb": {rank: round(sum(manifest["files"][n] for n in names) / 1e6, 1)
                             for rank, names in files_by_rank.items()},
        "run": {"workers": 2, "steps": args.checkpoint_steps, "every": args.checkpoint_every,
                "wall_s": round(wall, 1), "per_checkpoint": stalls},
        "stall_over_commit_median": round(median(c["stallOverCommit"] for c in stalls), 3),
        "stall_s_median": round(median(c["stallSeconds"] for c in stalls), 3),
        "commit_s_median": round(median(c["commitSeconds"] for c in stalls), 3),
        "save": {"raw_transfer_manager": rates(saves["raw"]), "kubeforge_checkpointer": rates(saves["kubeforge"]),
                 "ratio_kubeforge_over_raw": round(median(saves["raw"]) / median(saves["kubeforge"]), 3)},
        "restore": {"raw_transfer_manager": rates(restores["raw"]),
                    "kubeforge_checkpointer": rates(restores["kubeforge"]),
                    "ratio_kubeforge_over_raw": round(median(restores["raw"]) / median(restores["kubeforge"]), 3)},
        "dcp_serialization_one_process": {"seconds": round(serialize[0], 3),
                                          "mb_per_s": round(serialize[1] / 1e6 / serialize[0], 1)},
    }


def serialization_seconds(args, tokenizer_dir: Path, directory: Path) -> tuple[float, int]:
    """DCP writing the checkpoint model's state (model + AdamW after one step) in one process: seconds, bytes."""
    import torch
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from kubeforge_workloads.common.checkpoint import save_sharded

    hidden = args.checkpoint_hidden
    config = LlamaConfig(vocab_size=len(AutoTokenizer.from_pretrained(tokenizer_dir)), hidden_size=hidden,
                         intermediate_size=2 * hidden, num_hidden_layers=args.checkpoint_layers,
                         num_attention_heads=4, num_key_value_heads=4)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters())
    ids = torch.randint(0, config.vocab_size, (1, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    started = time.perf_counter()
    names = save_sharded({"model": model_state, "optimizer": optimizer_state}, directory)
    seconds = time.perf_counter() - started
    size = sum((directory / name).stat().st_size for name in names)
    shutil.rmtree(directory)
    return seconds, size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small model, few steps, one repeat (about 2 min)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of the Llama built from config")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--goodput-step-delay", type=float, default=1.0,
                        help="seconds added to every step of the goodput runs (stands for step compute)")
    parser.add_argument("--goodput-steps", type=int, default=240,
                        help="steps of the goodput runs (about 5 minutes each at the default delay)")
    parser.add_argument("--goodput-every", type=int, default=5, help="checkpoint interval of the goodput runs")
    parser.add_argument("--goodput-failure", choices=("job", "worker"), default="job",
                        help="job: the whole process group is killed and resumed as the next attempt; worker: one "
                             "Ray Train worker is killed and Ray Train recovers it inside the attempt")
    parser.add_argument("--goodput-killed-only", action="store_true", help="skip the uninterrupted goodput run")
    parser.add_argument("--only-goodput", action="store_true", help="run the goodput section only")
    parser.add_argument("--checkpoint-hidden", type=int, default=512,
                        help="hidden size of the checkpoint section's model (512 x 8 layers: about 270 MB of state)")
    parser.add_argument("--checkpoint-layers", type=int, default=8)
    parser.add_argument("--checkpoint-steps", type=int, default=18)
    parser.add_argument("--checkpoint-every", type=int, default=6,
                        help="leave the upload time to finish (about 6 s for 270 MB here while training): a commit "
                             "still running at the next checkpoint is waited for, and counts as stall")
    parser.add_argument("--checkpoint-repeats", type=int, default=5)
    parser.add_argument("--only-checkpoints", action="store_true", help="run the checkpoint section only")
    parser.add_argument("--raw", nargs=2, metavar=("TOKENIZER_DIR", "TRAIN_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw:
        print(raw_loop(args, Path(args.raw[0]), Path(args.raw[1])))
        return
    if args.quick:
        args.steps, args.every, args.hidden, args.layers, args.repeats = 12, 4, 64, 2, 1
        args.goodput_step_delay, args.goodput_steps, args.goodput_every = 0.5, 40, 4
        args.checkpoint_hidden, args.checkpoint_layers, args.checkpoint_steps, args.checkpoint_every = 256, 4, 6, 3
        args.checkpoint_repeats = 1

    import boto3

    from kubeforge_workloads.common.storage import upload_tree
    from kubeforge_workloads.seed.build import build_tiny_llama, write_datasets

    work = Path(tempfile.mkdtemp(prefix="kubeforge-bench-pretrain-"))
    server, endpoint = start_s3_server(work)
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                       "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
                       "TOKENIZERS_PARALLELISM": "false",
                       "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(REPO / "workloads"),
                                                      os.environ.get("PYTHONPATH", "")])})
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    tokenizer_dir = build_tiny_llama(work / "tokenizer")
    train_file, _ = write_datasets(work / "data")
    upload_tree(s3, tokenizer_dir, BUCKET, "tokenizer/")
    s3.upload_file(str(train_file), BUCKET, "data/train.jsonl")
    workload = Workload(work, s3)
    if args.only_goodput:
        goodput = goodput_bench(args, workload)
        server.terminate()
        server.wait()
        print(json.dumps({"goodput": goodput}, indent=1))
        return
    if args.only_checkpoints:
        checkpoints = checkpoint_bench(args, workload, s3, work, tokenizer_dir)
        server.terminate()
        server.wait()
        print(json.dumps({"checkpoints": checkpoints}, indent=1))
        return

    raw = {1: [], 2: []}
    kubeforge: dict[int, list[float]] = {1: [], 2: []}
    walls: dict[int, list[float]] = {1: [], 2: []}
    results: dict[int, dict] = {}
    for repeat in range(args.repeats):
        for workers in (1, 2):
            raw[workers].append(run_raw(args, tokenizer_dir, train_file, threads=workers))
            name = f"w{workers}-r{repeat}"
            walls[workers].append(workload.run(name, spec(args, workers, args.every)))
            results[workers] = workload.result(name)
            kubeforge[workers].append(tokens_per_second(results[workers], args.steps))
            print(f"repeat {repeat}, {workers} worker(s): raw {raw[workers][-1]:.0f} tok/s, kubeforge "
                  f"{kubeforge[workers][-1]:.0f} tok/s", file=sys.stderr)

    goodput = goodput_bench(args, workload)
    checkpoints = checkpoint_bench(args, workload, s3, work, tokenizer_dir)
    server.terminate()
    server.wait()

    def ratio(workers: int) -> float:
        return round(median(kubeforge[workers]) / median(raw[workers]), 3)

    print(json.dumps({
        "steps": args.steps, "checkpoint_every": args.every, "tokens_per_step": GLOBAL_BATCH * SEQUENCE,
        "model": {"hidden": args.hidden, "layers": args.layers},
        "raw_loop_tokens_per_s": {f"{w}_threads": [round(v) for v in raw[w]] for w in (1, 2)},
        "kubeforge_tokens_per_s": {f"{w}_workers": [round(v) for v in kubeforge[w]] for w in (1, 2)},
        "kubeforge_wall_s_incl_ray_startup": {f"{w}_workers": [round(v, 1) for v in walls[w]] for w in (1, 2)},
        "throughput_ratio_1_worker_vs_raw_1_thread": ratio(1),
        "throughput_ratio_2_workers_vs_raw_2_threads": ratio(2),
        "throughput_ratio_2_workers_vs_raw_1_thread": round(median(kubeforge[2]) / median(raw[1]), 3),
        "goodput": goodput,
        "checkpoints": checkpoints,
    }, indent=1))


if __name__ == "__main__":
    main()
