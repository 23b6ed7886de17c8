"""deletionPolicy Delete: remove what a deleted resource's workloads wrote, including what they write late.

Neither KubeRay nor the sandbox's local KubeRay waits for a Ray job to exit before a deleted RayJob goes: its
finalizer asks Ray to stop the job and the pods get their termination grace period. A checkpoint upload or a
heartbeat in flight can land after the operator's first sweep, so a sweep that removed anything is repeated
after a quiet period, until one finds the prefix empty."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from kubeforge.storage.layout import ResourcePrefix

if TYPE_CHECKING:
    from kubeforge.storage.objectstore import ObjectStore


def sweep_prefix(store: ObjectStore, prefix: ResourcePrefix, quiet_seconds: float) -> Optional[str]:
    """One sweep; None once the prefix was found empty, else why another sweep is due in `quiet_seconds`."""
    removed = store.delete_prefix(prefix.bucket, prefix.prefix + "/")
    if not removed:
        return None
    return (f"deletionPolicy Delete: removed {removed} objects under {prefix.uri()}; sweeping again in "
            f"{quiet_seconds:g} s for writes of workloads still stopping")
