"""`kubeforge batch`: run a ServingEndpoint's prompt template over a table as a RayJob, and follow it.

Retries belong to the cluster where they can: on a cluster of its own the RayJob carries backoffLimit = --retries,
so KubeRay reruns a failed run (on a fresh cluster) whether or not anyone follows it, also after --detach. KubeRay
refuses backoffLimit with a clusterSelector; there the RayJob has backoffLimit 0 and, while the CLI follows the run,
it resubmits a failed attempt as a new RayJob (`<endpoint>-b<id>-<attempt>`) up to --retries times. Either way the
workload skips every block whose shard an earlier run wrote, so a retry redoes at most the blocks in flight.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from kubeforge.api.batchinference import BatchInference, BatchProgress
from kubeforge.api.meta import GROUP, VERSION
from kubeforge.cluster import RAY_GROUP, RAY_VERSION, RAYJOBS
from kubeforge.launch.batchjob import LABEL_BATCH, batch_id, build_batch_rayjob, endpoint_prefix
from kubeforge.launch.names import LABEL_ATTEMPT
from kubeforge.settings import Settings
from kubeforge.storage.layout import parse_s3_uri

SERVINGENDPOINTS = "servingendpoints"
POLL_SECONDS = 1.0
FAILED, COMPLETE = "Failed", "Complete"


class BatchError(Exception):
    """A one-sentence problem for the user (the CLI prints it and exits 1)."""


@dataclass
class Submitted:
    request: BatchInference
    rayjob: str
    attempt: int
    kuberay_retries: int = 0
    """The RayJob's backoffLimit: KubeRay's reruns of it, which the CLI then only reports."""


def endpoint_name(resource: str) -> str:
    kind, _, name = resource.rpartition("/")
    if kind not in ("", "se", "servingendpoint", "servingendpoints") or not name:
        raise BatchError(f"{resource}: expected se/NAME (a ServingEndpoint)")
    return name


def prepare(endpoint: dict, template: str, model: Optional[str], input_uri: str, output_uri: str, column: str,
            id_column: Optional[str], block_rows: int):
    """The run's request and the endpoint's resolved Serve config; BatchError when the endpoint cannot run it."""
    from pydantic import ValidationError

    from kubeforge.api.servingendpoint import ServingEndpointSpec
    from kubeforge.controllers.serving import app_config

    meta = endpoint["metadata"]
    where = f"ServingEndpoint {meta['namespace']}/{meta['name']}"
    inputs = (endpoint.get("status") or {}).get("inputs") or {}
    if not inputs.get("model"):
        raise BatchError(f"{where} has not resolved its model yet (status.inputs is empty): wait until it is Ready "
                         "or Deploying")
    for flag, uri in (("--input", input_uri), ("--output", output_uri)):
        try:
            parse_s3_uri(uri)
        except ValueError:
            raise BatchError(f"{flag} {uri}: use an s3://bucket/key location") from None
    try:
        spec = ServingEndpointSpec.model_validate(endpoint.get("spec") or {})
    except ValidationError as error:
        raise BatchError(f"{where} has an invalid spec ({error.errors()[0]['msg']}): fix it first") from None
    app = app_config(endpoint, spec, inputs)
    if template not in {t.name for t in app.templates}:
        raise BatchError(f"--template {template}: {where} has no such promptTemplates entry; it has "
                         f"{sorted(t.name for t in app.templates) or 'none'}")
    model = model or app.base.name
    if model not in {app.base.name, *(a.name for a in app.adapters)}:
        raise BatchError(f"--model {model}: {where} serves {app.base.name} and adapters "
                         f"{sorted(a.name for a in app.adapters)}; pick one of those")
    request = BatchInference(id=batch_id(endpoint, template, model, input_uri, output_uri), template=template,
                             model=model, input=input_uri, output=output_uri.rstrip("/") + "/", column=column,
                             id_column=id_column, block_rows=block_rows)
    return request, app


class BatchRun:
    """Submits and follows one run through the Kubernetes API (`api`: CustomObjectsApi) and the object store."""

    def __init__(self, api, store, settings: Settings, namespace: str, echo: Callable[[str], None] = print):
        self.api, self.store, self.settings, self.namespace, self.echo = api, store, settings, namespace, echo

    def endpoint(self, name: str) -> dict:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, SERVINGENDPOINTS, name)
        except ApiException as error:
            if error.status == 404:
                raise BatchError(f"ServingEndpoint {self.namespace}/{name} does not exist: apply it first") from None
            raise

    def attempts(self, request: BatchInference) -> dict[int, dict]:
        found = self.api.list_namespaced_custom_object(RAY_GROUP, RAY_VERSION, self.namespace, RAYJOBS,
                                                       label_selector=f"{LABEL_BATCH}={request.id}")["items"]
        return {int(job["metadata"]["labels"][LABEL_ATTEMPT]): job for job in found}

    def submit(self, endpoint: dict, request: BatchInference, app, retries: int = 0) -> Submitted:
        """A new attempt, numbered after every earlier attempt of the same run (their RayJobs may still exist)."""
        attempt = max(self.attempts(request), default=0) + 1
        body = build_batch_rayjob(endpoint, request, app, attempt, self.settings, retries)
        self.api.create_namespaced_custom_object(RAY_GROUP, RAY_VERSION, self.namespace, RAYJOBS, body)
        limit = body["spec"]["backoffLimit"]
        self.echo(f"submitted RayJob {body['metadata']['name']} (batch {request.id}, attempt {attempt}"
                  + (f", KubeRay retries it up to {limit} times)" if limit else ")"))
        return Submitted(request, body["metadata"]["name"], attempt, limit)

    def progress(self, endpoint: dict, request: BatchInference) -> Optional[BatchProgress]:
        from kubeforge.api.servingendpoint import ServingEndpointSpec

        prefix = endpoint_prefix(endpoint, ServingEndpointSpec.model_validate(endpoint.get("spec") or {}),
                                 self.settings)
        raw = self.store.get(prefix.bucket, prefix.batch_progress_key(request.id))
        return BatchProgress.model_validate_json(raw) if raw else None

    def follow(self, endpoint: dict, submitted: Submitted, app, retries: int, timeout: float) -> int:
        """Print a line per progress update and per retry; unless KubeRay retries the RayJob itself, resubmit a
        failed attempt up to `retries` times. The exit code."""
        deadline, last_line, retried, failures_seen = time.monotonic() + timeout, None, 0, 0
        while time.monotonic() < deadline:
            progress = self.progress(endpoint, submitted.request)
            if progress is not None and progress.attempt >= submitted.attempt:
                line = (f"rows {progress.rows_done}/{progress.rows_total} done (attempt {progress.attempt}, "
                        f"{progress.phase}, {progress.rows_skipped} already written)")
                if line != last_line:
                    self.echo(line)
                    last_line = line
            status = self.api.get_namespaced_custom_object(RAY_GROUP, RAY_VERSION, self.namespace, RAYJOBS,
                                                           submitted.rayjob).get("status") or {}
            state = status.get("jobDeploymentStatus")
            failures = status.get("failed") or 0
            if state not in (FAILED, COMPLETE) and failures > failures_seen:
                failures_seen = failures  # KubeRay counted a failure and reruns the job (backoffLimit)
                why = status.get("message") or status.get("reason") or "its reason is cleared once the rerun starts"
                self.echo(f"RayJob {submitted.rayjob} failed ({why}); retry {failures} of "
                          f"{submitted.kuberay_retries}, by KubeRay")
            if state == COMPLETE and status.get("jobStatus") == "SUCCEEDED":
                progress = self.progress(endpoint, submitted.request)
                self.echo(f"done: {progress.rows_done if progress else '?'}/{progress.rows_total if progress else '?'}"
                          f" rows, results under {submitted.request.output}")
                return 0
            if state in (FAILED, COMPLETE):
                why = status.get("message") or status.get("reason") or status.get("jobStatus") or state
                if submitted.kuberay_retries or retried >= retries:
                    self.echo(f"RayJob {submitted.rayjob} failed ({why}); no retries left (--retries {retries})")
                    return 1
                retried += 1
                self.echo(f"RayJob {submitted.rayjob} failed ({why}); retry {retried} of {retries}")
                submitted = self.submit(endpoint, submitted.request, app)
            time.sleep(POLL_SECONDS)
        self.echo(f"gave up following RayJob {submitted.rayjob} after {timeout:.0f}s; it keeps running")
        return 1
