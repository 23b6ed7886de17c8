"""The base model: fetched from s3://, models:/<name>/<version> or hf:// (common/models.py), then wrapped for the
method."""

from __future__ import annotations

from pathlib import Path

from kubeforge.api.finetune import FineTuneSpec, Method, Precision
from kubeforge_workloads.common.errors import UserError
from kubeforge_workloads.common.models import load_model_dir

BASE_MODEL_FIELD = "spec.baseModel.uri"


def load_base_model_dir(uri: str, cache: Path, store) -> Path:
    return load_model_dir(uri, cache, store, field=BASE_MODEL_FIELD)


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
