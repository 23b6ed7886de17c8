"""FineTune overhead: Kubeforge's workload (Ray Train + S3 checkpoints + heartbeat + MLflow) versus plain
transformers Trainer + peft in one process, same model, data, config and machine, in one run.

Prints: step-throughput ratio (Kubeforge / plain; goal >= 0.95) and checkpoint commit time versus a raw
upload of the same bytes (raw / commit; goal >= 0.9).

A third run, the same plain Trainer as a Ray Train worker, splits the gap into what Ray Train costs and
what Kubeforge adds (heartbeat, S3 checkpoint commits, MLflow metrics).

Both sides get the same compute: the plain Trainer runs in its own process with OMP_NUM_THREADS and torch threads
set to `--threads`, the value Ray gives a Train worker that asks for `--threads` CPUs. Runs alternate
(plain, plain under Ray Train, Kubeforge, then again) so drift on a shared machine hits all; medians are compared.

    .venv/bin/python bench/finetune_overhead.py [--steps 60] [--every 20] [--hidden 256] [--layers 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def spec(model_uri: str, steps: int, every: int, threads: int = 1) -> dict:
    return {"baseModel": {"uri": model_uri}, "method": "lora",
            "dataset": {"trainUri": "s3://bench/data/train.jsonl", "format": "instruction",
                        "promptTemplate": "### Question\n{instruction}\n### Answer\n"},
            "training": {"maxSteps": steps, "batchSize": 8, "learningRate": 0.002, "checkpointEverySteps": every,
                         "seed": 7, "maxSeqLength": 256},
            "output": {"registeredModelName": "bench"}, "resources": {"workers": 1, "cpusPerWorker": threads}}


def plain_trainer(model_dir: Path, train_file: Path, steps: int, every: int, out: Path) -> float:
    """The honest baseline: what a user would write by hand. Returns train_runtime seconds."""
    import torch
    from transformers import AutoTokenizer, Trainer

    from kubeforge.api.finetune import FineTuneSpec
    from kubeforge_workloads.finetune.data import PadCollator, read_examples, tokenize
    from kubeforge_workloads.finetune.train import ListDataset, build_model, training_arguments

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    parsed = FineTuneSpec.model_validate(spec("s3://x/y", steps, every))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = tokenize(read_examples(train_file, parsed.dataset, str(train_file)), tokenizer, 256)
    trainer = Trainer(model=build_model(parsed, model_dir), args=training_arguments(parsed, out, False, False),
                      train_dataset=ListDataset(rows), data_collator=PadCollator(tokenizer.pad_token_id))
    return float(trainer.train().metrics["train_runtime"])


def plain_trainer_under_ray_train(model_dir: Path, train_file: Path, steps: int, every: int, out: Path,
                                  threads: int) -> float:
    """The same plain Trainer as one Ray Train worker (TorchTrainer, DDP over gloo): what Ray alone costs."""
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    def loop(config: dict) -> None:
        runtime = plain_trainer(model_dir, train_file, steps, every, out)
        (out / "runtime.txt").write_text(str(runtime))

    ray.init(num_cpus=threads + 1, include_dashboard=False)
    TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": threads})).fit()
    return float((out / "runtime.txt").read_text())


def run_plain(args, model_dir: Path, train_file: Path, out: Path, under_ray: bool = False) -> float:
    mode = "--plain-under-ray" if under_ray else "--plain"
    result = subprocess.run([sys.executable, __file__, mode, str(model_dir), str(train_file), str(out),
                             "--steps", str(args.steps), "--every", str(args.every), "--threads", str(args.threads)],
                            env={**os.environ, "OMP_NUM_THREADS": str(args.threads),
                                 "PYTHONPATH": str(Path(__file__).parent)}, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"plain trainer failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def run_kubeforge(args, repeat: int) -> tuple[float, float]:
    """One workload run on a fresh local Ray; returns (train_runtime from MLflow, wall incl. Ray start-up)."""
    from mlflow.tracking import MlflowClient

    from kubeforge.api.workload import CONTEXT_ENV, MlflowContext, StorageContext, WorkloadContext

    name = f"overhead-{repeat}"
    context = WorkloadContext(kind="FineTune", namespace="bench", name=name, uid=f"bench-uid-{repeat}",
                              generation=1, attempt=1,
                              spec=spec("s3://bench/model", args.steps, args.every, args.threads),
                              storage=StorageContext(bucket="bench", prefix=f"bench/FineTune/{name}"),
                              mlflow=MlflowContext(experiment="bench", run_name=name))
    started = time.monotonic()
    # One logical CPU more than the worker asks for, so Ray Train's controller never waits for a slot.
    result = subprocess.run([sys.executable, "-m", "kubeforge_workloads.finetune"], cwd=REPO,
                            env={**os.environ, CONTEXT_ENV: context.model_dump_json(), "RAY_ADDRESS": "",
                                 "KUBEFORGE_LOCAL_RAY_CPUS": str(args.threads + 1)},
                            capture_output=True, text=True)
    wall = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"workload failed ({result.returncode}):\n{result.stderr[-3000:]}")
    client = MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("bench").experiment_id],
                             filter_string=f"tags.`kubeforge.uid` = 'bench-uid-{repeat}'")[0]
    return run.data.metrics["train_runtime"], wall


def start_s3_server(work: Path) -> tuple[subprocess.Popen, str]:
    """moto in its own process, as in the sandbox: an S3 endpoint is another process (or machine), and an
    in-process server would fight the uploading threads for the GIL, which no real endpoint does."""
    import atexit
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(work / "s3.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(endpoint + "/moto-api/", timeout=2):
                atexit.register(server.kill)  # also when the bench fails half-way
                return server, endpoint
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"moto S3 server did not start; see {work / 's3.log'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the Llama built from config")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--plain", nargs=3, metavar=("MODEL_DIR", "TRAIN_FILE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--plain-under-ray", nargs=3, metavar=("MODEL_DIR", "TRAIN_FILE", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        print(plain_trainer(Path(args.plain[0]), Path(args.plain[1]), args.steps, args.every, Path(args.plain[2])))
        return
    if args.plain_under_ray:
        model_dir, train_file, out = (Path(value) for value in args.plain_under_ray)
        out.mkdir(parents=True, exist_ok=True)
        print(plain_trainer_under_ray_train(model_dir, train_file, args.steps, args.every, out, args.threads))
        return

    import boto3

    from kubeforge_workloads.common.storage import WorkloadStorage, upload_tree
    from kubeforge_workloads.seed.build import build_tiny_llama, write_datasets

    work = Path(tempfile.mkdtemp(prefix="kubeforge-bench-"))
    server, endpoint = start_s3_server(work)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
           "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    os.environ.update(env)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bench")
    model_dir = build_tiny_llama(work / "model", hidden_size=args.hidden, layers=args.layers)
    parameters = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) // 4
    train_file, _ = write_datasets(work / "data")
    upload_tree(s3, model_dir, "bench", "model/")
    s3.upload_file(str(train_file), "bench", "data/train.jsonl")

    plain_runs, ray_runs, kubeforge_runs, walls = [], [], [], []
    for repeat in range(args.repeats):
        plain_runs.append(run_plain(args, model_dir, train_file, work / f"plain-{repeat}"))
        ray_runs.append(run_plain(args, model_dir, train_file, work / f"ray-{repeat}", under_ray=True))
        runtime, wall = run_kubeforge(args, repeat)
        kubeforge_runs.append(runtime)
        walls.append(wall)
        print(f"repeat {repeat}: plain {plain_runs[-1]:.2f} s, plain under Ray Train {ray_runs[-1]:.2f} s, "
              f"kubeforge {runtime:.2f} s", file=sys.stderr)
    plain, under_ray, kubeforge = median(plain_runs), median(ray_runs), median(kubeforge_runs)

    # Checkpoint commit (manifest last) vs a raw upload of the same bytes.
    from kubeforge.api.workload import StorageContext, WorkloadContext
    from kubeforge_workloads.common.checkpoint import Checkpointer, local_files

    checkpoint = max((work / "plain-0").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    files = [p for p in checkpoint.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    context = WorkloadContext(kind="FineTune", namespace="bench", name="ckpt", uid="u", generation=1, attempt=1,
                              spec={}, storage=StorageContext(bucket="bench", prefix="ckpt"),
                              mlflow={"experiment": "bench", "run_name": "ckpt"})
    storage = WorkloadStorage(context)
    raw_times, commit_times = [], []

    def raw_upload(repeat: int) -> None:
        for path in files:
            s3.upload_file(str(path), "bench", f"raw/{repeat}/{path.relative_to(checkpoint)}")

    checkpointer = Checkpointer(storage)

    def commit(repeat: int) -> None:
        checkpointer.save(1000 + repeat, {0: local_files(checkpoint)}, checkpoint, 1.0)

    # Tens of milliseconds each on a shared machine: many repeats, order swapped every other one.
    for repeat in range(21):
        pair = [(raw_upload, raw_times), (commit, commit_times)]
        for transfer, times in pair if repeat % 2 == 0 else reversed(pair):
            t0 = time.perf_counter()
            transfer(repeat)
            times.append(time.perf_counter() - t0)
    raw_s, commit_s = median(raw_times), median(commit_times)
    server.terminate()
    server.wait()
    print(json.dumps({
        "steps": args.steps, "checkpoint_every": args.every, "threads_each_side": args.threads,
        "model": {"hidden": args.hidden, "layers": args.layers, "approx_parameters": parameters},
        "plain_trainer_train_runtime_s": [round(v, 3) for v in plain_runs],
        "kubeforge_train_runtime_s": [round(v, 3) for v in kubeforge_runs],
        "plain_trainer_under_ray_train_runtime_s": [round(v, 3) for v in ray_runs],
        "step_throughput_ratio_median": round(plain / kubeforge, 3),
        "of_which_ray_train_ratio": round(plain / under_ray, 3),
        "of_which_kubeforge_ratio": round(under_ray / kubeforge, 3),
        "kubeforge_wall_s_incl_ray_startup": [round(v, 1) for v in walls],
        "checkpoint_bytes": size, "checkpoint_files": len(files),
        "raw_upload_s_median": round(raw_s, 4), "commit_s_median": round(commit_s, 4),
        "checkpoint_speed_ratio_raw_over_commit": round(raw_s / commit_s, 3),
    }, indent=1))


if __name__ == "__main__":
    main()
