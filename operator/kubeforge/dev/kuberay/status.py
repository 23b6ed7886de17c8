"""Pure mapping from Ray job state to KubeRay RayJob status (ray-operator/apis/ray/v1/rayjob_types.go)."""

from __future__ import annotations

from typing import Optional

# JobDeploymentStatus values
INITIALIZING, RUNNING, COMPLETE, FAILED, SUSPENDED = "Initializing", "Running", "Complete", "Failed", "Suspended"
TERMINAL_DEPLOYMENT = {COMPLETE, FAILED}
# JobFailedReason values
APP_FAILED, DEADLINE_EXCEEDED, SUBMISSION_FAILED = "AppFailed", "DeadlineExceeded", "SubmissionFailed"


def rayjob_status(current: dict, ray_status: Optional[str], ray_message: Optional[str], now: str) -> dict:
    """The RayJob status after observing the Ray job (ray_status None: the job is unknown to Ray)."""
    status = dict(current)
    if ray_status is None:
        status.update(jobDeploymentStatus=FAILED, jobStatus="FAILED", reason=APP_FAILED, endTime=now,
                      failed=(current.get("failed") or 0) + 1,
                      message=f"job {current.get('jobId')} is unknown to the Ray cluster (was the head restarted?)")
        return status
    status["jobStatus"] = ray_status
    if ray_message:
        status["message"] = ray_message
    if ray_status in ("PENDING", "RUNNING"):
        status["jobDeploymentStatus"] = RUNNING
    elif ray_status == "SUCCEEDED":
        status.update(jobDeploymentStatus=COMPLETE, endTime=status.get("endTime") or now,
                      succeeded=(current.get("succeeded") or 0) + (0 if current.get("jobDeploymentStatus") == COMPLETE else 1))
    elif ray_status in ("FAILED", "STOPPED"):
        first = current.get("jobDeploymentStatus") not in TERMINAL_DEPLOYMENT
        status.update(jobDeploymentStatus=FAILED, reason=status.get("reason") or APP_FAILED,
                      endTime=status.get("endTime") or now,
                      failed=(current.get("failed") or 0) + (1 if first else 0))
    return status


def chaos_failure(current: dict, reason: str, now: str) -> dict:
    """What KubeRay reports when the cluster under a job is lost (node lost, OOM-killed, evicted)."""
    what = {"NodeLost": "the node running the Ray head was lost",
            "OOMKilled": "the Ray head container was OOMKilled",
            "Evicted": "the Ray head pod was Evicted"}.get(reason, reason)
    return {**current, "jobDeploymentStatus": FAILED, "jobStatus": "FAILED", "reason": APP_FAILED,
            "endTime": now, "failed": (current.get("failed") or 0) + 1,
            "message": f"{reason}: {what}; job {current.get('jobId')} terminated"}
