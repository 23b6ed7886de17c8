"""Would the RayJob's Ray pods be scheduled? The local node stands for the cluster's nodes: a pod whose requests
(cpu, memory, nvidia.com/gpu or any extended resource) exceed what this machine offers, or whose nodeSelector this
node's labels do not satisfy, stays Pending, so the RayJob stays Initializing with the scheduler's message.

Each pod is checked alone against one node of this machine's size (a cluster adds nodes for the next pod; the
local head runs them all), so a job that fits a real node pool of such machines also runs here.
"""

from __future__ import annotations

import os
import platform
import re
import socket
from dataclasses import dataclass, field
from typing import Mapping, Optional

from kubeforge.quantity import parse_quantity

GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class Node:
    allocatable: Mapping[str, float]
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def local(cls) -> "Node":
        import psutil

        gpus = len([d for d in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", d)]) if os.path.isdir("/dev") else 0
        allocatable = {"cpu": float(os.cpu_count() or 1), "memory": float(psutil.virtual_memory().total),
                       "pods": 110.0}
        if gpus:
            allocatable[GPU_RESOURCE] = float(gpus)
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        return cls(allocatable, {"kubernetes.io/hostname": socket.gethostname(), "kubernetes.io/os": "linux",
                                 "kubernetes.io/arch": arch})


def pod_requests(pod_spec: Mapping) -> dict[str, float]:
    """Sum of the containers' requests (a limit without a request is also the request, as the API server defaults)."""
    total: dict[str, float] = {}
    for container in pod_spec.get("containers") or []:
        resources = container.get("resources") or {}
        wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, quantity in wanted.items():
            total[name] = total.get(name, 0.0) + parse_quantity(quantity)
    return total


def _pods(spec: Mapping) -> list[Mapping]:
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or {}
    pods = []
    head = ((cluster.get("headGroupSpec") or {}).get("template") or {}).get("spec")
    if head:
        pods.append(head)
    for group in cluster.get("workerGroupSpecs") or []:
        replicas = group.get("replicas", group.get("minReplicas", 0)) or 0
        template = (group.get("template") or {}).get("spec")
        if template and replicas > 0 and not group.get("suspend"):
            pods.append(template)
    return pods


def unfit_reasons(pod_spec: Mapping, node: Node) -> list[str]:
    reasons = []
    selector = pod_spec.get("nodeSelector") or {}
    if any(node.labels.get(key) != value for key, value in selector.items()):
        reasons.append("node(s) didn't match Pod's node affinity/selector")
    for name, amount in sorted(pod_requests(pod_spec).items()):
        if amount > 0 and amount > node.allocatable.get(name, 0.0):
            reasons.append(f"Insufficient {name}")
    return reasons


def unschedulable_message(spec: Mapping, node: Node) -> Optional[str]:
    """The scheduler's FailedScheduling message for the first of the job's pods that fits no node, or None."""
    for pod in _pods(spec):
        reasons = unfit_reasons(pod, node)
        if reasons:
            return (f"0/1 nodes are available: {', '.join('1 ' + r for r in sorted(reasons))}. preemption: 0/1 "
                    "nodes are available: 1 Preemption is not helpful for scheduling.")
    return None


def pending_cluster_status(stamp: str) -> dict:
    """RayCluster status while its pods are Pending (copied into the RayJob's status.rayClusterStatus by KubeRay)."""
    return {"conditions": [
                {"type": "HeadPodReady", "status": "False", "reason": "Unknown", "message": "",
                 "lastTransitionTime": stamp},
                {"type": "RayClusterProvisioned", "status": "False", "reason": "RayClusterPodsProvisioning",
                 "message": "RayCluster Pods are being provisioned for first time", "lastTransitionTime": stamp}]}


def memory_limits(spec: Mapping) -> dict[str, tuple[str, float]]:
    """{"head"|"worker": (container name, resources.limits.memory in bytes)} of the Ray containers (the first
    container of the head group and of the first worker group), for those that set one."""
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or {}
    groups = {"head": cluster.get("headGroupSpec") or {}}
    if cluster.get("workerGroupSpecs"):
        groups["worker"] = cluster["workerGroupSpecs"][0] or {}
    limits = {}
    for group, group_spec in groups.items():
        containers = ((group_spec.get("template") or {}).get("spec") or {}).get("containers") or []
        memory = ((containers[0].get("resources") or {}).get("limits") or {}).get("memory") if containers else None
        if memory is not None:
            limits[group] = (containers[0].get("name") or group, parse_quantity(memory))
    return limits
