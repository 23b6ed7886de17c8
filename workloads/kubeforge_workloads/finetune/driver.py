"""The Ray driver: validate early (fail fast on user errors), then run the training loop under Ray Train
(common/raytrain.py: heartbeat hand-over, in-job worker restarts, exit codes)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from kubeforge.api.finetune import FineTuneSpec, Method
from kubeforge_workloads.common.errors import UserError
from kubeforge_workloads.common.raytrain import run_train_driver
from kubeforge_workloads.common.storage import WorkloadStorage, object_exists


def preflight(spec: FineTuneSpec, storage: WorkloadStorage) -> None:
    """Checks that need no GPU and no model: data present and well-formed, model directory present."""
    from kubeforge_workloads.finetune.data import load_examples

    if spec.method == Method.QLORA and spec.resources.gpus_per_worker < 1:
        raise UserError("spec.method qlora needs GPUs (bitsandbytes 4-bit): set resources.gpusPerWorker >= 1 "
                        "or use method lora")
    cache = Path(tempfile.mkdtemp(prefix="kubeforge-preflight-"))
    load_examples(spec, cache, storage.store)
    if spec.base_model.uri.startswith("s3://"):
        from kubeforge.storage.layout import parse_s3_uri

        bucket, key = parse_s3_uri(spec.base_model.uri)
        if not object_exists(storage.store, bucket, key.rstrip("/") + "/config.json"):
            raise UserError(f"spec.baseModel.uri {spec.base_model.uri} has no config.json: "
                            "point it at a Hugging Face model directory")


def main() -> None:
    run_train_driver(FineTuneSpec, preflight, "kubeforge_workloads.finetune.train")
