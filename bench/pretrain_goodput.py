"""TrainingJob pretraining: Kubeforge's workload (Ray Train, DDP over gloo, S3 checkpoints, heartbeat, MLflow,
goodput) versus a raw torch loop over the same model, data, sample order and optimizer in one process, in one run;
then the goodput of a run killed once against an uninterrupted one.

Prints:
- tokens/s of the workload with 1 and 2 CPU workers against the raw loop with the same number of threads
  (ratio workload / raw; goal >= 0.95 for 1 worker; 2 workers show what DDP over gloo buys on this machine).
  The workload's tokens/s counts its step loop (its goodput's productive seconds), as the raw loop's does;
  wall time including Ray start-up is printed beside it.
- goodput (productive step seconds / wall seconds since the first attempt) of the uninterrupted 2-worker run and
  of the same run SIGKILLed (whole process group, as a lost node) between two checkpoints and resumed as attempt 2
  right away (no operator back-off: what the workload itself costs), with the steps lost and recovery seconds.
  Both goodput runs add --goodput-step-delay seconds to every step (KUBEFORGE_STEP_DELAY_SECONDS, counted as step
  time): it stands for the compute of a larger model, so that the kill lands between two checkpoints and start-up
  weighs as it does in a longer job; the ratio killed / uninterrupted is what the kill cost.

Runs alternate (raw, workload) so drift on a shared machine hits both; medians are compared.

    .venv/bin/python bench/pretrain_goodput.py [--quick] [--steps 40] [--every 10] [--hidden 128] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import os
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


def spec(args, workers: int, every: int) -> dict:
    config = {"model_type": "llama", "hidden_size": args.hidden, "intermediate_size": 2 * args.hidden,
              "num_hidden_layers": args.layers, "num_attention_heads": 4, "num_key_value_heads": 4}
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

    def run(self, name: str, the_spec: dict, attempt: int = 1, step_delay: float = 0.0,
            kill_after: tuple[int, float] | None = None) -> float:
        """Wall seconds. kill_after=(step, seconds): SIGKILL the whole process group `seconds` after checkpoint
        `step` is committed (the heartbeat lags by up to 2 s, the manifest does not)."""
        from kubeforge.api.workload import CONTEXT_ENV

        workers = the_spec["resources"]["workers"]
        env = {**os.environ, CONTEXT_ENV: self.context(name, the_spec, attempt), "RAY_ADDRESS": "",
               "KUBEFORGE_LOCAL_RAY_CPUS": str(workers + 1), "KUBEFORGE_STEP_DELAY_SECONDS": str(step_delay)}
        log = self.work / f"{name}-{attempt}.log"
        started = time.monotonic()
        with open(log, "w") as out:
            process = subprocess.Popen([sys.executable, "-m", "kubeforge_workloads.pretrain"], cwd=self.work,
                                       env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                while process.poll() is None:
                    if kill_after is not None and self.committed(name, kill_after[0]):
                        time.sleep(kill_after[1])
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
                        return time.monotonic() - started
                    time.sleep(0.1)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        if process.returncode != 0:
            sys.exit(f"workload {name} attempt {attempt} failed ({process.returncode}); see {log}")
        if kill_after is not None:
            sys.exit(f"workload {name} finished before it was killed: make --steps larger")
        return time.monotonic() - started


def tokens_per_second(result: dict, steps: int) -> float:
    return steps * GLOBAL_BATCH * SEQUENCE / result["goodput"]["productiveSeconds"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small model, few steps, one repeat (about 2 min)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of the Llama built from config")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--goodput-step-delay", type=float, default=1.0,
                        help="seconds added to every step of the two goodput runs (stands for step compute)")
    parser.add_argument("--raw", nargs=2, metavar=("TOKENIZER_DIR", "TRAIN_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw:
        print(raw_loop(args, Path(args.raw[0]), Path(args.raw[1])))
        return
    if args.quick:
        args.steps, args.every, args.hidden, args.layers, args.repeats = 12, 4, 64, 2, 1
        args.goodput_step_delay = 0.5

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

    # Goodput, uninterrupted vs killed once half-way between two checkpoints (the steps since the first one are
    # lost) and resumed at once as attempt 2. Both runs' steps are stretched by the same --goodput-step-delay, so
    # that the kill lands between checkpoints and the steps weigh against start-up as a longer job's do.
    goodput_spec = spec(args, 2, args.every)
    delay = args.goodput_step_delay
    workload.run("uninterrupted", goodput_spec, step_delay=delay)
    killed_wall = workload.run("killed", goodput_spec, attempt=1, step_delay=delay,
                               kill_after=(args.every, delay * args.every / 2))
    resumed_wall = workload.run("killed", goodput_spec, attempt=2, step_delay=delay)
    killed = workload.result("killed")["goodput"]
    uninterrupted = workload.result("uninterrupted")["goodput"]
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
        "goodput_step_delay_s": delay,
        "goodput_uninterrupted_2_workers": uninterrupted,
        "goodput_killed_once_2_workers": killed,
        "killed_run_attempt_walls_s": [round(killed_wall, 1), round(resumed_wall, 1)],
        "goodput_ratio_killed_over_uninterrupted": round(killed["ratio"] / uninterrupted["ratio"], 3),
    }, indent=1))


if __name__ == "__main__":
    main()
