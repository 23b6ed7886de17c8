"""ServingEndpoint: the pure reconcile of a long-running endpoint. Its child is one KubeRay RayService,
converged with server-side apply; its status mirrors the RayService's readiness (Cluster API's mirror pattern):
Waiting (dependencies) → Deploying → Ready, Ready=False with Reconciling when readiness is lost, Stalled when only
the user can fix it. No attempts and no failurePolicy: Ray Serve and KubeRay restart replicas themselves."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from pydantic import ValidationError

from kubeforge.api.kinds import kind_info
from kubeforge.api.serveapp import (API_KEYS_ENV, EngineConfig, ServeAppConfig, ServedEmbeddings, ServedModel,
                                    ServedRetrieval, ServedTemplate, ServedTracing)
from kubeforge.api.servingendpoint import Engine, ServingEndpointSpec
from kubeforge.api.status import ConditionType, Phase, Reason
from kubeforge.controllers.batch import Dependency, DependencyUnusable, unready_dependencies
from kubeforge.controllers.common import Pass, Plan, summarize, validation_message
from kubeforge.controllers.conditions import condition_status
from kubeforge.controllers.finetune import finetune_model_uri
from kubeforge.launch.rayservice import (SPEC_HASH_ANNOTATION, application_name, build_rayservice, endpoint_url,
                                         rayservice_name)
from kubeforge.settings import Settings

INFO = kind_info("ServingEndpoint")
DEPLOY_FAILED = ("DEPLOY_FAILED",)
UNHEALTHY = ("UNHEALTHY",)


@dataclass
class ServingObserved:
    rayservices: dict[str, dict] = field(default_factory=dict)
    """Child RayServices by name (from the index: metadata, annotations and status)."""
    dependencies: dict[Dependency, Optional[dict]] = field(default_factory=dict)
    unmet: list[Any] = field(default_factory=list)
    """Unmet platform prerequisites; they hold back the first deployment only."""


def dependencies(spec: ServingEndpointSpec) -> list[Dependency]:
    needed: list[Dependency] = []
    if spec.model.fine_tune_ref:
        needed.append(("FineTune", spec.model.fine_tune_ref))
    needed += [("FineTune", a.fine_tune_ref) for a in spec.adapters if a.fine_tune_ref]
    if spec.rag:
        needed.append(("VectorIndex", spec.rag.vector_index_ref))
    return list(dict.fromkeys(needed))


def validate(spec: ServingEndpointSpec, name: str) -> list[str]:
    problems = []
    gpus = spec.resources.gpus_per_worker
    if spec.engine == Engine.VLLM and not gpus:
        problems.append("spec.engine vllm needs GPUs: set spec.resources.gpusPerWorker >= 1, or engine "
                        "transformers (or auto) to serve on CPU")
    if spec.engine_settings.tensor_parallel_size > max(gpus, 1):
        problems.append(f"spec.engineSettings.tensorParallelSize {spec.engine_settings.tensor_parallel_size} "
                        f"is more than the {gpus} GPU(s) of one replica (spec.resources.gpusPerWorker)")
    served = [name] + [a.name for a in spec.adapters] + [f"{name}:{t.name}" for t in spec.prompt_templates]
    served += [spec.embeddings.name] if spec.embeddings else []
    taken = sorted({n for n in served if served.count(n) > 1})
    if taken:
        problems.append(f"model names must be unique, and {', '.join(taken)} is used twice (the endpoint's own "
                        "name is its base model's): rename the adapter, template or embeddings model")
    templates = {t.name for t in spec.prompt_templates}
    if spec.rag and spec.rag.prompt_template and spec.rag.prompt_template not in templates:
        problems.append(f"spec.rag.promptTemplate {spec.rag.prompt_template!r} is not in spec.promptTemplates "
                        f"({', '.join(sorted(templates)) or 'none defined'})")
    return problems


def engine_kind(spec: ServingEndpointSpec) -> str:
    if spec.engine == Engine.AUTO:
        return "vllm" if spec.resources.gpus_per_worker else "transformers"
    return spec.engine.value


def resolve_inputs(spec: ServingEndpointSpec, deps: dict[Dependency, dict]) -> dict[str, Any]:
    """Every reference resolved to a location, as recorded in status.inputs; raises DependencyUnusable."""
    model = spec.model
    if model.fine_tune_ref:
        base = finetune_model_uri(deps[("FineTune", model.fine_tune_ref)], adapter=False)
    elif model.registered_model:
        base = f"models:/{model.registered_model.name}/{model.registered_model.version}"
    else:
        base = model.uri
    adapters = {a.name: a.uri or finetune_model_uri(deps[("FineTune", a.fine_tune_ref)], adapter=True)
                for a in spec.adapters}
    inputs: dict[str, Any] = {"model": base, "adapters": adapters}
    if spec.rag:
        index = deps[("VectorIndex", spec.rag.vector_index_ref)]
        status = index.get("status") or {}
        if not status.get("currentVersion") or not status.get("storagePrefix"):
            raise DependencyUnusable(f"VectorIndex {spec.rag.vector_index_ref} has no committed version yet")
        inputs["vectorIndex"] = {"uri": status["storagePrefix"], "version": status["currentVersion"]}
    return inputs


def app_config(obj: dict, spec: ServingEndpointSpec, inputs: dict[str, Any]) -> ServeAppConfig:
    meta = obj["metadata"]
    es = spec.engine_settings
    rag = None
    if spec.rag:
        rag = ServedRetrieval(index=inputs["vectorIndex"]["uri"], version=inputs["vectorIndex"]["version"],
                              top_k=spec.rag.top_k, prompt_template=spec.rag.prompt_template,
                              include_context=spec.rag.include_context)
    return ServeAppConfig(
        endpoint=f"{meta['namespace']}/{meta['name']}",
        base=ServedModel(name=meta["name"], uri=inputs["model"]),
        engine=EngineConfig(kind=engine_kind(spec), max_model_len=es.max_model_len, dtype=es.dtype,
                            gpu_memory_utilization=es.gpu_memory_utilization, max_num_seqs=es.max_num_seqs,
                            tensor_parallel_size=es.tensor_parallel_size),
        max_tokens=spec.max_tokens,
        adapters=[ServedModel(name=name, uri=uri) for name, uri in inputs["adapters"].items()],
        templates=[ServedTemplate(name=t.name, template=t.template, system=t.system, parameters=t.parameters)
                   for t in spec.prompt_templates],
        rag=rag,
        embeddings=(ServedEmbeddings(name=spec.embeddings.name, model=spec.embeddings.model,
                                     normalize=spec.embeddings.normalize) if spec.embeddings else None),
        tracing=(ServedTracing(experiment=spec.mlflow.experiment_for(obj), sample_rate=spec.tracing.sample_rate)
                 if spec.tracing and spec.tracing.sample_rate > 0 else None),
        api_keys_env=API_KEYS_ENV if spec.auth else None,
        gpus_per_replica=spec.resources.gpus_per_worker,
    )


def served_models(name: str, spec: ServingEndpointSpec, inputs: dict[str, Any]) -> list[dict]:
    models = [{"name": name, "type": "base", "source": inputs["model"]}]
    models += [{"name": a, "type": "adapter", "source": uri} for a, uri in inputs["adapters"].items()]
    models += [{"name": f"{name}:{t.name}", "type": "template", "source": name} for t in spec.prompt_templates]
    if spec.embeddings:
        models.append({"name": spec.embeddings.name, "type": "embedding", "source": spec.embeddings.model})
    return models


def reconcile_endpoint(obj: dict, observed: ServingObserved, now: datetime, settings: Settings) -> Plan:
    run = Pass(obj, now)
    status = run.status
    meta = obj["metadata"]
    try:
        spec = ServingEndpointSpec.model_validate(obj.get("spec") or {})
    except ValidationError as error:
        return _stalled_invalid(run, validation_message(error))
    problems = validate(spec, meta["name"])
    if problems:
        return _stalled_invalid(run, "; ".join(problems))

    child_name = rayservice_name(meta["name"])
    current = observed.rayservices.get(child_name)
    deployed = current is not None
    found = {key: observed.dependencies.get(key) for key in dependencies(spec)}
    failed, waiting = unready_dependencies(found)
    if failed or waiting:
        # A deployed endpoint keeps serving what it resolved before; only the first deployment waits.
        if not deployed:
            if failed:
                return _phase(run, Phase.WAITING, ready=False, reconciling=False, stalled=True,
                              reason=Reason.DEPENDENCY_FAILED, message=f"{', '.join(failed)} failed; fix or "
                              "re-create it and this endpoint deploys")
            return _phase(run, Phase.WAITING, ready=False, reconciling=True, stalled=False,
                          reason=Reason.WAITING_FOR_DEPENDENCY,
                          message=f"waiting for {', '.join(waiting)} to become Ready")
        inputs = status.get("inputs") or {}
    else:
        try:
            inputs = resolve_inputs(spec, {k: d for k, d in found.items() if d is not None})
        except DependencyUnusable as unusable:
            if not deployed:
                return _phase(run, Phase.WAITING, ready=False, reconciling=False, stalled=True,
                              reason=Reason.DEPENDENCY_FAILED, message=str(unusable))
            inputs = status.get("inputs") or {}
    if not deployed and observed.unmet:
        first = observed.unmet[0]
        return _phase(run, Phase.PENDING, ready=False, reconciling=False, stalled=True, reason=first.reason,
                      message="; ".join(u.message for u in observed.unmet))

    try:
        desired = build_rayservice(obj, spec, app_config(obj, spec, inputs), settings)
    except ValueError as error:  # spec.ray.rayClusterSpec that does not merge
        return _stalled_invalid(run, str(error))
    status.update(inputs=inputs, rayService=child_name, url=endpoint_url(meta["namespace"], meta["name"]),
                  models=served_models(meta["name"], spec, inputs))
    if spec.auth:
        status["apiKeySecret"] = {"name": spec.auth.api_key_secret_ref.name, "key": spec.auth.api_key_secret_ref.key}
    else:
        status.pop("apiKeySecret", None)
    wanted_hash = desired["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    applied_hash = ((current or {}).get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    if applied_hash != wanted_hash:
        run.plan.apply.append(desired)
        if not deployed:
            run.event("Normal", "Deploying", f"RayService {child_name} created")
    return _mirror(run, current, applied_hash == wanted_hash, meta["namespace"], meta["name"], settings)


def _mirror(run: Pass, rayservice: Optional[dict], current_spec: bool, namespace: str, name: str,
            settings: Settings) -> Plan:
    """The endpoint's readiness from its RayService's (KubeRay's Ready condition and Serve application status)."""
    status = run.status
    was_ready = condition_status(run.obj, ConditionType.READY.value) == "True"
    child = (rayservice or {}).get("status") or {}
    generation = ((rayservice or {}).get("metadata") or {}).get("generation")
    generation_seen = generation is None or child.get("observedGeneration") == generation  # KubeRay saw the apply
    ready_condition = next((c for c in child.get("conditions") or [] if c.get("type") == "Ready"), {})
    upgrading = next((c for c in child.get("conditions") or [] if c.get("type") == "UpgradeInProgress"), {})
    app = ((child.get("activeServiceStatus") or {}).get("applicationStatuses") or {}).get(
        application_name(namespace, name)) or {}
    serving = ready_condition.get("status") == "True" or child.get("serviceStatus") == "Running"
    status["replicas"] = {"ready": child.get("numServeEndpoints") or 0}
    models = ", ".join(m["name"] for m in status.get("models") or [])
    if ready_condition.get("reason") == "ValidationFailed":
        return _phase(run, Phase.FAILED if not was_ready else Phase.READY, ready=was_ready and serving,
                      reconciling=False, stalled=True, reason="RayServiceInvalid",
                      message=f"KubeRay refused RayService {rayservice_name(name)}: "
                              f"{summarize(ready_condition.get('message') or '')}")
    if app.get("status") in DEPLOY_FAILED:
        detail = summarize(app.get("message") or "no message from Ray Serve")
        return _phase(run, Phase.READY if serving else Phase.FAILED, ready=serving, reconciling=False,
                      stalled=True, reason="DeployFailed",
                      message=f"Ray Serve could not deploy the endpoint: {detail}. Fix the spec (model, adapters, "
                              "templates) and re-apply" + ("; the previous version still serves" if serving else ""))
    if serving and current_spec and generation_seen and not (upgrading.get("status") == "True"):
        return _phase(run, Phase.READY, ready=True, reconciling=False, stalled=False, reason=Reason.SERVING,
                      message=f"serving {models} at {status['url']}")
    if serving:
        # An upgrade: KubeRay keeps the old version serving until the new one is ready.
        return _phase(run, Phase.READY, ready=True, reconciling=True, stalled=False, reason="Upgrading",
                      message=f"rolling out generation {run.generation}; the previous version serves meanwhile",
                      announce=False)
    if app.get("status") in UNHEALTHY or was_ready:
        detail = summarize(app.get("message") or ready_condition.get("message") or "no endpoint is serving")
        return _phase(run, Phase.WAITING, ready=False, reconciling=True, stalled=False, reason="Unhealthy",
                      message=f"not serving: {detail}")
    detail = summarize(ready_condition.get("message") or "RayService created") if rayservice else "RayService created"
    return _phase(run, Phase.DEPLOYING, ready=False, reconciling=True, stalled=False, reason="Deploying",
                  message=f"deploying {models}: {detail}", announce=False, requeue=settings.reconcile_period_seconds)


def _phase(run: Pass, phase: Phase, *, ready: bool, reconciling: bool, stalled: bool, reason, message: str,
           announce: bool = True, requeue: Optional[float] = None) -> Plan:
    run.set_phase(phase, ready=ready, reconciling=reconciling, stalled=stalled, reason=reason, message=message,
                  announce=announce)
    return run.done(requeue)


def _stalled_invalid(run: Pass, message: str) -> Plan:
    """Invalid specs: nothing new is deployed; a RayService already serving keeps serving the last valid spec."""
    deployed = bool(run.status.get("rayService"))
    run.set_phase(Phase.READY if deployed else Phase.FAILED, ready=deployed and condition_status(
        run.obj, ConditionType.READY.value) == "True", reconciling=False, stalled=True, reason=Reason.INVALID_SPEC,
        message=f"invalid spec: {message}. Fix the spec and re-apply"
                + ("; the last valid version still serves." if deployed else "; nothing was deployed."))
    return run.done()


class ServingKind:
    """What the loop and the wiring need of the kind (its KindInfo); the reconcile is `reconcile_endpoint`."""

    info = INFO
