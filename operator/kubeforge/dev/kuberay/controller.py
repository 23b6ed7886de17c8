"""The local KubeRay controller loop: RayJob objects in, Ray jobs on the local head out."""

from __future__ import annotations

import base64
import logging
import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import yaml

from kubeforge.dev.kuberay.status import (FAILED, INITIALIZING, RUNNING, SUBMISSION_FAILED, TERMINAL_DEPLOYMENT,
                                          chaos_failure, rayjob_status)

log = logging.getLogger("kubeforge.dev.kuberay")
GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
FINALIZER = "ray.io/rayjob-finalizer"
CHAOS_ANNOTATION = "chaos.kubeforge.dev/action"
JOB_MARKER_ENV = "KUBEFORGE_LOCAL_RAYJOB"
SUBMISSION_RETRY_SECONDS = 120


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_processes(job_id: str) -> list:
    """Driver and worker processes of a job: every process whose environment carries the job's marker."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(JOB_MARKER_ENV) == job_id:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


class LocalKubeRay:
    def __init__(self, api, core, jobs, dashboard_url: str):
        self.api, self.core, self.jobs, self.dashboard_url = api, core, jobs, dashboard_url

    # ---- helpers -----------------------------------------------------------------------------------------------
    def _patch_status(self, rayjob: dict, status: dict) -> None:
        if status == (rayjob.get("status") or {}):
            return
        meta = rayjob["metadata"]
        self.api.patch_namespaced_custom_object_status(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"],
                                                       {"status": status})
        rayjob["status"] = status

    def _patch_meta(self, rayjob: dict, metadata: dict) -> None:
        meta = rayjob["metadata"]
        self.api.patch_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"],
                                                {"metadata": metadata})

    def _secret(self, namespace: str, name: str) -> Optional[dict]:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def _config_map(self, namespace: str, name: str) -> Optional[dict]:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def container_env(self, rayjob: dict) -> dict[str, str]:
        """Env of the head container (env + envFrom, with Secret/ConfigMap references resolved)."""
        namespace = rayjob["metadata"]["namespace"]
        spec = rayjob["spec"]
        try:
            container = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        except (KeyError, IndexError, TypeError):
            return {}
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                data = self._secret(namespace, source["secretRef"]["name"])
            else:
                data = self._config_map(namespace, source.get("configMapRef", {}).get("name", ""))
            optional = (source.get("secretRef") or source.get("configMapRef") or {}).get("optional")
            if data is None and not optional:
                raise ValueError(f"envFrom references a missing Secret/ConfigMap: {source}")
            env.update({f"{source.get('prefix', '')}{k}": v for k, v in (data or {}).items()})
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = item["value"]
            elif "valueFrom" in item:
                ref = item["valueFrom"].get("secretKeyRef") or item["valueFrom"].get("configMapKeyRef") or {}
                lookup = self._secret if "secretKeyRef" in item["valueFrom"] else self._config_map
                data = lookup(namespace, ref.get("name", "")) or {}
                if ref.get("key") in data:
                    env[item["name"]] = data[ref["key"]]
                elif not ref.get("optional"):
                    raise ValueError(f"env {item['name']} references a missing key {ref}")
        return env

    def runtime_env(self, rayjob: dict, job_id: str) -> dict:
        runtime_env = yaml.safe_load(rayjob["spec"].get("runtimeEnvYAML") or "{}") or {}
        env_vars = {**self.container_env(rayjob), **(runtime_env.get("env_vars") or {})}
        # The container image would provide the interpreter; locally it is this virtualenv.
        env_vars["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env_vars[JOB_MARKER_ENV] = job_id
        runtime_env["env_vars"] = {k: str(v) for k, v in env_vars.items()}
        return runtime_env

    # ---- reconcile ---------------------------------------------------------------------------------------------
    def sync_all(self) -> None:
        listed = self.api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        for rayjob in listed.get("items", []):
            try:
                self.sync(rayjob)
            except Exception:  # one odd RayJob must not stop the others
                log.exception("sync of RayJob %s/%s failed", rayjob["metadata"].get("namespace"),
                              rayjob["metadata"].get("name"))

    def sync(self, rayjob: dict) -> None:
        meta = rayjob["metadata"]
        status = dict(rayjob.get("status") or {})
        job_id = status.get("jobId")
        if meta.get("deletionTimestamp"):
            if job_id:
                self._stop(job_id)
            finalizers = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
            if FINALIZER in (meta.get("finalizers") or []):
                self._patch_meta(rayjob, {"finalizers": finalizers or None, "resourceVersion": meta["resourceVersion"]})
            return
        if FINALIZER not in (meta.get("finalizers") or []):
            self._patch_meta(rayjob, {"finalizers": [*(meta.get("finalizers") or []), FINALIZER]})
        if not job_id:
            # Record the ids before submitting, so a restart never submits twice.
            job_id = rayjob["spec"].get("jobId") or f"{meta['name']}-{meta['uid'][:8]}"
            self._patch_status(rayjob, {**status, "jobId": job_id, "rayClusterName": f"{meta['name']}-raycluster",
                                        "dashboardURL": self.dashboard_url, "jobDeploymentStatus": INITIALIZING,
                                        "startTime": now(), "observedGeneration": meta.get("generation")})
            status = rayjob["status"]
        deployment = status.get("jobDeploymentStatus")
        if deployment in TERMINAL_DEPLOYMENT:
            return
        action = (meta.get("annotations") or {}).get(CHAOS_ANNOTATION)
        if action:
            self._chaos(rayjob, status, job_id, action)
            return
        if deployment == INITIALIZING:
            self._submit(rayjob, status, job_id)
            return
        if rayjob["spec"].get("suspend"):
            self._stop(job_id)
            self._patch_status(rayjob, {**status, "jobDeploymentStatus": "Suspended"})
            return
        self._observe(rayjob, status, job_id)

    def _submit(self, rayjob: dict, status: dict, job_id: str) -> None:
        try:
            existing = self._job_info(job_id)
            if existing is None:
                self.jobs.submit_job(entrypoint=rayjob["spec"]["entrypoint"], submission_id=job_id,
                                     runtime_env=self.runtime_env(rayjob, job_id))
                log.info("submitted %s for RayJob %s/%s", job_id, rayjob["metadata"]["namespace"],
                         rayjob["metadata"]["name"])
            else:
                log.info("adopted existing Ray job %s", job_id)
        except Exception as error:
            log.warning("submission of %s failed: %s", job_id, error)
            started = datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))
            deadline = rayjob["spec"].get("preRunningDeadlineSeconds") or SUBMISSION_RETRY_SECONDS
            if (datetime.now(timezone.utc) - started).total_seconds() < deadline:
                # Like KubeRay's submitter, keep trying while the cluster comes up (e.g. its job agent).
                self._patch_status(rayjob, {**status, "message": f"submission will be retried: {error}"})
                return
            self._patch_status(rayjob, {**status, "jobDeploymentStatus": FAILED, "jobStatus": "FAILED",
                                        "reason": SUBMISSION_FAILED, "endTime": now(), "failed": 1,
                                        "message": f"failed to submit the job: {error}"})
            return
        self._patch_status(rayjob, {**status, "jobDeploymentStatus": RUNNING, "jobStatus": "PENDING"})

    def _job_info(self, job_id: str):
        try:
            return self.jobs.get_job_info(job_id)
        except RuntimeError as error:
            if "does not exist" in str(error) or "404" in str(error) or "not found" in str(error).lower():
                return None
            raise

    def _observe(self, rayjob: dict, status: dict, job_id: str) -> None:
        info = self._job_info(job_id)
        ray_status = info.status.value if info is not None else None
        new = rayjob_status(status, ray_status, info.message if info is not None else None, now())
        if info is not None and getattr(info, "start_time", None):
            new["rayJobInfo"] = {k: v for k, v in {"startTime": _ms(info.start_time),
                                                   "endTime": _ms(getattr(info, "end_time", None))}.items() if v}
        deadline = rayjob["spec"].get("activeDeadlineSeconds")
        if deadline and new.get("jobDeploymentStatus") == RUNNING:
            started = datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))
            if (datetime.now(timezone.utc) - started).total_seconds() > deadline:
                self._stop(job_id)
                new.update(jobDeploymentStatus=FAILED, reason="DeadlineExceeded", endTime=now(),
                           message=f"The RayJob has passed the activeDeadlineSeconds ({deadline}s)")
        self._patch_status(rayjob, new)

    def _stop(self, job_id: str) -> None:
        for proc in job_processes(job_id):  # a hung (SIGSTOPped) job must be able to die
            try:
                proc.send_signal(signal.SIGCONT)
            except Exception:
                pass
        try:
            self.jobs.stop_job(job_id)
        except Exception as error:
            log.info("stop of %s: %s", job_id, error)

    def _chaos(self, rayjob: dict, status: dict, job_id: str, action: str) -> None:
        verb, _, reason = action.partition(":")
        log.warning("chaos %s on %s", action, job_id)
        if verb == "kill":
            for proc in job_processes(job_id):
                try:
                    proc.kill()
                except Exception:
                    pass
            self._stop(job_id)
            self._patch_status(rayjob, chaos_failure(status, reason or "NodeLost", now()))
        elif verb in ("hang", "resume"):
            sig = signal.SIGSTOP if verb == "hang" else signal.SIGCONT
            for proc in job_processes(job_id):
                try:
                    proc.send_signal(sig)
                except Exception:
                    pass
        self._patch_meta(rayjob, {"annotations": {CHAOS_ANNOTATION: None, "chaos.kubeforge.dev/last": f"{action} at {now()}"}})


def _ms(value) -> Optional[str]:
    if not value:
        return None
    return datetime.fromtimestamp(value / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(kubeconfig: str, ray_address: str, interval: float = 1.0) -> None:
    from kubernetes import client, config
    from ray.job_submission import JobSubmissionClient

    api_client = config.new_client_from_config(kubeconfig)
    controller = LocalKubeRay(client.CustomObjectsApi(api_client), client.CoreV1Api(api_client),
                              JobSubmissionClient(ray_address), ray_address)
    log.info("local KubeRay watching RayJobs, running them on %s", ray_address)
    while True:
        started = time.monotonic()
        try:
            controller.sync_all()
        except Exception:
            log.exception("sync pass failed; retrying")
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
