"""Pure mappings from Ray's view (job info, Serve application details) to KubeRay-shaped status.

Field names and enum values follow ray-operator/apis/ray/v1/rayjob_types.go and rayservice_types.go. No I/O.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping, Optional

from kubeforge.timefmt import parse_time
from kubeforge.timefmt import rfc3339 as format_time

# JobDeploymentStatus
NEW, INITIALIZING, RUNNING, COMPLETE, FAILED = "", "Initializing", "Running", "Complete", "Failed"
SUSPENDING, SUSPENDED, RETRYING = "Suspending", "Suspended", "Retrying"
VALIDATION_FAILED = "ValidationFailed"  # both a JobDeploymentStatus and a JobFailedReason
TERMINAL_DEPLOYMENT = {COMPLETE, FAILED}
# JobStatus (Ray's)
PENDING, JOB_RUNNING, STOPPED, SUCCEEDED, JOB_FAILED = "PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"
TERMINAL_JOB = {STOPPED, SUCCEEDED, JOB_FAILED}
# JobFailedReason
APP_FAILED, DEADLINE_EXCEEDED, SUBMISSION_FAILED = "AppFailed", "DeadlineExceeded", "SubmissionFailed"
CHAOS_REASONS = ("NodeLost", "OOMKilled", "Evicted")
NOT_RETRIED = {DEADLINE_EXCEEDED, "JobStatusCheckTimeoutExceeded"}
RETRY_CLEARED = ("rayClusterStatus", "rayClusterName", "dashboardURL", "jobId", "jobStatus", "message", "reason",
                 "rayJobInfo", "jobStatusCheckFailureStartTime", "jobDeploymentStatus")
"""What KubeRay's Retrying pass resets (jobStatus and jobDeploymentStatus to New, which is "" and omitted)."""


def retrying_if_eligible(spec: Mapping, previous: Mapping, status: dict) -> dict:
    """KubeRay's checkBackoffLimitAndUpdateStatusIfNeeded, applied to a status about to be written: a RayJob that
    fails now (status.failed already counts this failure) with failures left under spec.backoffLimit (at most
    backoffLimit + 1 runs in all) is written Retrying instead of Failed, keeping the failure's reason and message
    until the retry clears them. A deadline is never retried."""
    if status.get("jobDeploymentStatus") != FAILED or previous.get("jobDeploymentStatus") == FAILED:
        return status
    limit = spec.get("backoffLimit")
    if limit is None or (status.get("failed") or 0) >= limit + 1 or status.get("reason") in NOT_RETRIED:
        return status
    return {**status, "jobDeploymentStatus": RETRYING}


def reset_for_retry(status: Mapping) -> dict:
    """KubeRay's pass over a Retrying RayJob (after deleting its cluster and submitter): back to New with the
    cluster and Ray job fields cleared; the failed/succeeded counters, startTime and endTime stay."""
    return {k: v for k, v in status.items() if k not in RETRY_CLEARED}


def _ms(value: Any) -> Optional[str]:
    if not value:
        return None
    return format_time(datetime.fromtimestamp(int(value) / 1000, timezone.utc))


def job_info_dict(info: Any) -> Optional[dict]:
    """Ray's JobDetails (or a dict of its fields) as a plain dict with `status` as a string."""
    if info is None:
        return None
    if not isinstance(info, Mapping):
        info = {k: getattr(info, k, None) for k in ("status", "message", "start_time", "end_time", "job_id",
                                                   "submission_id", "driver_info", "driver_exit_code",
                                                   "error_type")}
    out = dict(info)
    status = out.get("status")
    out["status"] = getattr(status, "value", status)
    return out


def rayjob_status(ray_job_info: Any, rayjob: Mapping, now: datetime) -> dict:
    """The RayJob's status after observing its Ray job, as KubeRay's RayJob controller writes it.

    ray_job_info: Ray's JobDetails / dict, or None when the head does not know the job (head restarted or lost).
    Only statuses reached after submission are handled here (Running and beyond); terminal statuses are kept.
    """
    current = dict(rayjob.get("status") or {})
    if current.get("jobDeploymentStatus") in TERMINAL_DEPLOYMENT:
        return current
    status = dict(current)
    generation = (rayjob.get("metadata") or {}).get("generation")
    if generation is not None:
        status["observedGeneration"] = generation
    info = job_info_dict(ray_job_info)
    stamp = format_time(now)
    if info is None:
        # What a real cluster shows when the head that ran the job is gone (the submitter loses the head).
        status.update(jobDeploymentStatus=FAILED, reason=SUBMISSION_FAILED, endTime=stamp,
                      failed=(current.get("failed") or 0) + 1,
                      message=f"NodeLost: Ray job {current.get('jobId')} is unknown to the Ray head "
                              "(the head node was restarted or lost)")
        return status
    ray_status = info.get("status") or ""
    status["jobStatus"] = ray_status
    if info.get("message"):
        status["message"] = info["message"]
    job_info = {k: v for k, v in {"startTime": _ms(info.get("start_time")),
                                  "endTime": _ms(info.get("end_time"))}.items() if v}
    if job_info:
        status["rayJobInfo"] = job_info
    if ray_status in TERMINAL_JOB:
        # KubeRay: a terminal Ray job makes the deployment Complete, or Failed (reason AppFailed) if it FAILED.
        status["endTime"] = stamp
        if ray_status == JOB_FAILED:
            status.update(jobDeploymentStatus=FAILED, reason=APP_FAILED, failed=(current.get("failed") or 0) + 1)
        else:
            status["jobDeploymentStatus"] = COMPLETE
            if ray_status == SUCCEEDED:
                status["succeeded"] = (current.get("succeeded") or 0) + 1
    else:
        status["jobDeploymentStatus"] = RUNNING
    return status


def deadline_exceeded(rayjob: Mapping, now: datetime) -> Optional[dict]:
    """The Failed/DeadlineExceeded status if spec.activeDeadlineSeconds has passed since status.startTime."""
    return _past_deadline(rayjob, now, "activeDeadlineSeconds", "ActiveDeadlineSeconds", DEADLINE_EXCEEDED)


def pre_running_deadline_exceeded(rayjob: Mapping, now: datetime) -> Optional[dict]:
    """The Failed/PreRunningDeadlineExceeded status if spec.preRunningDeadlineSeconds passed before Running."""
    return _past_deadline(rayjob, now, "preRunningDeadlineSeconds", "PreRunningDeadlineSeconds",
                          "PreRunningDeadlineExceeded")


def _past_deadline(rayjob: Mapping, now: datetime, field: str, label: str, reason: str) -> Optional[dict]:
    deadline = (rayjob.get("spec") or {}).get(field)
    status = dict(rayjob.get("status") or {})
    started = parse_time(status.get("startTime"))
    if not deadline or started is None or status.get("jobDeploymentStatus") in TERMINAL_DEPLOYMENT:
        return None
    if (now - started).total_seconds() < deadline:
        return None
    status.update(jobDeploymentStatus=FAILED, reason=reason, endTime=format_time(now),
                  failed=(status.get("failed") or 0) + 1,
                  message=f"The RayJob has passed the {field}. StartTime: {status.get('startTime')}. "
                          f"{label}: {deadline}")
    return status


def deletion_due(rayjob: Mapping, now: datetime) -> Optional[str]:
    """The deletion policy that applies now to a finished RayJob, or None.

    KubeRay semantics: without spec.deletionStrategy, `shutdownAfterJobFinishes` deletes only the RayCluster
    (after ttlSecondsAfterFinished), never the RayJob -> "DeleteCluster". With deletionStrategy, onSuccess/onFailure
    policies apply after ttlSecondsAfterFinished, deletionRules after each rule's ttlSeconds; "DeleteSelf" deletes
    the RayJob. The most destructive due policy wins.
    """
    spec = rayjob.get("spec") or {}
    status = rayjob.get("status") or {}
    deployment, job_status = status.get("jobDeploymentStatus"), status.get("jobStatus")
    ended = parse_time(status.get("endTime"))
    if deployment not in TERMINAL_DEPLOYMENT or ended is None:
        return None
    age = (now - ended).total_seconds()
    ttl = spec.get("ttlSecondsAfterFinished") or 0
    strategy = spec.get("deletionStrategy")
    if not strategy:
        return "DeleteCluster" if spec.get("shutdownAfterJobFinishes") and age >= ttl else None
    due: list[str] = []
    if strategy.get("deletionRules"):
        for rule in strategy["deletionRules"]:
            condition = rule.get("condition") or {}
            matches = (condition.get("jobStatus") == job_status if "jobStatus" in condition
                       else condition.get("jobDeploymentStatus") == deployment)
            if matches and age >= (condition.get("ttlSeconds") or 0):
                due.append(rule.get("policy"))
    else:
        side = "onSuccess" if job_status == SUCCEEDED else "onFailure"
        policy = (strategy.get(side) or {}).get("policy")
        if policy and age >= ttl:
            due.append(policy)
    for policy in ("DeleteSelf", "DeleteCluster", "DeleteWorkers"):
        if policy in due:
            return policy
    return None


# ---- RayService --------------------------------------------------------------------------------------------------

APP_RUNNING = "RUNNING"


def rayservice_status(app_details: Optional[Mapping], rayservice: Mapping, now: datetime,
                      cluster_name: str, endpoints: Mapping[str, str], error: Optional[str] = None) -> dict:
    """KubeRay-shaped RayService status from Serve's application details.

    app_details: {app name: Serve ApplicationDetails dict (status, message, deployments{name:{status,message}})}
    for this RayService's applications only (keys are the names in its serveConfigV2), or None if Serve is not
    reachable. `error` (e.g. an invalid serveConfigV2) makes the service not Ready with that message.
    """
    current = dict(rayservice.get("status") or {})
    meta = rayservice.get("metadata") or {}
    stamp = format_time(now)
    previous = {c.get("type"): c for c in current.get("conditions") or []}
    apps: dict[str, dict] = {}
    for name, detail in sorted((app_details or {}).items()):
        deployments = {}
        for dname, ddetail in sorted((detail.get("deployments") or {}).items()):
            deployments[dname] = {k: v for k, v in {"status": ddetail.get("status"),
                                                    "message": ddetail.get("message") or None}.items() if v}
        apps[name] = {k: v for k, v in {"status": detail.get("status"), "message": detail.get("message") or None,
                                        "serveDeploymentStatuses": deployments or None}.items() if v}
    ready = bool(apps) and error is None and all(a.get("status") == APP_RUNNING for a in apps.values())
    status: dict[str, Any] = {"observedGeneration": meta.get("generation"),
                              "serviceStatus": "Running" if ready else "",
                              "numServeEndpoints": 1 if ready else 0,
                              "activeServiceStatus": {
                                  "rayClusterName": cluster_name,
                                  "applicationStatuses": apps,
                                  "rayClusterStatus": {"state": "ready", "endpoints": dict(endpoints),
                                                       "head": {"podIP": "127.0.0.1", "serviceIP": "127.0.0.1",
                                                                "serviceName": f"{cluster_name}-head-svc"}}}}
    if not apps:
        del status["activeServiceStatus"]["applicationStatuses"]
    if ready:
        reason, message = "NonZeroServeEndpoints", "Number of serve endpoints is greater than 0"
    elif error:
        reason, message = "ValidationFailed", error
    elif app_details is None:
        reason, message = "Initializing", "Serve is not reachable yet on the Ray head"
    else:
        unhealthy = {n: a for n, a in apps.items() if a.get("status") != APP_RUNNING}
        reason = "Initializing" if all(a.get("status") in ("NOT_STARTED", "DEPLOYING", None)
                                       for a in unhealthy.values()) else "ZeroServeEndpoints"
        message = "; ".join(f"{n}: {a.get('status')}" + (f" ({a['message']})" if a.get("message") else "")
                            for n, a in unhealthy.items()) or "no applications deployed yet"
    status["conditions"] = [
        _condition(previous.get("Ready"), "Ready", "True" if ready else "False", reason, message, stamp,
                   meta.get("generation")),
        _condition(previous.get("UpgradeInProgress"), "UpgradeInProgress", "False", "NoPendingCluster",
                   "No pending cluster exists", stamp, meta.get("generation")),
    ]
    status["lastUpdateTime"] = current.get("lastUpdateTime") or stamp
    if _without_times(status) != _without_times(current):
        status["lastUpdateTime"] = stamp
    return status


def _condition(previous: Optional[Mapping], type_: str, value: str, reason: str, message: str, now: str,
               generation: Optional[int]) -> dict:
    moved = previous is None or previous.get("status") != value
    condition = {"type": type_, "status": value, "reason": reason, "message": message[:32768],
                 "lastTransitionTime": now if moved else previous.get("lastTransitionTime", now)}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def _without_times(status: Mapping) -> dict:
    out = {k: v for k, v in status.items() if k != "lastUpdateTime"}
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                         for c in status.get("conditions") or []]
    return out
