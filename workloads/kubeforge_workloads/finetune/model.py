"""The base model: fetched from s3://, mlflow://models/<name>/<version> or hf://, then wrapped for the method."""

from __future__ import annotations

import os
from pathlib import Path

from kubeforge.api.finetune import FineTuneSpec, Method, Precision
from kubeforge_workloads.common.errors import UserError
from kubeforge_workloads.common.storage import download_uri


def load_model_dir(uri: str, cache: Path, store) -> Path:
    if uri.startswith("s3://"):
        path = download_uri(store, uri, cache / "model")
    elif uri.startswith("mlflow://models/"):
        import mlflow

        from mlflow.exceptions import MlflowException

        name, version = uri[len("mlflow://models/"):].split("/", 1)
        try:
            path = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(cache / "model")))
        except MlflowException as error:
            if "RESOURCE_DOES_NOT_EXIST" in str(error) or "not found" in str(error).lower() \
                    or getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                raise UserError(f"spec.baseModel.uri {uri}: no such registered model version") from error
            raise
    else:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise UserError(f"spec.baseModel.uri {uri}: no model hub is reachable (HF_HUB_OFFLINE=1); use s3://")
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(uri[len("hf://"):], cache_dir=str(cache / "hf")))
        except Exception as error:  # not found / gated / no network: the spec points at something unusable
            raise UserError(f"spec.baseModel.uri {uri}: could not download from the model hub: {error}") from error
    if not (path / "config.json").exists():
        raise UserError(f"spec.baseModel.uri {uri} is not a Hugging Face model directory (no config.json)")
    return path


def build_model(spec: FineTuneSpec, model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    # lora/qlora: the frozen base in the training precision (peft keeps the adapter in fp32);
    # full: fp32 master weights, bf16/fp16 through the Trainer's autocast (mixed precision).
    dtype = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}.get(spec.training.precision, torch.float32)
    kwargs = {"dtype": torch.float32 if spec.method == Method.FULL else dtype}
    if spec.method == Method.QLORA:
        if not torch.cuda.is_available():
            raise UserError("spec.method qlora needs a CUDA GPU (bitsandbytes 4-bit); use method lora on CPU")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if spec.method == Method.FULL:
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if spec.method == Method.QLORA:
        model = prepare_model_for_kbit_training(model)
    targets = spec.lora.target_modules
    lora = LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout, task_type="CAUSAL_LM",
                      target_modules="all-linear" if targets == ["all-linear"] else targets)
    return get_peft_model(model, lora)
