"""Ray entrypoints run by Kubeforge RayJobs: `python -m kubeforge_workloads.<kind>`.

Workloads read their resource spec from KUBEFORGE_CONTEXT, write progress, checkpoints and outputs to the
object store and log to MLflow. They never talk to the Kubernetes API.
"""
