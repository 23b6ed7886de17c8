"""What real KubeRay refuses, with its wording: ray-operator/controllers/ray/utils/validation.go
(ValidateRayJobMetadata / ValidateRayJobSpec / ValidateRayServiceMetadata / ValidateRayServiceSpec and the parts of
ValidateRayClusterSpec a RayJob or RayService embeds). Pure: an object in, None or (event reason, message) out.

Each function returns the first failure, as KubeRay does; the event reason is KubeRay's K8sEventType
(InvalidRayJobMetadata, InvalidRayJobSpec, InvalidRayServiceMetadata, InvalidRayServiceSpec).
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

import yaml

MAX_RAY_CLUSTER_NAME_LENGTH = 53
MAX_RAY_JOB_NAME_LENGTH = MAX_RAY_CLUSTER_NAME_LENGTH - 6  # room for KubeRay's "-raycluster-xxxxx" style suffixes
MAX_RAY_SERVICE_NAME_LENGTH = MAX_RAY_CLUSTER_NAME_LENGTH - 6
CLUSTER_SELECTOR_KEY = "ray.io/cluster"

# k8s.io/apimachinery/pkg/util/validation: IsDNS1035Label and its RegexError wording.
_DNS1035_FORMAT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_DNS1035 = re.compile(f"^{_DNS1035_FORMAT}$")
_DNS1035_MESSAGE = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
                    f"regex used for validation is '{_DNS1035_FORMAT}')")

Failure = Optional[tuple[str, str]]


def dns1035_label_errors(value: str) -> list[str]:
    errors = []
    if len(value) > 63:
        errors.append("must be no more than 63 characters")
    if not _DNS1035.match(value):
        errors.append(_DNS1035_MESSAGE)
    return errors


def _go_list(items: list[str]) -> str:
    return "[" + " ".join(items) + "]"  # Go's %v of a []string


def _metadata_error(kind: str, metadata: Mapping, max_length: int) -> Optional[str]:
    name = metadata.get("name") or ""
    if len(name) > max_length:
        return f"The {kind} metadata is invalid: {kind} name should be no more than {max_length} characters"
    errors = dns1035_label_errors(name)
    if errors:
        return f"The {kind} metadata is invalid: {kind} name should be a valid DNS1035 label: {_go_list(errors)}"
    return None


def _has_start_resources(params: Mapping) -> bool:
    return any(params.get(key) for key in ("num-cpus", "num-gpus", "memory", "resources"))


def ray_cluster_spec_error(spec: Mapping) -> Optional[str]:
    """The checks of ValidateRayClusterSpec that apply to a cluster the local KubeRay can stand in for."""
    head = spec.get("headGroupSpec") or {}
    if not (((head.get("template") or {}).get("spec") or {}).get("containers")):
        return "headGroupSpec should have at least one container"
    if _has_start_resources(head.get("rayStartParams") or {}) and head.get("resources"):
        return ("resource fields should not be set in both rayStartParams and Resources for Head group; "
                "please use only one")
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    for group in spec.get("workerGroupSpecs") or []:
        name = group.get("groupName", "")
        if not (((group.get("template") or {}).get("spec") or {}).get("containers")):
            return "workerGroupSpec should have at least one container"
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            return f"worker group {name} must set both minReplicas and maxReplicas when autoscaling is disabled"
        if low is not None and low < 0:
            return f"worker group {name} has negative minReplicas {low}"
        if high is not None and high < 0:
            return f"worker group {name} has negative maxReplicas {high}"
        if low is not None and high is not None and low > high:
            return f"worker group {name} has minReplicas {low} greater than maxReplicas {high}"
        if _has_start_resources(group.get("rayStartParams") or {}) and group.get("resources"):
            return (f"resource fields should not be set in both rayStartParams and Resources for {name} group; "
                    "please use only one")
        if group.get("suspend") and autoscaling:
            return f"worker group {name} cannot be suspended with Autoscaler enabled"
    return None


def _deletion_error(spec: Mapping) -> Optional[str]:
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    if not shutdown and (spec.get("ttlSecondsAfterFinished") or 0) > 0:
        return ("The RayJob spec is invalid: a RayJob with shutdownAfterJobFinishes set to false cannot have "
                "TTLSecondsAfterFinished")
    strategy = spec.get("deletionStrategy")
    if strategy is None:
        return None
    legacy = strategy.get("onSuccess") is not None or strategy.get("onFailure") is not None
    rules = bool(strategy.get("deletionRules"))
    if rules and shutdown:
        return ("The RayJob spec is invalid: spec.shutdownAfterJobFinishes and spec.deletionStrategy.deletionRules "
                "are mutually exclusive")
    if rules and legacy:
        return ("The RayJob spec is invalid: Cannot use both legacy onSuccess/onFailure fields and deletionRules "
                "simultaneously")
    if legacy:
        on_success, on_failure = strategy.get("onSuccess"), strategy.get("onFailure")
        if on_success is None or on_failure is None:
            return ("both DeletionStrategy.OnSuccess and DeletionStrategy.OnFailure must be set when using the "
                    "legacy deletion policy fields of DeletionStrategy")
        if on_success.get("policy") is None:
            return ("the DeletionPolicyType field of DeletionStrategy.OnSuccess cannot be unset when "
                    "DeletionStrategy is enabled")
        if on_failure.get("policy") is None:
            return ("the DeletionPolicyType field of DeletionStrategy.OnFailure cannot be unset when "
                    "DeletionStrategy is enabled")
        if shutdown and "DeleteNone" in (on_success["policy"], on_failure["policy"]):
            return ("The RayJob spec is invalid: shutdownAfterJobFinshes is set to 'true' while deletion policy "
                    "is 'DeleteNone'")
        return None
    if not rules:
        return ("The RayJob spec is invalid: DeletionStrategy requires either BOTH onSuccess and onFailure, OR the "
                "deletionRules field (cannot be empty)")
    errors = []
    for index, rule in enumerate(strategy["deletionRules"]):
        condition = rule.get("condition") or {}
        has_job, has_deployment = "jobStatus" in condition, "jobDeploymentStatus" in condition
        if has_job and has_deployment:
            errors.append(f"deletionRules[{index}]: cannot set both JobStatus and JobDeploymentStatus at the same time")
        elif not has_job and not has_deployment:
            errors.append(f"deletionRules[{index}]: exactly one of JobStatus and JobDeploymentStatus must be set")
        elif (condition.get("ttlSeconds") or 0) < 0:
            errors.append(f"deletionRules[{index}]: TTLSeconds must be non-negative")
    return "\n".join(errors) or None  # Go's errors.Join


def _rayjob_spec_error(rayjob: Mapping) -> Optional[str]:
    spec = rayjob.get("spec") or {}
    selector = spec.get("clusterSelector") or {}
    mode = spec.get("submissionMode") or "K8sJobMode"
    backoff = spec.get("backoffLimit")
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        return ("The RayJob spec is invalid: a RayJob with shutdownAfterJobFinishes set to false is not allowed to "
                "be suspended")
    if (spec.get("ttlSecondsAfterFinished") or 0) < 0:
        return "The RayJob spec is invalid: TTLSecondsAfterFinished must be a non-negative integer"
    deletion = _deletion_error(spec)
    if deletion:
        return deletion
    if spec.get("suspend") and selector:
        return "The RayJob spec is invalid: the ClusterSelector mode doesn't support the suspend operation"
    if spec.get("rayClusterSpec") is None and not selector:
        return "The RayJob spec is invalid: one of RayClusterSpec or ClusterSelector must be set"
    if selector:
        if not selector.get(CLUSTER_SELECTOR_KEY):
            return "cluster name in ClusterSelector should not be empty"
        if mode == "SidecarMode":
            return "ClusterSelector is not supported in SidecarMode"
        if backoff is not None and backoff > 0:
            return "The RayJob spec is invalid: BackoffLimit is incompatible with ClusterSelector mode"
    if mode == "InteractiveMode" and backoff is not None and backoff > 0:
        return "The RayJob spec is invalid: BackoffLimit is incompatible with InteractiveMode"
    if mode == "SidecarMode":
        if spec.get("submitterPodTemplate") is not None:
            return "Currently, SidecarMode doesn't support SubmitterPodTemplate"
        if spec.get("submitterConfig") is not None:
            return "Currently, SidecarMode doesn't support SubmitterConfig"
    if spec.get("rayClusterSpec") is not None:
        cluster = ray_cluster_spec_error(spec["rayClusterSpec"])
        if cluster:
            return f"The RayJob spec is invalid: {cluster}"
    runtime_env = spec.get("runtimeEnvYAML") or ""
    try:
        loaded = yaml.safe_load(runtime_env)
    except yaml.YAMLError as error:
        return f"failed to unmarshal RuntimeEnvYAML: {runtime_env}: {error}"
    if loaded is not None and not isinstance(loaded, dict):
        return (f"failed to unmarshal RuntimeEnvYAML: {runtime_env}: cannot unmarshal "
                f"{type(loaded).__name__} into Go value of type map[string]interface {{}}")
    if spec.get("activeDeadlineSeconds") is not None and spec["activeDeadlineSeconds"] <= 0:
        return "The RayJob spec is invalid: activeDeadlineSeconds must be a positive integer"
    if spec.get("preRunningDeadlineSeconds") is not None and spec["preRunningDeadlineSeconds"] <= 0:
        return "The RayJob spec is invalid: preRunningDeadlineSeconds must be a positive integer"
    if backoff is not None and backoff < 0:
        return "The RayJob spec is invalid: backoffLimit must be a positive integer"
    return None


def validate_rayjob(rayjob: Mapping) -> Failure:
    """KubeRay's validateRayJob: (event reason, status message) of the first rule broken, or None."""
    message = _metadata_error("RayJob", rayjob.get("metadata") or {}, MAX_RAY_JOB_NAME_LENGTH)
    if message:
        return "InvalidRayJobMetadata", message
    message = _rayjob_spec_error(rayjob)
    if message:
        return "InvalidRayJobSpec", message
    return None


def validate_rayservice(rayservice: Mapping) -> Failure:
    """KubeRay's validateRayService: (event reason, Ready condition message) of the first rule broken, or None."""
    message = _metadata_error("RayService", rayservice.get("metadata") or {}, MAX_RAY_SERVICE_NAME_LENGTH)
    if message:
        return "InvalidRayServiceMetadata", message
    spec = rayservice.get("spec") or {}
    cluster = ray_cluster_spec_error(spec.get("rayClusterConfig") or {})
    if cluster:
        return "InvalidRayServiceSpec", f"The RayService spec is invalid: {cluster}"
    head_service = ((spec.get("rayClusterConfig") or {}).get("headGroupSpec") or {}).get("headService") or {}
    if (head_service.get("metadata") or {}).get("name"):
        return "InvalidRayServiceSpec", ("The RayService spec is invalid: "
                                         "spec.rayClusterConfig.headGroupSpec.headService.metadata.name should not be set")
    delay = spec.get("rayClusterDeletionDelaySeconds")
    if delay is not None and delay < 0:
        return "InvalidRayServiceSpec", ("The RayService spec is invalid: Spec.RayClusterDeletionDelaySeconds should "
                                         f"be a non-negative integer, got {delay}")
    return None
