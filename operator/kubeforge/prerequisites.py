"""What the operator cannot work without, checked up front with a message that names the missing piece.

Without these checks a missing KubeRay CRD is a 404 on every pass, a missing bucket or bad credentials an
exception on every pass while the resource says "launching", and a missing workload Secret a workload failure
far from its cause. Two halves:
- I/O: `missing_kuberay_kinds`, `object_store_problem`, `workload_secret_exists` observe the cluster and the
  object store (the operator's own credentials), never raising for the condition they look for;
- pure: `workload_prerequisites` turns those facts into the unmet prerequisites of one resource's namespace,
  each with the `Stalled` reason the status contract uses. `cluster_prerequisites` runs the cluster-wide
  checks at operator start-up (kubeforge.main).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from kubeforge.settings import Settings

log = logging.getLogger(__name__)

KUBERAY_GROUP, KUBERAY_VERSION = "ray.io", "v1"
KUBERAY_KINDS = {"rayjobs": "RayJob", "rayservices": "RayService"}
KUBERAY_INSTALL = ("install the KubeRay operator (helm install kuberay-operator kuberay/kuberay-operator "
                   "from https://ray-project.github.io/kuberay-helm/, version 1.3 or later)")

KUBERAY_MISSING = "KubeRayMissing"
OBJECT_STORE_UNAVAILABLE = "ObjectStoreUnavailable"
MISSING_SECRET = "MissingSecret"
MLFLOW_UNAVAILABLE = "MLflowUnavailable"


@dataclass(frozen=True)
class Unmet:
    """One unmet prerequisite: the Stalled condition's reason and its one-sentence message."""

    reason: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ClusterFacts:
    """Cluster-wide observations, made once (at start-up, then on the operator's own schedule), not per pass."""

    missing_kuberay_kinds: tuple[str, ...] = ()
    """Plurals of KubeRay kinds the API server does not serve (ray.io/v1)."""
    object_store_problem: Optional[str] = None
    """Why the bucket cannot be used with the operator's credentials; None when it can."""


def workload_prerequisites(namespace: str, settings: Settings, cluster: ClusterFacts,
                           workload_secret_present: Optional[bool], uses: frozenset[str] = frozenset(KUBERAY_KINDS),
                           bucket: Optional[str] = None) -> list[Unmet]:
    """What keeps a resource in `namespace` from running, most fundamental first; [] when nothing does.

    `uses`: the KubeRay plurals this kind creates (rayjobs for batch kinds, rayservices for serving);
    `bucket`: the resource's own spec.storage.bucket when it overrides settings.bucket (its problem is then
    the caller's to observe; `cluster.object_store_problem` is about settings.bucket);
    `workload_secret_present`: None when not looked up (the settings do not require the Secret)."""
    unmet: list[Unmet] = []
    missing = sorted(set(cluster.missing_kuberay_kinds) & set(uses))
    if missing:
        kinds = " and ".join(f"{KUBERAY_KINDS.get(p, p)} ({p}.{KUBERAY_GROUP}/{KUBERAY_VERSION})" for p in missing)
        unmet.append(Unmet(KUBERAY_MISSING, f"the cluster does not serve {kinds}: {KUBERAY_INSTALL}"))
    if cluster.object_store_problem and (bucket is None or bucket == settings.bucket):
        unmet.append(Unmet(OBJECT_STORE_UNAVAILABLE, cluster.object_store_problem))
    if settings.workload_env_secret_required and workload_secret_present is False:
        unmet.append(Unmet(MISSING_SECRET, (
            f"Secret {namespace}/{settings.workload_env_secret} does not exist: Ray pods load the object-store "
            f"credentials (and MLFLOW_TRACKING_URI) from it; create it in namespace {namespace} "
            "(keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...), or set the Helm value "
            "settings.workloadEnvSecretRequired=false")))
    return unmet


# ---------------------------------------------------------------------------------------------- observations

def missing_kuberay_kinds(api_client: Any) -> tuple[str, ...]:
    """KubeRay plurals the API server does not serve, from discovery (GET /apis/ray.io/v1)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        listed = client.CustomObjectsApi(api_client).get_api_resources(KUBERAY_GROUP, KUBERAY_VERSION)
    except ApiException as error:
        if error.status == 404:
            return tuple(sorted(KUBERAY_KINDS))
        raise
    served = {resource.name for resource in (listed.resources if listed else None) or []}
    return tuple(sorted(set(KUBERAY_KINDS) - served))


def object_store_problem(settings: Settings, s3_client: Any = None) -> Optional[str]:
    """Why settings.bucket cannot be used with the operator's credentials (HEAD bucket); None when it can."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    # Bounded: an unreachable endpoint must give its message in seconds, not after boto3's minute of retries.
    s3 = s3_client or boto3.client("s3", endpoint_url=settings.s3_endpoint_url, config=Config(
        connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}))
    endpoint = settings.s3_endpoint_url or getattr(getattr(s3, "meta", None), "endpoint_url", None) or "AWS S3"
    where = f"bucket {settings.bucket!r} at {endpoint}"
    try:
        s3.head_bucket(Bucket=settings.bucket)
        return None
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            return (f"{where} does not exist: create it, or point the Helm value settings.bucket (or the "
                    "resource's spec.storage.bucket) at an existing one")
        if code in ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return (f"{where} refuses the operator's credentials ({code}): check the Secret named by the Helm "
                    "value credentials.existingSecret (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
        return f"{where} answered {code or 'an error'}: {error}"
    except BotoCoreError as error:
        return (f"{where} is unreachable ({error}): check the Helm value settings.s3EndpointUrl and the "
                "network path from the operator's namespace")


def workload_secret_exists(core_api: Any, namespace: str, settings: Settings) -> bool:
    """Whether the workload Secret exists in `namespace` (a GET of that one named Secret)."""
    from kubernetes.client.exceptions import ApiException

    try:
        core_api.read_namespaced_secret(settings.workload_env_secret, namespace)
        return True
    except ApiException as error:
        if error.status == 404:
            return False
        raise


def mlflow_problem(settings: Settings, timeout: float = 5.0) -> Optional[str]:
    """Why the configured MLflow tracking server cannot be reached (GET /health); None when it answers or when
    none is configured (workloads then log to a file in the pod, lost with it: a start-up warning says so)."""
    import urllib.error
    import urllib.request

    uri = settings.mlflow_tracking_uri
    if not uri or not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as answer:
            return None if answer.status < 400 else f"MLflow at {uri} answered HTTP {answer.status} on /health"
    except (urllib.error.URLError, OSError, ValueError) as error:
        return (f"MLflow at {uri} is unreachable ({getattr(error, 'reason', error)}): check the Helm value "
                "settings.mlflowTrackingUri")


@dataclass
class StartupReport:
    facts: ClusterFacts = field(default_factory=ClusterFacts)
    unmet: list[Unmet] = field(default_factory=list)

    def as_probe(self) -> dict:
        """For kopf's health endpoint: informative, never failing it (a failed liveness would restart us)."""
        return {u.reason: u.message for u in self.unmet} or {"ok": True}


def cluster_prerequisites(settings: Settings, api_client: Any, s3_client: Any = None) -> StartupReport:
    """The cluster-wide checks, each failure logged as one ERROR line naming what to do; never raises."""
    report = StartupReport()
    missing: tuple[str, ...] = ()
    problem: Optional[str] = None
    try:
        missing = missing_kuberay_kinds(api_client)
    except Exception as error:  # noqa: BLE001 - a check that cannot run is reported, not fatal
        log.error("prerequisite check: KubeRay discovery failed (%s); retried on each resource", error)
    try:
        problem = object_store_problem(settings, s3_client)
    except Exception as error:  # noqa: BLE001
        problem = f"bucket {settings.bucket!r}: the check itself failed ({error})"
    report.facts = ClusterFacts(missing_kuberay_kinds=missing, object_store_problem=problem)
    report.unmet = workload_prerequisites("", settings.model_copy(update={"workload_env_secret_required": False}),
                                          report.facts, None)
    unreachable = mlflow_problem(settings)
    if unreachable:
        report.unmet.append(Unmet(MLFLOW_UNAVAILABLE, unreachable))
    if not settings.mlflow_tracking_uri:
        log.warning("prerequisite: no MLflow configured (Helm value settings.mlflowTrackingUri, or "
                    "MLFLOW_TRACKING_URI in the workload Secret): workloads log runs inside their pods, lost with them")
    for unmet in report.unmet:
        log.error("prerequisite missing (%s): %s", unmet.reason, unmet.message)
    if not report.unmet:
        log.info("prerequisites: KubeRay %s served; bucket %r reachable", "/".join(sorted(KUBERAY_KINDS)),
                 settings.bucket)
    return report


def doctor(settings: Settings, api_client: Any, namespace: Optional[str],
           s3_client: Any = None) -> list[tuple[str, Optional[str]]]:
    """`kubeforge doctor`: every check by name, with its problem or None when it passes."""
    from kubernetes import client

    checks: list[tuple[str, Optional[str]]] = []
    try:
        missing = missing_kuberay_kinds(api_client)
        problem = str(workload_prerequisites("", settings, ClusterFacts(missing_kuberay_kinds=missing), None)[0]) \
            if missing else None
    except Exception as error:  # noqa: BLE001 - one failing check must not hide the others
        problem = f"discovery of {KUBERAY_GROUP}/{KUBERAY_VERSION} failed: {error}"
    checks.append(("KubeRay CRDs (rayjobs, rayservices)", problem))
    checks.append((f"object store bucket {settings.bucket!r}", object_store_problem(settings, s3_client)))
    if settings.mlflow_tracking_uri:
        checks.append((f"MLflow {settings.mlflow_tracking_uri}", mlflow_problem(settings)))
    if namespace and settings.workload_env_secret_required:
        try:
            present = workload_secret_exists(client.CoreV1Api(api_client), namespace, settings)
            unmet = workload_prerequisites(namespace, settings, ClusterFacts(), present)
            problem = str(unmet[0]) if unmet else None
        except Exception as error:  # noqa: BLE001
            problem = f"reading Secret {namespace}/{settings.workload_env_secret} failed: {error}"
        checks.append((f"workload Secret {namespace}/{settings.workload_env_secret}", problem))
    return checks
