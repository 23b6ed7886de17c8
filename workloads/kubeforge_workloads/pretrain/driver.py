"""The Ray driver: validate early (fail fast on user errors), then run the training loop (causal-lm or diffusion)
under Ray Train (common/raytrain.py: heartbeat hand-over, in-job worker restarts, exit codes)."""

from __future__ import annotations

from kubeforge.api.trainingjob import DatasetFormat, TrainingJobSpec
from kubeforge.storage.layout import parse_s3_uri
from kubeforge_workloads.common.errors import UserError
from kubeforge_workloads.common.raytrain import run_train_driver
from kubeforge_workloads.common.storage import WorkloadStorage
from kubeforge_workloads.pretrain.goodput import record_first_start


def preflight(spec: TrainingJobSpec, storage: WorkloadStorage) -> None:
    """Checks that need no worker: the data and components being there."""
    if spec.diffusion:
        diffusion_preflight(spec, storage)
    else:
        if spec.dataset.format == DatasetFormat.TOKENIZED_SHARDS:
            tokenized_shards_preflight(spec, storage)
        else:
            bucket, key = parse_s3_uri(spec.dataset.uri)
            if not any(True for _ in storage.store.list(bucket, key)):
                raise UserError(f"spec.dataset.uri {spec.dataset.uri} does not exist in the object store")
    record_first_start(storage)  # goodput's wall time counts from the first attempt's driver, not its workers


def tokenized_shards_preflight(spec: TrainingJobSpec, storage: WorkloadStorage) -> None:
    """The shards' manifest is there (a torn prefix has none) and they were packed for spec.training.sequenceLength."""
    from kubeforge_workloads.pretrain.precompute import check_sequence_length, read_manifest

    check_sequence_length(spec, read_manifest(storage.store, spec.dataset.uri, "spec.dataset.uri"),
                          spec.dataset.uri, "spec.dataset.uri")


DATASET_SUFFIXES = {DatasetFormat.WEBDATASET: ".tar", DatasetFormat.PARQUET: ".parquet"}


def diffusion_preflight(spec: TrainingJobSpec, storage: WorkloadStorage) -> None:
    from kubeforge_workloads.pretrain.diffusion import component_mismatches

    suffix = DATASET_SUFFIXES[spec.dataset.format]
    bucket, key = parse_s3_uri(spec.dataset.uri)
    keys = list(storage.store.list(bucket, key))
    if not keys:
        raise UserError(f"spec.dataset.uri {spec.dataset.uri} does not exist in the object store")
    if not any(name.endswith(suffix) for name in keys):
        other = next((fmt.value for fmt, ending in DATASET_SUFFIXES.items()
                      if ending != suffix and any(name.endswith(ending) for name in keys)), None)
        hint = f"; it holds {other} files: set spec.dataset.format: {other}" if other else ""
        raise UserError(f"spec.dataset.uri {spec.dataset.uri} holds no {suffix} files for spec.dataset.format "
                        f"{spec.dataset.format.value}{hint}")
    model = spec.model
    for field, uri in (("model.unet.uri", model.unet.uri), ("model.vae.uri", model.vae.uri),
                       ("model.textEncoder.uri", model.text_encoder.uri), ("model.tokenizer.uri", model.tokenizer.uri)):
        if uri and uri.startswith("s3://"):
            component_bucket, component_key = parse_s3_uri(uri)
            if not any(True for _ in storage.store.list(component_bucket, component_key.rstrip("/") + "/")):
                raise UserError(f"spec.{field} {uri} does not exist in the object store")
    problems = component_mismatches(spec)
    if problems:
        raise UserError("; ".join(problems))


def main() -> None:
    run_train_driver(TrainingJobSpec, preflight, "kubeforge_workloads.pretrain.train")
