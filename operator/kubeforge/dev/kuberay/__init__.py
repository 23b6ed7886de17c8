"""Local KubeRay: runs ray.io/v1 RayJobs and RayServices on the sandbox's local Ray head and writes KubeRay-shaped
status, so the operator sees exactly what it would see on a cluster with KubeRay.

    python -m kubeforge.dev.kuberay --kubeconfig PATH --ray-address http://127.0.0.1:8265 \
        [--serve-port 8000] [--ray-token-file PATH] [--interval 1.0]

A level-triggered loop lists RayJobs and RayServices in all namespaces every `--interval` seconds.

RayJob (kuberay `rayjob_types.go`):
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
  - spec.activeDeadlineSeconds -> job stopped, Failed, reason DeadlineExceeded.
  - spec.suspend -> job stopped, Suspended (jobId cleared); unsuspend -> new submission `<jobId>-<n>`.
  - shutdownAfterJobFinishes/ttlSecondsAfterFinished only delete the (here: shared, kept) cluster, as KubeRay;
    deletionStrategy onSuccess/onFailure/deletionRules with policy DeleteSelf deletes the RayJob after the ttl.
  - finalizer ray.io/rayjob-finalizer: deleting the RayJob stops its Ray job (even a SIGSTOPped one).
  - chaos: annotation chaos.kubeforge.dev/action = kill:NodeLost|kill:OOMKilled|kill:Evicted|hang|resume
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
