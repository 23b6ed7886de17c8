"""The operator classifies the exact messages Ray and (the local) KubeRay write for a job whose processes died:
SIGKILLed driver / supervisor (the node vanished) is Infrastructure, a container over its memory limit OutOfMemory.
The strings are copied from a Ray 2.60 head (tests/integration/test_local_kuberay.py produces them)."""

import pytest

from kubeforge.api.shared import FailureReason
from kubeforge.resilience.classify import ObservedFailure, classify

SUPERVISOR_DIED = (
    "Job supervisor actor died: The actor died unexpectedly before finishing this task.\n"
    "\tclass_name: JobSupervisor\n\tactor_id: 42984e75649186774613e65d02000000\n\tpid: 19444\n"
    "\tname: _ray_internal_job_actor_kill-job-0d3964eb\n\tnamespace: SUPERVISOR_ACTOR_RAY_NAMESPACE\n\tip: 192.0.2.2\n"
    "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: Worker "
    "unexpectedly exits with a connection error code 2. End of file. Some common causes include: (1) the process was "
    "killed by the OOM killer due to high memory usage, (2) ray stop --force was called, or (3) the worker crashed "
    "unexpectedly due to SIGSEGV or another unexpected error. If the process was killed by the kernel OOM killer "
    "(verifiable by checking for OOM in dmesg of the OOMing node), consider enabling resource isolation via "
    "--enable-resource-isolation to prevent node deaths by resource contention and significant loss of progress by "
    "uninformed kernel OOM killing.")
DRIVER_KILLED = "Job entrypoint command failed with exit code -9, last available logs (truncated to 20,000 chars):\nstep 3\n"
OOM_KILLED = "Ray head pod container ray-head terminated with exit code 137: OOMKilled\n" + SUPERVISOR_DIED


@pytest.mark.parametrize("message,reason", [
    (SUPERVISOR_DIED, FailureReason.INFRASTRUCTURE),
    (DRIVER_KILLED, FailureReason.INFRASTRUCTURE),
    ("Ray head pod not found.", FailureReason.INFRASTRUCTURE),
    ("Submitter completed but Ray job not found in RayCluster.", FailureReason.INFRASTRUCTURE),
    (OOM_KILLED, FailureReason.OUT_OF_MEMORY),
    ("Ray worker pod container ray-worker terminated with exit code 137: OOMKilled\n" + DRIVER_KILLED,
     FailureReason.OUT_OF_MEMORY),
    # a driver that exits on its own with a Python error is not mistaken for a killed one
    ("Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
     "ModuleNotFoundError: No module named 'nope'\n", FailureReason.USER_ERROR),
])
def test_ray_and_kuberay_messages(message, reason):
    assert classify(ObservedFailure(message=message)) == reason


def test_a_worker_oomkilled_under_a_driver_that_reports_unknown_is_out_of_memory():
    """The driver only saw its Ray Train worker group fail; the RayJob saw the container's termination."""
    failure = ObservedFailure(
        message="Training failed: WorkerGroupError: a worker died unexpectedly", exit_code=1, report_reason="Unknown",
        log_tail="RayJob: Ray worker pod container ray-worker terminated with exit code 137: OOMKilled")
    assert classify(failure) == FailureReason.OUT_OF_MEMORY


def test_a_known_report_reason_still_wins_over_the_rayjob_message():
    failure = ObservedFailure(message="train.jsonl line 3: missing field", exit_code=65, report_reason="UserError",
                              log_tail="RayJob: Job supervisor actor died: node lost")
    assert classify(failure) == FailureReason.USER_ERROR
