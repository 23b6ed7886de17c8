"""Local KubeRay: runs ray.io/v1 RayJobs and RayServices on the sandbox's local Ray head and writes KubeRay-shaped
status, so the operator sees exactly what it would see on a cluster with KubeRay.

    python -m kubeforge.dev.kuberay --kubeconfig PATH --ray-address http://127.0.0.1:8265 \
        [--serve-port 8000] [--ray-token-file PATH] [--interval 1.0]

A level-triggered loop lists RayJobs and RayServices in all namespaces every `--interval` seconds.

`--status-only` (benchmarks of the operator at scale only, never the sandbox): no Ray head, no Ray job. Each
RayJob is validated and recorded as below, then reported Running (jobStatus RUNNING, rayJobInfo.startTime) until
something else writes its end; deletion and suspension stop nothing, chaos is ignored, RayServices are left alone.

RayJob (kuberay `rayjob_types.go`):
  - Validated on every pass as KubeRay's validateRayJob (validation.py: name <= 47 chars and a DNS-1035 label, the
    spec rules of ValidateRayJobSpec): refused -> jobDeploymentStatus ValidationFailed, reason ValidationFailed,
    message in KubeRay's words, and a Warning event (InvalidRayJobMetadata / InvalidRayJobSpec, "<ns>/<name>: ...").
  - Stays Initializing, not submitted, while its pods would be Pending (scheduling.py: a pod's requests exceed this
    machine, e.g. nvidia.com/gpu, or its nodeSelector does not match; Warning FailedScheduling event with the
    scheduler's "0/1 nodes are available: 1 Insufficient ..." message) or while its Namespace's annotation
    kuberay.kubeforge.dev/hold-start-seconds has not elapsed since status.startTime; preRunningDeadlineSeconds
    and activeDeadlineSeconds still apply.
  - New -> status {jobId (spec.jobId or `<name>-<uid[:8]>`), rayClusterName (`<name>-raycluster`, or the
    clusterSelector's `ray.io/cluster`), dashboardURL, jobDeploymentStatus Initializing, startTime} is written
    BEFORE submitting; a restarted controller adopts the Ray job with that submission id instead of resubmitting.
  - submitted with spec.entrypoint, spec.runtimeEnvYAML, entrypointNumCpus, metadata; env vars from the head
    group's first container `env` / `envFrom` (Secrets and ConfigMaps read from the API) under runtimeEnvYAML's
    env_vars. A missing Secret/ConfigMap/key or a bad runtimeEnvYAML -> Failed, reason SubmissionFailed.
  - Ray PENDING/RUNNING -> Running; SUCCEEDED -> Complete (succeeded+1); STOPPED -> Complete; FAILED -> Failed,
    reason AppFailed (failed+1), message = Ray's job message ("Job entrypoint command failed with exit code N,
    last available logs ..."). rayJobInfo{startTime,endTime}, endTime, observedGeneration. Writes only on change.
  - Ray job unknown to the head (head restarted) -> Failed, reason SubmissionFailed, message "NodeLost: ...".
  - spec.backoffLimit (KubeRay's checkBackoffLimitAndUpdateStatusIfNeeded): a failure with runs left (at most
    backoffLimit + 1 in all; never after DeadlineExceeded) is written Retrying instead of Failed, with failed+1 and
    the failure's reason and message; the next pass stops the Ray job (KubeRay deletes its cluster), clears the
    cluster and job fields back to New, and the RayJob is submitted again under a fresh `<jobId>-<n>`.
  - spec.activeDeadlineSeconds -> job stopped, Failed, reason DeadlineExceeded.
  - spec.suspend -> job stopped, Suspended (jobId cleared); unsuspend -> new submission `<jobId>-<n>`.
  - shutdownAfterJobFinishes/ttlSecondsAfterFinished only delete the (here: shared, kept) cluster, as KubeRay;
    deletionStrategy onSuccess/onFailure/deletionRules with policy DeleteSelf deletes the RayJob after the ttl.
  - finalizer ray.io/rayjob-finalizer: deleting the RayJob stops its Ray job (even a SIGSTOPped one).
  - Memory limits: a container (the driver's process tree = head, each Ray worker process = a worker pod) whose
    RSS exceeds its resources.limits.memory is SIGKILLed; once Ray reports the job FAILED the message starts with
    "Ray <group> pod container <name> terminated with exit code 137: OOMKilled" (kubelet event OOMKilled too).
  - chaos: annotation chaos.kubeforge.dev/action = kill:NodeLost|kill:Evicted (SIGKILL), kill:OOMKilled|oom
    (the workload allocates; the monitor kills), stall|resume (the stall file named by KUBEFORGE_CHAOS_STALL_FILE in
    every job's env), hang|resume (SIGSTOP/SIGCONT). The chaos never writes the RayJob's status
    (see kubeforge.dev.chaos).

RayService (kuberay `rayservice_types.go`): every RayService's serveConfigV2 applications (head container env
merged into each runtime_env) are PUT together to the head's Serve REST API (/api/serve/applications/) with the
Serve proxy on 127.0.0.1:--serve-port; a deleted RayService's applications disappear with the next PUT.
Status: serviceStatus Running when all its applications are RUNNING, numServeEndpoints, activeServiceStatus
{rayClusterName, applicationStatuses{app:{status,message,serveDeploymentStatuses{dep:{status,message}}}},
rayClusterStatus{endpoints{serve,dashboard}}}, conditions Ready / UpgradeInProgress, observedGeneration.
On a cluster clients reach `<name>-serve-svc:8000`; locally that Service is the Serve proxy, and the
annotation kubeforge.dev/local-serve-url on the RayService gives the URL (http://127.0.0.1:<serve port><route>).
Application names and route prefixes are shared by all RayServices on the one local head: a clash makes the
later RayService not Ready (reason ValidationFailed).
"""
