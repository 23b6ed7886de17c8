"""FineTune: operator-only validation, dependencies and status.output for the batch reconcile."""

from __future__ import annotations

import string

from kubeforge.api.finetune import FineTuneSpec, Method
from kubeforge.api.kinds import kind_info
from kubeforge.controllers.batch import DependencyUnusable, KindBase

OUTPUT_KEYS = ("modelUri", "adapterUri", "fullModelUri", "mergedUri", "registeredModelName", "registeredModelVersion",
               "mergedModelName", "mergedModelVersion", "evalLossBefore", "evalLossAfter", "mlflowRunId")


class FineTuneKind(KindBase):
    info = kind_info("FineTune")

    def validate(self, spec: FineTuneSpec, obj: dict) -> list[str]:
        problems = []
        if spec.method == Method.QLORA and spec.resources.gpus_per_worker < 1:
            problems.append("spec.method: qlora needs GPUs; set spec.resources.gpusPerWorker >= 1 or use lora")
        if spec.method == Method.FULL and spec.output.merge:
            problems.append("spec.output.merge: only lora/qlora adapters can be merged; remove merge for method full")
        if spec.training.eval_every_steps and not spec.dataset.eval_uri:
            problems.append("spec.training.evalEverySteps: needs spec.dataset.evalUri to evaluate on")
        if spec.dataset.prompt_template is not None:
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(spec.dataset.prompt_template) if f]
            except ValueError as error:
                problems.append(f"spec.dataset.promptTemplate: not a valid format string ({error}); "
                                "escape literal braces as {{ and }}")
            else:
                if any(not f.isidentifier() for f in fields):
                    problems.append("spec.dataset.promptTemplate: placeholders must be plain field names like {instruction}")
        return problems

    def output(self, result: dict) -> dict:
        return {key: result[key] for key in OUTPUT_KEYS if result.get(key) is not None}


def finetune_model_uri(finetune: dict, *, adapter: bool) -> str:
    """What another kind uses from a succeeded FineTune (a `fineTuneRef`): its registered adapter, or a whole
    model (the merged model of a LoRA run, or the model of a full run), as the `models:/<name>/<version>` URI
    the workloads load. Raises DependencyUnusable, naming what to change, when the FineTune has no such output."""
    name = finetune["metadata"]["name"]
    output = (finetune.get("status") or {}).get("output") or {}
    if adapter:
        if output.get("adapterUri") and output.get("modelUri"):
            return output["modelUri"]
        raise DependencyUnusable(f"FineTune {name} has no LoRA adapter (it trained method full): reference it as "
                                 "model.fineTuneRef instead of under adapters")
    if output.get("mergedModelName") and output.get("mergedModelVersion"):
        return f"models:/{output['mergedModelName']}/{output['mergedModelVersion']}"
    if output.get("fullModelUri") and output.get("modelUri"):
        return output["modelUri"]
    raise DependencyUnusable(f"FineTune {name} produced a LoRA adapter but no merged model: set its "
                             "spec.output.merge: true, or serve the adapter under adapters next to its base model")
