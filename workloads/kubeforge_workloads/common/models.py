"""Model directories from the URIs every kind accepts (kubeforge.api's MODEL_URI_PATTERN):

    s3://bucket/dir              a Hugging Face model directory in the object store
    models:/<name>/<version>     a version in the MLflow model registry (MLflow's own scheme; what FineTune publishes)
    hf://org/name                the Hugging Face hub, where one is reachable

Error messages name the spec field the caller passes (`field`), so each kind's users read their own field name.
"""

from __future__ import annotations

import os
from pathlib import Path

from kubeforge_workloads.common.errors import UserError
from kubeforge_workloads.common.storage import download_uri

REGISTRY_SCHEME = "models:/"
HUB_SCHEME = "hf://"


def registry_uri(name: str, version: str) -> str:
    """The URI of a registered model version, as published in status and accepted by every model field."""
    return f"{REGISTRY_SCHEME}{name}/{version}"


def load_model_dir(uri: str, cache: Path, store, field: str = "model uri") -> Path:
    """Download the model at `uri` into `cache` and return its directory, which holds a config.json."""
    if uri.startswith("s3://"):
        path = download_uri(store, uri, cache / "model")
    elif uri.startswith(REGISTRY_SCHEME):
        path = _from_registry(uri, cache, field)
    elif uri.startswith(HUB_SCHEME):
        path = _from_hub(uri, cache, field)
    else:
        raise UserError(f"{field} {uri}: unknown scheme; use s3://bucket/dir, models:/<name>/<version> or "
                        "hf://org/name")
    if not (path / "config.json").exists():
        raise UserError(f"{field} {uri} is not a Hugging Face model directory (no config.json)")
    return path


def _from_registry(uri: str, cache: Path, field: str) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(cache / "model")))
    except MlflowException as error:
        if "RESOURCE_DOES_NOT_EXIST" in str(error) or "not found" in str(error).lower() \
                or getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise UserError(f"{field} {uri}: no such registered model version; check the name and version in "
                            "the MLflow registry") from error
        raise


def _from_hub(uri: str, cache: Path, field: str) -> Path:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"{field} {uri}: no model hub is reachable (HF_HUB_OFFLINE=1); use an s3:// copy")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(uri[len(HUB_SCHEME):], cache_dir=str(cache / "hf")))
    except Exception as error:  # not found / gated / no network: the spec points at something unusable
        raise UserError(f"{field} {uri}: could not download from the model hub: {error}") from error
