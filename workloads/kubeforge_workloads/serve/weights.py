"""Where a replica's weights come from: the base model and each adapter, by the URI schemes FineTune publishes
(s3://, models:/<name>/<version>, hf://)."""

from __future__ import annotations

from pathlib import Path

from kubeforge_workloads.common import models
from kubeforge_workloads.common.errors import UserError
from kubeforge_workloads.common.storage import download_uri


def _store(store, uri: str):
    if store is None and uri.startswith("s3://"):
        from kubeforge.storage.objectstore import S3ObjectStore

        return S3ObjectStore()
    return store


def model_dir(uri: str, cache: Path, store=None) -> Path:
    return models.load_model_dir(uri, cache, _store(store, uri), field="the served model uri")


def adapter_dir(uri: str, cache: Path, store=None, name: str = "adapter") -> Path:
    """A peft adapter directory (adapter_config.json and its weights)."""
    field = f"adapter {name} uri"
    if uri.startswith("s3://"):
        path = download_uri(_store(store, uri), uri, cache / "adapter")
    elif uri.startswith(models.REGISTRY_SCHEME):
        path = models._from_registry(uri, cache, field)
    elif uri.startswith(models.HUB_SCHEME):
        path = models._from_hub(uri, cache, field)
    else:
        raise UserError(f"{field} {uri}: unknown scheme; use s3://bucket/dir, models:/<name>/<version> or "
                        "hf://org/name")
    if not (path / "adapter_config.json").exists():
        raise UserError(f"{field} {uri} is not a LoRA adapter directory (no adapter_config.json): point it at a "
                        "FineTune's adapter, not its merged model")
    return path
