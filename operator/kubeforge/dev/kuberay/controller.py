"""The local KubeRay controller: RayJob / RayService objects in, Ray jobs and Serve applications on the local head out.

A level-triggered loop (list every ~1 s, reconcile each object) rather than an edge-triggered watch: the state that
matters lives in the objects' status (jobId recorded before submission) and on the Ray head, so a restarted
controller simply picks up where it was. Status is written only when it changes.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import yaml

from kubeforge.dev.kuberay import processes, scheduling
from kubeforge.dev.kuberay.env import EnvError, container_env, head_container
from kubeforge.dev.kuberay.status import (FAILED, INITIALIZING, JOB_RUNNING, RETRYING, RUNNING, SUBMISSION_FAILED,
                                          SUSPENDED, TERMINAL_DEPLOYMENT, TERMINAL_JOB, VALIDATION_FAILED,
                                          deadline_exceeded, deletion_due, format_time, parse_time,
                                          pre_running_deadline_exceeded, rayjob_status, rayservice_status,
                                          reset_for_retry, retrying_if_eligible)
from kubeforge.dev.kuberay.validation import validate_rayjob, validate_rayservice

log = logging.getLogger("kubeforge.dev.kuberay")
GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
SERVICES = "rayservices"
FINALIZER = "ray.io/rayjob-finalizer"
CHAOS_ANNOTATION = "chaos.kubeforge.dev/action"
CHAOS_LAST_ANNOTATION = "chaos.kubeforge.dev/last"
SERVE_URL_ANNOTATION = "kubeforge.dev/local-serve-url"
SERVICE_ALIASES_ENV = "KUBEFORGE_SERVICE_ALIASES"
"""JSON {"<host>:<port>": "<host>:<port>"} in every local job's env: in-cluster Service addresses the sandbox
serves locally (kubeforge_workloads.common.endpoints rewrites URLs with it; unset on a real cluster)."""
JOB_MARKER_ENV = processes.JOB_MARKER_ENV
SUBMISSION_RETRY_SECONDS = 120
# On a Namespace: RayJobs in it stay Initializing this many seconds after their startTime, as if their Ray pods
# were waiting for nodes (a test knob for start-timeout handling; read before every submission attempt).
START_DELAY_ANNOTATION = "kuberay.kubeforge.dev/hold-start-seconds"
STALL_FILE_ENV = "KUBEFORGE_CHAOS_STALL_FILE"
OOM_ALLOCATION_BYTES = 4 * 2**30  # what chaos `oom` asks for when the job's containers have no memory limit
MEMORY_FILE_ENV = "KUBEFORGE_CHAOS_MEMORY_FILE"
# KubeRay's: what the API server's request accounting and field managers name this controller by.
USER_AGENT = "kuberay-operator/local-kubeforge"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def now() -> str:
    return format_time(utcnow())


def job_processes(job_id: str) -> list:
    """Driver and worker processes of a job carrying the job's marker env var (kept for callers of the old API)."""
    import psutil

    return [psutil.Process(pid) for pid in processes.marker_pids(job_id) if psutil.pid_exists(pid)]


def default_job_id(rayjob: dict) -> str:
    meta = rayjob["metadata"]
    return rayjob.get("spec", {}).get("jobId") or f"{meta['name']}-{meta['uid'][:8]}"


def _is_not_found(error: Exception) -> bool:
    text = str(error).lower()
    return "does not exist" in text or "404" in text or "not found" in text


class LocalKubeRay:
    """With `status_only` (benchmarks of the operator at scale, never the sandbox) no Ray job runs: each RayJob is
    validated, scheduled and recorded exactly as otherwise, then reported Running (jobStatus RUNNING) until
    something else writes its end; deletion and suspension stop nothing, chaos is ignored, RayServices are left
    alone."""

    def __init__(self, api, core, jobs, dashboard_url: str, serve_port: int = 8000,
                 clock: Callable[[], datetime] = utcnow, auth_header: Optional[str] = None,
                 node: Optional[scheduling.Node] = None, chaos_dir: Optional[Path] = None, status_only: bool = False):
        self.api, self.core, self.jobs, self.dashboard_url = api, core, jobs, dashboard_url.rstrip("/")
        self.status_only = status_only
        self.serve_port, self.clock, self.auth_header = serve_port, clock, auth_header
        self.node = node or scheduling.Node.local()
        self._oom_killed: dict[str, str] = {}  # submission id -> the container the memory monitor killed
        # Files the workload's chaos points watch (stall, memory); one set per Ray submission id.
        self.chaos_dir = Path(chaos_dir) if chaos_dir else Path(tempfile.gettempdir()) / f"kubeforge-chaos-{os.getuid()}"
        self._applied_serve: Optional[str] = None

    def _now(self) -> str:
        return format_time(self.clock())

    # ---- API helpers ------------------------------------------------------------------------------------------
    def _patch_status(self, obj: dict, status: dict, plural: str = PLURAL) -> None:
        status = {k: v for k, v in status.items() if v is not None}
        if plural == PLURAL:  # as KubeRay, right before every RayJob status update
            status = retrying_if_eligible(obj.get("spec") or {}, obj.get("status") or {}, status)
        if status == (obj.get("status") or {}):
            return
        meta = obj["metadata"]
        # Merge patch: keys dropped from the status must be sent as null to be removed.
        body = {**{k: None for k in (obj.get("status") or {}) if k not in status}, **status}
        self.api.patch_namespaced_custom_object_status(GROUP, VERSION, meta["namespace"], plural, meta["name"],
                                                       {"status": body})
        obj["status"] = status

    def _patch_meta(self, obj: dict, metadata: dict, plural: str = PLURAL) -> None:
        meta = obj["metadata"]
        self.api.patch_namespaced_custom_object(GROUP, VERSION, meta["namespace"], plural, meta["name"],
                                                {"metadata": metadata})

    def _read(self, kind: str, namespace: str, name: str) -> Optional[dict]:
        from kubernetes.client.exceptions import ApiException

        try:
            if kind == "secret":
                secret = self.core.read_namespaced_secret(name, namespace)
                return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
            return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def container_env(self, obj: dict) -> dict[str, str]:
        """Env of the head container (env + envFrom, with Secret/ConfigMap references resolved)."""
        return container_env(head_container(obj.get("spec") or {}), obj["metadata"]["namespace"],
                             lambda ns, n: self._read("secret", ns, n), lambda ns, n: self._read("configmap", ns, n))

    def runtime_env(self, rayjob: dict, job_id: str) -> dict:
        runtime_env = yaml.safe_load(rayjob["spec"].get("runtimeEnvYAML") or "{}") or {}
        if not isinstance(runtime_env, dict):
            raise ValueError("spec.runtimeEnvYAML must be a YAML mapping")
        env_vars = {**self.container_env(rayjob), **(runtime_env.get("env_vars") or {})}
        runtime_env["env_vars"] = {k: str(v) for k, v in _local_env(env_vars).items()}
        runtime_env["env_vars"][JOB_MARKER_ENV] = job_id
        runtime_env["env_vars"][SERVICE_ALIASES_ENV] = json.dumps(self.service_aliases(), sort_keys=True)
        runtime_env["env_vars"][STALL_FILE_ENV] = str(self.stall_file(job_id))
        runtime_env["env_vars"][MEMORY_FILE_ENV] = str(self.memory_file(job_id))
        return runtime_env

    def stall_file(self, job_id: str) -> Path:
        """While this file exists the job's training loop blocks at its next chaos point (see chaos `stall`)."""
        return self.chaos_dir / f"{job_id}.stall"

    def memory_file(self, job_id: str) -> Path:
        """Bytes the job's training loop should hold (see chaos `oom`), as a decimal number in the file."""
        return self.chaos_dir / f"{job_id}.memory"

    # ---- the loop ---------------------------------------------------------------------------------------------
    def sync_all(self) -> None:
        listed = self.api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        for rayjob in listed.get("items", []):
            try:
                self.sync(rayjob)
            except Exception as error:  # one odd RayJob must not stop the others
                log.exception("sync of RayJob %s/%s failed", rayjob["metadata"].get("namespace"),
                              rayjob["metadata"].get("name"))
                self._fail_unexpected(rayjob, error)
        if self.status_only:
            return  # Serve applications need a Ray head
        try:
            self.sync_services()
        except Exception:
            log.exception("RayService pass failed")

    def _fail_unexpected(self, rayjob: dict, error: Exception) -> None:
        from kubernetes.client.exceptions import ApiException

        status = rayjob.get("status") or {}
        if isinstance(error, (ApiException, OSError)) or not isinstance(error, (KeyError, TypeError, ValueError,
                                                                                 AttributeError, IndexError)):
            return  # API / Ray head trouble (connection refused, HTTP errors) is retried next pass
        if status.get("jobDeploymentStatus") in TERMINAL_DEPLOYMENT:
            return
        if status.get("jobDeploymentStatus") == INITIALIZING:
            return  # submission errors are handled (with retries) in _submit
        try:
            self._patch_status(rayjob, {**status, "jobDeploymentStatus": FAILED, "reason": "ValidationFailed",
                                        "endTime": self._now(), "message": f"local KubeRay cannot run this RayJob: {error}"})
        except Exception:
            log.exception("could not record the failure")

    # ---- RayJob -----------------------------------------------------------------------------------------------
    def sync(self, rayjob: dict) -> None:
        meta = rayjob["metadata"]
        status = dict(rayjob.get("status") or {})
        job_id = status.get("jobId")
        if meta.get("deletionTimestamp"):
            if job_id and FINALIZER in (meta.get("finalizers") or []):
                self._stop(job_id)
            if FINALIZER in (meta.get("finalizers") or []):
                finalizers = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
                self._patch_meta(rayjob, {"finalizers": finalizers or None, "resourceVersion": meta["resourceVersion"]})
            return
        deployment = status.get("jobDeploymentStatus") or ""
        if deployment == VALIDATION_FAILED:
            return  # KubeRay has no transition out of ValidationFailed: the RayJob must be re-created
        if deployment not in TERMINAL_DEPLOYMENT:
            refused = validate_rayjob(rayjob)
            if refused is not None:
                self._refuse(rayjob, status, *refused)
                return
        if FINALIZER not in (meta.get("finalizers") or []):
            self._patch_meta(rayjob, {"finalizers": [*(meta.get("finalizers") or []), FINALIZER],
                                      "resourceVersion": meta["resourceVersion"]})
        spec = rayjob.get("spec") or {}
        if deployment == RETRYING:
            if job_id:  # KubeRay deletes the job's RayCluster, and the Ray job with it
                self._stop(job_id)
            self._patch_status(rayjob, reset_for_retry(status))
            return
        if deployment in TERMINAL_DEPLOYMENT:
            self._after_finish(rayjob)
            self._clear_chaos(rayjob)
            return
        if spec.get("suspend"):
            if deployment != SUSPENDED:
                if job_id:
                    self._stop(job_id)
                kept = {k: status[k] for k in ("failed", "succeeded", "startTime") if k in status}
                self._patch_status(rayjob, {**kept, "jobDeploymentStatus": SUSPENDED,
                                            "observedGeneration": meta.get("generation")})
            return
        if not job_id or deployment in ("", SUSPENDED):
            if not spec.get("entrypoint"):
                self._patch_status(rayjob, {**status, "jobDeploymentStatus": FAILED, "reason": "ValidationFailed",
                                            "endTime": self._now(), "observedGeneration": meta.get("generation"),
                                            "message": "spec.entrypoint is required (local KubeRay submits in "
                                                       "K8sJobMode/HTTPMode only)"})
                return
            # Record the ids before submitting, so a restart never submits twice.
            job_id = self._fresh_job_id(rayjob, resumed=deployment == SUSPENDED or bool(status.get("failed")))
            self._patch_status(rayjob, {**status, "jobId": job_id, "rayClusterName": self.cluster_name(rayjob),
                                        "dashboardURL": self.dashboard_url.split("://", 1)[-1] or None,
                                        "jobDeploymentStatus": INITIALIZING, "startTime": self._now(),
                                        "observedGeneration": meta.get("generation")})
            status = rayjob["status"]
            deployment = INITIALIZING
        action = (meta.get("annotations") or {}).get(CHAOS_ANNOTATION)
        if action and self.status_only:
            self._patch_meta(rayjob, {"annotations": {
                CHAOS_ANNOTATION: None, CHAOS_LAST_ANNOTATION: "ignored: status-only local KubeRay runs no Ray job"}})
            return
        if action and deployment != INITIALIZING:
            self._chaos(rayjob, status, job_id, action)
            return
        if deployment == INITIALIZING:
            if self._start_held(rayjob, status):
                return
            self._submit(rayjob, rayjob.get("status") or status, job_id)
            return
        self._observe(rayjob, status, job_id)

    def _refuse(self, rayjob: dict, status: dict, event_reason: str, message: str) -> None:
        """KubeRay's answer to a RayJob it refuses: a Warning event and jobDeploymentStatus ValidationFailed."""
        meta = rayjob["metadata"]
        log.warning("RayJob %s/%s refused: %s", meta["namespace"], meta["name"], message)
        self.record_event(rayjob, "RayJob", "Warning", event_reason, f"{meta['namespace']}/{meta['name']}: {message}",
                          action="Validate")
        self._patch_status(rayjob, {**status, "jobDeploymentStatus": VALIDATION_FAILED, "reason": VALIDATION_FAILED,
                                    "message": message})

    def record_event(self, obj: dict, kind: str, type_: str, reason: str, message: str, action: str = "",
                     component: str = "kuberay-operator") -> None:
        """A core v1 Event about `obj`, as the controller's (or, for pod facts, the kubelet's) recorder writes."""
        from kubernetes import client

        meta = obj["metadata"]
        stamp = self.clock()
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(api_version=obj.get("apiVersion", f"{GROUP}/{VERSION}"),
                                                     kind=kind, name=meta["name"], namespace=meta["namespace"],
                                                     uid=meta.get("uid"),
                                                     resource_version=meta.get("resourceVersion")),
            type=type_, reason=reason, message=message[:1024], action=action or None,
            source=client.V1EventSource(component=component), reporting_component=component,
            reporting_instance=component, first_timestamp=stamp, last_timestamp=stamp, event_time=None, count=1)
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except Exception as error:  # an event is best effort, as for client-go's recorder
            log.info("event %s on %s/%s not recorded: %s", reason, meta["namespace"], meta["name"], error)

    def _start_held(self, rayjob: dict, status: dict) -> bool:
        """True while the job's Ray pods could not have started yet: they do not fit the node (as pods stay
        Pending, unschedulable), or its namespace asks to hold starts. The RayJob stays Initializing meanwhile."""
        meta = rayjob["metadata"]
        unschedulable = scheduling.unschedulable_message(rayjob.get("spec") or {}, self.node)
        held_for = self._namespace_start_delay(meta["namespace"])
        started = parse_time(status.get("startTime")) or self.clock()
        waiting = held_for is not None and (self.clock() - started).total_seconds() < held_for
        if unschedulable is None and not waiting:
            if status.get("rayClusterStatus"):
                self._patch_status(rayjob, {k: v for k, v in status.items() if k != "rayClusterStatus"})
            return False
        expired = deadline_exceeded(rayjob, self.clock()) or pre_running_deadline_exceeded(rayjob, self.clock())
        if expired is not None:
            self._patch_status(rayjob, expired)
            return True
        cluster = scheduling.pending_cluster_status(status.get("startTime") or self._now())
        if unschedulable and not status.get("rayClusterStatus"):
            # On a cluster this event is about the Pending head/worker pod; here there is no pod to name.
            self.record_event(rayjob, "RayJob", "Warning", "FailedScheduling", unschedulable,
                              component="default-scheduler")
        self._patch_status(rayjob, {**status, "rayClusterStatus": cluster})
        return True

    def _namespace_start_delay(self, namespace: str) -> Optional[float]:
        from kubernetes.client.exceptions import ApiException

        try:
            annotations = self.core.read_namespace(namespace).metadata.annotations or {}
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        value = annotations.get(START_DELAY_ANNOTATION)
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            log.warning("namespace %s: annotation %s=%r is not a number of seconds; ignored", namespace,
                        START_DELAY_ANNOTATION, value)
            return None

    def cluster_name(self, obj: dict) -> str:
        selector = (obj.get("spec") or {}).get("clusterSelector") or {}
        return selector.get("ray.io/cluster") or f"{obj['metadata']['name']}-raycluster"

    def _fresh_job_id(self, rayjob: dict, resumed: bool) -> str:
        """spec.jobId or `<name>-<uid prefix>`; after a suspend or a failure retried under backoffLimit, Ray still
        holds the old submission id, so the first free `<id>-<n>` (KubeRay gets a fresh cluster instead)."""
        base = default_job_id(rayjob)
        if not resumed:
            return base  # an existing Ray job with this id (spec.jobId reused) is adopted by _submit
        for n in range(1, 1000):
            candidate = f"{base}-{n}"
            if self._job_info(candidate) is None:
                return candidate
        return f"{base}-{int(time.time())}"

    def _submit(self, rayjob: dict, status: dict, job_id: str) -> None:
        if self.status_only:
            # What KubeRay reports once the Ray job runs, without running one (KubeRay passes PENDING first).
            self._patch_status(rayjob, {**{k: v for k, v in status.items() if k != "message"},
                                        "jobDeploymentStatus": RUNNING, "jobStatus": JOB_RUNNING,
                                        "rayJobInfo": {"startTime": self._now()}})
            return
        try:
            existing = self._job_info(job_id)
            if existing is None:
                kwargs = {}
                spec = rayjob["spec"]
                if spec.get("entrypointNumCpus"):
                    kwargs["entrypoint_num_cpus"] = spec["entrypointNumCpus"]
                if spec.get("metadata"):
                    kwargs["metadata"] = {str(k): str(v) for k, v in spec["metadata"].items()}
                self.jobs.submit_job(entrypoint=spec["entrypoint"], submission_id=job_id,
                                     runtime_env=self.runtime_env(rayjob, job_id), **kwargs)
                log.info("submitted %s for RayJob %s/%s", job_id, rayjob["metadata"]["namespace"],
                         rayjob["metadata"]["name"])
            else:
                log.info("adopted existing Ray job %s", job_id)
        except (EnvError, ValueError, yaml.YAMLError) as error:
            # The container would never start (CreateContainerConfigError) / the spec cannot be submitted.
            self._patch_status(rayjob, {**status, "jobDeploymentStatus": FAILED, "reason": SUBMISSION_FAILED,
                                        "endTime": self._now(), "failed": (status.get("failed") or 0) + 1,
                                        "message": f"failed to submit the job: {error}"})
            return
        except Exception as error:
            log.warning("submission of %s failed: %s", job_id, error)
            started = parse_time(status.get("startTime")) or self.clock()
            deadline = rayjob["spec"].get("preRunningDeadlineSeconds") or SUBMISSION_RETRY_SECONDS
            if (self.clock() - started).total_seconds() < deadline:
                # Like KubeRay's submitter, keep trying while the cluster comes up (e.g. its job agent).
                self._patch_status(rayjob, {**status, "message": f"submission will be retried: {error}"})
                return
            self._patch_status(rayjob, {**status, "jobDeploymentStatus": FAILED, "reason": SUBMISSION_FAILED,
                                        "endTime": self._now(), "failed": (status.get("failed") or 0) + 1,
                                        "message": f"failed to submit the job: {error}"})
            return
        self._patch_status(rayjob, {**{k: v for k, v in status.items() if k != "message"},
                                    "jobDeploymentStatus": RUNNING, "jobStatus": "PENDING"})

    def _job_info(self, job_id: str):
        if self.status_only:
            return None
        try:
            return self.jobs.get_job_info(job_id)
        except Exception as error:
            if _is_not_found(error):
                return None
            raise

    def _observe(self, rayjob: dict, status: dict, job_id: str) -> None:
        expired = deadline_exceeded(rayjob, self.clock())
        if expired is not None:
            self._stop(job_id)
            self._patch_status(rayjob, expired)
            return
        if self.status_only:
            return  # Running until something else writes its end
        self._enforce_memory_limits(rayjob, job_id)
        observed = rayjob_status(self._job_info(job_id), rayjob, self.clock())
        killed = self._oom_killed.get(job_id)
        if killed and observed.get("jobDeploymentStatus") == FAILED:
            # The container's termination, as KubeRay words it for a Ray pod container (the pod's lastState
            # on a cluster), before Ray's own message about the job that died with it.
            observed["message"] = (f"Ray {killed} terminated with exit code 137: OOMKilled\n"
                                   + (observed.get("message") or ""))
            self._oom_killed.pop(job_id, None)
        self._patch_status(rayjob, observed)

    def _enforce_memory_limits(self, rayjob: dict, job_id: str) -> None:
        """The kubelet/cgroup stand-in: a container whose processes' RSS exceeds its resources.limits.memory is
        SIGKILLed (exit 137, OOMKilled), and the kubelet's event is recorded on the RayJob."""
        limits = scheduling.memory_limits(rayjob.get("spec") or {})
        if not limits or job_id in self._oom_killed:
            return
        for container, pids in processes.containers_of(job_id).items():
            group = "head" if container == "head" else "worker"
            limit = limits.get(group)
            if limit is None:
                continue
            used = processes.rss_bytes(pids)
            if used <= limit[1]:
                continue
            processes.signal_all(processes.with_children(pids), processes.KILL)
            self._oom_killed[job_id] = f"{group} pod container {limit[0]}"
            log.warning("memory monitor: %s of %s used %d bytes > limit %d: OOMKilled", container, job_id, used,
                        limit[1])
            self.record_event(rayjob, "RayJob", "Warning", "OOMKilled",
                              f"Memory cgroup out of memory: container {limit[0]} of the Ray {group} pod used "
                              f"{used // 2**20}Mi, over its limit {limit[1] // 2**20}Mi; killed (exit code 137)",
                              component="kubelet")
            return

    def _after_finish(self, rayjob: dict) -> None:
        policy = deletion_due(rayjob, self.clock())
        if policy == "DeleteSelf":
            meta = rayjob["metadata"]
            log.info("deleting RayJob %s/%s (deletion policy DeleteSelf)", meta["namespace"], meta["name"])
            self.api.delete_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"])
        # DeleteCluster / DeleteWorkers: the local head is shared and stays; nothing to delete.

    def _stop(self, job_id: str) -> None:
        if self.status_only:
            return
        # A hung (SIGSTOPped) job must be able to die.
        processes.signal_all(processes.job_pids(job_id, self.jobs, self.dashboard_url), processes.CONT)
        try:
            info = self._job_info(job_id)
            if info is not None and getattr(info.status, "value", info.status) not in TERMINAL_JOB:
                self.jobs.stop_job(job_id)
        except Exception as error:
            log.info("stop of %s: %s", job_id, error)

    # ---- chaos ------------------------------------------------------------------------------------------------
    def _chaos(self, rayjob: dict, status: dict, job_id: str, action: str) -> None:
        """Only the physical fault; the RayJob's status then follows from what Ray and the memory monitor see."""
        verb, _, reason = action.partition(":")
        log.warning("chaos %s on %s", action, job_id)
        pids = processes.job_pids(job_id, self.jobs, self.dashboard_url)
        if verb == "kill" and reason == "OOMKilled":
            verb = "oom"
        if verb == "kill":
            # The node under the job vanishes: every process of the job dies at once, without a chance to react.
            if reason == "Evicted":
                self.record_event(rayjob, "RayJob", "Warning", "Evicted",
                                  "The node was low on resource: memory. Threshold quantity: 100Mi, available: 0Ki.",
                                  component="kubelet")
            sent = processes.signal_all(pids, processes.KILL)
            log.warning("chaos kill: SIGKILLed %d processes of %s", sent, job_id)
        elif verb == "oom":
            # The workload allocates until the memory monitor (the kubelet/cgroup stand-in) kills it.
            self.chaos_dir.mkdir(parents=True, exist_ok=True)
            limits = scheduling.memory_limits(rayjob.get("spec") or {})
            largest = max((limit for _, limit in limits.values()), default=OOM_ALLOCATION_BYTES)
            # A little over the largest limit: the monitor kills it on the way; without one, growth still stops.
            self.memory_file(job_id).write_text(str(int(largest + 2**30)))
        elif verb == "stall":
            self.chaos_dir.mkdir(parents=True, exist_ok=True)
            self.stall_file(job_id).touch()
        elif verb in ("hang", "resume"):
            if verb == "resume":
                self.stall_file(job_id).unlink(missing_ok=True)
            sent = processes.signal_all(pids, processes.STOP if verb == "hang" else processes.CONT)
            log.warning("chaos %s: signalled %d processes of %s", verb, sent, job_id)
        self._patch_meta(rayjob, {"annotations": {CHAOS_ANNOTATION: None, CHAOS_LAST_ANNOTATION: f"{action} at {self._now()}"}})

    def _clear_chaos(self, rayjob: dict) -> None:
        if (rayjob["metadata"].get("annotations") or {}).get(CHAOS_ANNOTATION):
            self._patch_meta(rayjob, {"annotations": {CHAOS_ANNOTATION: None,
                                                      CHAOS_LAST_ANNOTATION: "ignored: the RayJob had finished"}})

    # ---- RayService -------------------------------------------------------------------------------------------
    def _serve_request(self, method: str, body: Optional[dict] = None) -> Optional[dict]:
        request = urllib.request.Request(f"{self.dashboard_url}/api/serve/applications/", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        if self.auth_header:
            request.add_header("Authorization", self.auth_header)
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
        return json.loads(text) if text.strip() else None

    def service_aliases(self) -> dict[str, str]:
        """Cluster DNS, locally: every RayService's `<name>-serve-svc` (by the names a pod resolves) to the one
        local Serve proxy. Like Kubernetes' service env vars, the Services existing when the job starts."""
        services = self.core.list_service_for_all_namespaces(label_selector="ray.io/serve=true").items
        local = f"127.0.0.1:{self.serve_port}"
        return {f"{host}:{port.port}": local for svc in services
                for host in _service_hostnames(svc.metadata.name, svc.metadata.namespace)
                for port in svc.spec.ports or []}

    def serve_url(self, route_prefix: str = "/") -> str:
        return f"http://127.0.0.1:{self.serve_port}{route_prefix if route_prefix.startswith('/') else '/' + route_prefix}"

    def _service_apps(self, rayservice: dict) -> list[dict]:
        """The RayService's Serve applications, with the head container's env merged into each runtime_env."""
        config = yaml.safe_load(rayservice["spec"].get("serveConfigV2") or "") or {}
        if not isinstance(config, dict) or not isinstance(config.get("applications"), list) or not config["applications"]:
            raise ValueError("spec.serveConfigV2 must be a Serve config YAML with a non-empty `applications` list")
        env = self.container_env(rayservice)
        apps = []
        for app in config["applications"]:
            if not isinstance(app, dict) or not app.get("import_path"):
                raise ValueError("every Serve application needs an import_path")
            app = dict(app)
            app.setdefault("name", "default")
            runtime_env = dict(app.get("runtime_env") or {})
            runtime_env["env_vars"] = {k: str(v) for k, v in
                                       _local_env({**env, **(runtime_env.get("env_vars") or {})}).items()}
            app["runtime_env"] = runtime_env
            _validate_serve_app(app)
            apps.append(app)
        return apps

    def ensure_serve_service(self, rayservice: dict, url: str) -> None:
        """KubeRay's `<name>-serve-svc`, owned by the RayService; locally it stands for the Serve proxy at `url`."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        meta = rayservice["metadata"]
        name = f"{meta['name']}-serve-svc"
        body = client.V1Service(
            metadata=client.V1ObjectMeta(
                name=name, namespace=meta["namespace"],
                labels={"ray.io/serve": "true", "ray.io/originated-from-cr-name": meta["name"],
                        "ray.io/originated-from-crd": "RayService"},
                annotations={SERVE_URL_ANNOTATION: url},
                owner_references=[client.V1OwnerReference(api_version=f"{GROUP}/{VERSION}", kind="RayService",
                                                          name=meta["name"], uid=meta["uid"], controller=True,
                                                          block_owner_deletion=True)]),
            spec=client.V1ServiceSpec(ports=[client.V1ServicePort(name="serve", port=8000,
                                                                  target_port=self.serve_port)],
                                      selector={"ray.io/serve": "true",
                                                "ray.io/cluster": self.cluster_name(rayservice)}))
        try:
            existing = self.core.read_namespaced_service(name, meta["namespace"])
        except ApiException as error:
            if error.status != 404:
                raise
            self.core.create_namespaced_service(meta["namespace"], body)
            return
        if (existing.metadata.annotations or {}).get(SERVE_URL_ANNOTATION) != url:
            self.core.patch_namespaced_service(name, meta["namespace"],
                                               {"metadata": {"annotations": {SERVE_URL_ANNOTATION: url}}})

    def _refuse_service(self, rayservice: dict, event_reason: str, message: str) -> None:
        ready = {c.get("type"): c for c in (rayservice.get("status") or {}).get("conditions") or []}.get("Ready") or {}
        if ready.get("reason") == VALIDATION_FAILED and ready.get("message") == message:
            return  # already reported
        meta = rayservice["metadata"]
        self.record_event(rayservice, "RayService", "Warning", event_reason,
                          f"{meta['namespace']}/{meta['name']}: {message}", action="Validate")

    def sync_services(self) -> None:
        listed = self.api.list_cluster_custom_object(GROUP, VERSION, SERVICES).get("items", [])
        desired: list[dict] = []
        owners: dict[str, tuple[dict, list[dict]]] = {}
        errors: dict[str, str] = {}
        routes: dict[str, str] = {}
        names: set[str] = set()
        for svc in listed:
            key = f"{svc['metadata']['namespace']}/{svc['metadata']['name']}"
            if svc["metadata"].get("deletionTimestamp"):
                continue
            refused = validate_rayservice(svc)
            if refused is not None:
                self._refuse_service(svc, *refused)
                errors[key] = refused[1]
                owners[key] = (svc, [])
                continue
            try:
                apps = self._service_apps(svc)
                for app in apps:
                    route = app.get("route_prefix", "/")
                    if app["name"] in names or (route is not None and route in routes):
                        raise ValueError(f"application {app['name']!r} / route_prefix {route!r} is already "
                                         f"used on the local Ray head by RayService {routes.get(route, '?')}")
                for app in apps:
                    names.add(app["name"])
                    if app.get("route_prefix", "/") is not None:
                        routes[app.get("route_prefix", "/")] = key
                desired.extend(apps)
                owners[key] = (svc, apps)
            except Exception as error:
                errors[key] = str(error)
                owners[key] = (svc, [])
        fingerprint = json.dumps(desired, sort_keys=True)
        if fingerprint != self._applied_serve:
            try:
                if desired:
                    self._serve_request("PUT", {"http_options": {"host": "127.0.0.1", "port": self.serve_port},
                                                "applications": desired})
                else:
                    current = self._serve_request("GET") or {}
                    if current.get("applications"):
                        self._serve_request("DELETE")
                self._applied_serve = fingerprint
            except Exception as error:
                log.warning("Serve deploy failed: %s", error)
                for key in owners:
                    errors.setdefault(key, f"Serve deploy failed: {error}")
        try:
            details = (self._serve_request("GET") or {}).get("applications") or {}
        except Exception as error:
            log.info("Serve status not available: %s", error)
            details = None
        for key, (svc, apps) in owners.items():
            try:
                mine = None if details is None else {a["name"]: details[a["name"]] for a in apps if a["name"] in details}
                route = apps[0].get("route_prefix", "/") if apps else "/"
                status = rayservice_status(mine, svc, self.clock(), self.cluster_name(svc),
                                           {"dashboard": self.dashboard_url.rsplit(":", 1)[-1],
                                            "serve": str(self.serve_port)}, errors.get(key))
                self._patch_status(svc, status, SERVICES)
                url = self.serve_url(route or "/")
                if (svc["metadata"].get("annotations") or {}).get(SERVE_URL_ANNOTATION) != url:
                    self._patch_meta(svc, {"annotations": {SERVE_URL_ANNOTATION: url}}, SERVICES)
                self.ensure_serve_service(svc, url)
            except Exception:
                log.exception("status of RayService %s failed", key)


def _validate_serve_app(app: dict) -> None:
    """Refuse an application Serve's schema refuses, so that one bad RayService cannot break the shared PUT."""
    from ray.serve.schema import ServeApplicationSchema

    try:
        ServeApplicationSchema.model_validate(app)
        route = app.get("route_prefix")
        if route is not None and (not str(route).startswith("/") or (route != "/" and str(route).endswith("/"))
                                  or "{" in str(route) or "}" in str(route)):
            raise ValueError(f"route_prefix {route!r} must start with '/', not end with '/' and have no wildcards")
    except Exception as error:
        raise ValueError(f"invalid Serve application {app.get('name')!r}: {error}") from error


def _local_env(env: dict) -> dict:
    """The container image would provide the interpreter; locally it is this virtualenv."""
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.environ.get('PATH', ''))}"}


def run(kubeconfig: str, ray_address: Optional[str], interval: float = 1.0, serve_port: int = 8000,
        token_file: Optional[str] = None, chaos_dir: Optional[str] = None, status_only: bool = False) -> None:
    if status_only:
        run_status_only(kubeconfig, interval)
        return
    from kubeforge.dev import ray_head

    token = token_file or os.environ.get("RAY_AUTH_TOKEN_PATH") or ray_head.find_token_for(ray_address)
    if token:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    from kubernetes import client, config
    from ray.job_submission import JobSubmissionClient

    auth_header = f"Bearer {Path(token).read_text().strip()}" if token else None
    api_client = config.new_client_from_config(kubeconfig)
    api_client.user_agent = USER_AGENT
    jobs = None
    while jobs is None:
        try:
            jobs = JobSubmissionClient(ray_address)
        except Exception as error:
            log.warning("Ray head at %s not reachable yet: %s", ray_address, error)
            time.sleep(2)
    # Beside the kubeconfig, i.e. in the sandbox's state directory, so `dev down` removes the chaos files too.
    controller = LocalKubeRay(client.CustomObjectsApi(api_client), client.CoreV1Api(api_client), jobs, ray_address,
                              serve_port=serve_port, auth_header=auth_header,
                              chaos_dir=chaos_dir or Path(kubeconfig).resolve().parent / "chaos")
    log.info("local KubeRay watching RayJobs and RayServices in all namespaces, running them on %s", ray_address)
    _loop(controller, interval)


def run_status_only(kubeconfig: str, interval: float = 1.0) -> None:
    from kubernetes import client, config

    api_client = config.new_client_from_config(kubeconfig)
    api_client.user_agent = USER_AGENT
    controller = LocalKubeRay(client.CustomObjectsApi(api_client), client.CoreV1Api(api_client), None, "",
                              status_only=True)
    log.warning("STATUS-ONLY local KubeRay (for benchmarks): RayJobs are validated and reported Running, but no Ray "
                "job runs; RayServices are ignored")
    _loop(controller, interval)


def _loop(controller: LocalKubeRay, interval: float) -> None:
    while True:
        started = time.monotonic()
        try:
            controller.sync_all()
        except Exception:
            log.exception("sync pass failed; retrying")
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def _service_hostnames(name: str, namespace: str) -> tuple[str, ...]:
    return (f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local")
