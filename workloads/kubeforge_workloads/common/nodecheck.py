"""Pre-flight node check: devices visible, a small matmul with a known answer, a collective across workers.

A failure raises NodeCheckError (exit code NODE_CHECK_FAILED): the operator retries on other nodes.
"""

from __future__ import annotations

import os

from kubeforge_workloads.common.errors import NodeCheckError

FORCE_FAILURE_ENV = "KUBEFORGE_FAIL_NODE_CHECK"


def node_check(expect_gpu: bool) -> dict:
    import torch
    import torch.distributed as dist

    if os.environ.get(FORCE_FAILURE_ENV) == "1":
        raise NodeCheckError(f"node check failed: forced by {FORCE_FAILURE_ENV}=1")
    device = "cpu"
    if expect_gpu:
        if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
            raise NodeCheckError("node check failed: no CUDA device visible on a worker that asked for GPUs")
        device = f"cuda:{torch.cuda.current_device()}"
    a = torch.arange(16, dtype=torch.float32, device=device).reshape(4, 4)
    product = (a @ torch.eye(4, device=device)).sum().item()
    if product != 120.0:
        raise NodeCheckError(f"node check failed: 4x4 matmul gave {product}, expected 120")
    world = 1
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        probe = torch.ones(1, device=device)
        dist.all_reduce(probe)
        if probe.item() != world:
            raise NodeCheckError(f"node check failed: all_reduce gave {probe.item()}, expected {world}")
    return {"device": device, "worldSize": world}
