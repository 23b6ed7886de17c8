"""FineTune overhead: Kubeforge's workload (Ray Train + S3 checkpoints + heartbeat + MLflow) versus plain
transformers Trainer + peft in one process, same model, data, config and machine, in one run.

Prints: step-throughput ratio (Kubeforge / plain; goal >= 0.95) and checkpoint commit time versus a raw
upload of the same bytes (raw / commit; goal >= 0.9).

    .venv/bin/python bench/finetune_overhead.py [--steps 60] [--every 20]
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def spec(model_uri: str, steps: int, every: int) -> dict:
    return {"baseModel": {"uri": model_uri}, "method": "lora",
            "dataset": {"trainUri": "s3://bench/data/train.jsonl", "format": "instruction",
                        "promptTemplate": "### Question\n{instruction}\n### Answer\n"},
            "training": {"maxSteps": steps, "batchSize": 8, "learningRate": 0.002, "checkpointEverySteps": every,
                         "seed": 7, "maxSeqLength": 256},
            "output": {"registeredModelName": "bench"}, "resources": {"workers": 1, "cpusPerWorker": 1}}


def plain_trainer(model_dir: Path, train_file: Path, steps: int, every: int, out: Path) -> float:
    """The honest baseline: what a user would write by hand. Returns train_runtime seconds."""
    from transformers import AutoTokenizer, Trainer

    from kubeforge.api.finetune import FineTuneSpec
    from kubeforge_workloads.finetune.data import PadCollator, read_examples, tokenize
    from kubeforge_workloads.finetune.train import ListDataset, build_model, training_arguments

    parsed = FineTuneSpec.model_validate(spec("s3://x/y", steps, every))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = tokenize(read_examples(train_file, parsed.dataset, str(train_file)), tokenizer, 256)
    trainer = Trainer(model=build_model(parsed, model_dir), args=training_arguments(parsed, out, False, False),
                      train_dataset=ListDataset(rows), data_collator=PadCollator(tokenizer.pad_token_id))
    return float(trainer.train().metrics["train_runtime"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=20)
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer

    from kubeforge_workloads.seed.build import build_tiny_llama, write_datasets

    work = Path(tempfile.mkdtemp(prefix="kubeforge-bench-"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
           "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    os.environ.update(env)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bench")
    model_dir = build_tiny_llama(work / "model")
    train_file, _ = write_datasets(work / "data")
    for path in model_dir.iterdir():
        s3.upload_file(str(path), "bench", f"model/{path.name}")
    s3.upload_file(str(train_file), "bench", "data/train.jsonl")

    plain = plain_trainer(model_dir, train_file, args.steps, args.every, work / "plain")

    from kubeforge.api.workload import CONTEXT_ENV, MlflowContext, StorageContext, WorkloadContext

    context = WorkloadContext(kind="FineTune", namespace="bench", name="overhead", uid="bench-uid", generation=1,
                              attempt=1, spec=spec("s3://bench/model", args.steps, args.every),
                              storage=StorageContext(bucket="bench", prefix="bench/FineTune/overhead"),
                              mlflow=MlflowContext(experiment="bench", run_name="overhead"))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "kubeforge_workloads.finetune"], cwd=REPO,
                            env={**os.environ, CONTEXT_ENV: context.model_dump_json(), "RAY_ADDRESS": ""},
                            capture_output=True, text=True)
    wall = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"workload failed ({result.returncode}):\n{result.stderr[-3000:]}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("bench").experiment_id])[0]
    kubeforge_runtime = run.data.metrics["train_runtime"]

    # Checkpoint commit (manifest last) vs a raw upload of the same bytes.
    from kubeforge_workloads.common.storage import WorkloadStorage

    checkpoint = max((work / "plain").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    files = [p for p in checkpoint.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    storage = WorkloadStorage(context.model_copy(update={"storage": StorageContext(bucket="bench", prefix="ckpt")}))
    raw_times, commit_times = [], []
    for repeat in range(5):
        t0 = time.perf_counter()
        for path in files:
            s3.upload_file(str(path), "bench", f"raw/{repeat}/{path.relative_to(checkpoint)}")
        raw_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        storage.commit_checkpoint(1000 + repeat, 1.0, checkpoint)
        commit_times.append(time.perf_counter() - t0)
    raw_s, commit_s = sorted(raw_times)[2], sorted(commit_times)[2]
    server.stop()
    print(json.dumps({
        "steps": args.steps, "checkpoint_every": args.every,
        "plain_trainer_train_runtime_s": round(plain, 3),
        "kubeforge_train_runtime_s": round(kubeforge_runtime, 3),
        "step_throughput_ratio": round(plain / kubeforge_runtime, 3),
        "kubeforge_wall_s_incl_ray_startup": round(wall, 1),
        "checkpoint_bytes": size, "checkpoint_files": len(files),
        "raw_upload_s_median": round(raw_s, 4), "commit_s_median": round(commit_s, 4),
        "checkpoint_speed_ratio_raw_over_commit": round(raw_s / commit_s, 3),
    }, indent=1))


if __name__ == "__main__":
    main()
