"""After training: the final model and the EMA model in Hugging Face format in the object store, registered in
MLflow when spec.output.registeredModelName is set (the EMA model as <name>-ema); once per resource generation,
however many attempts get here."""

from __future__ import annotations

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


def publish(job, model_state: dict, ema_state) -> dict:
    from mlflow.tracking import MlflowClient

    from kubeforge_workloads.common.tracking import publication_tags, register

    context, storage = job.context, job.storage
    published = storage.get_json("result.json")
    if published and (published.get("resourceUid"), published.get("generation")) == (context.uid, context.generation):
        print(f"kubeforge: reusing what an earlier attempt of generation {context.generation} published", flush=True)
        return published
    result = {"steps": job.total_steps, "finalLoss": job.last_loss, "mlflowRunId": job.run_id,
              "resourceUid": context.uid, "generation": context.generation}
    exports = {"model": model_state}
    if ema_state is not None:
        exports["ema-model"] = ema_state
    name = job.spec.output.registered_model_name
    client = MlflowClient()
    for artifact, state in exports.items():
        directory = job.cache / "export" / artifact
        save_hf(job, state, directory)
        key = "modelUri" if artifact == "model" else "emaModelUri"
        result[key] = storage.upload_dir(directory, artifact)
        client.log_artifacts(job.run_id, str(directory), artifact_path=artifact)  # a retry overwrites the same files
        if name:
            registered = name if artifact == "model" else f"{name}-ema"
            version = register(registered, job.run_id, artifact, publication_tags(context),
                               f"{context.namespace}/{context.name} ({artifact})",
                               extra_tags={"kubeforge.attempt": str(context.attempt)})
            prefix = "registered" if artifact == "model" else "registeredEma"
            result[f"{prefix}ModelName"], result[f"{prefix}ModelVersion"] = registered, version
            result[f"{prefix}ModelUri"] = registry_uri(registered, version)
    client.log_dict(job.run_id, result, "result.json")
    return result
