"""After training: the final model and the EMA model in the object store (Hugging Face format for causal LMs, a
Diffusers pipeline for diffusion), registered in MLflow when spec.output.registeredModelName is set (the EMA model
as <name>-ema); once per resource generation, however many attempts get here."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from kubeforge_workloads.common.models import registry_uri


def save_hf(job, state: dict, directory) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(job.hf_config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head.weight is absent only when tied to embeddings
        raise RuntimeError(f"exported weights do not fit the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.save_pretrained(directory)
    job.tokenizer.save_pretrained(directory)


def publish(job, exports: dict[str, Callable[[Path], None]], ema_artifact: str) -> dict:
    """`exports`: artifact name -> what writes it into a directory ("model" always; the EMA's own artifact when it
    has one). `ema_artifact`: the EMA model's artifact path, an export or a folder inside one (a diffusion
    pipeline holds its EMA U-Net as unet_ema/); registered and published only when it exists."""
    from mlflow.tracking import MlflowClient

    from kubeforge_workloads.common.tracking import publication_tags, register

    context, storage = job.context, job.storage
    published = storage.get_json("result.json")
    if published and (published.get("resourceUid"), published.get("generation")) == (context.uid, context.generation):
        print(f"kubeforge: reusing what an earlier attempt of generation {context.generation} published", flush=True)
        return published
    result = {"steps": job.total_steps, "finalLoss": job.last_loss, "mlflowRunId": job.run_id,
              "resourceUid": context.uid, "generation": context.generation}
    client = MlflowClient()
    artifacts = {}
    for artifact, write in exports.items():
        directory = job.cache / "export" / artifact
        write(directory)
        artifacts[artifact] = storage.upload_dir(directory, artifact)
        client.log_artifacts(job.run_id, str(directory), artifact_path=artifact)  # a retry overwrites the same files
    result["modelUri"] = artifacts["model"]
    roles = {"model": ("model", "registered")}
    export_of_ema, _, inside = ema_artifact.partition("/")
    if export_of_ema in artifacts and (not inside or (job.cache / "export" / ema_artifact).is_dir()):
        result["emaModelUri"] = artifacts[export_of_ema] + (f"/{inside}" if inside else "")
        roles[ema_artifact] = ("ema", "registeredEma")
    name = job.spec.output.registered_model_name
    if name:
        for artifact, (role, prefix) in roles.items():
            registered = name if role == "model" else f"{name}-ema"
            version = register(registered, job.run_id, artifact, publication_tags(context),
                               f"{context.namespace}/{context.name} ({artifact})",
                               extra_tags={"kubeforge.attempt": str(context.attempt)})
            result[f"{prefix}ModelName"], result[f"{prefix}ModelVersion"] = registered, version
            result[f"{prefix}ModelUri"] = registry_uri(registered, version)
    client.log_dict(job.run_id, result, "result.json")
    return result
