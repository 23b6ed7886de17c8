"""How Flux reads each kind's status: kstatus' generic rules for a custom resource, transcribed into a small
reader, applied to statuses the real reconcile functions write in every phase (tests/unit/status_samples.py).

Flux's Kustomization `wait: true` / `healthChecks` computes health with kstatus (sigs.k8s.io/cli-utils
pkg/kstatus/status): Current is healthy, InProgress is waited on, Failed fails the reconciliation. The rules, from
kubernetes-sigs/cli-utils at 5895ad6c17dd06b99c1e5c8af17e2b12a3504fad:

- status.go `Compute`: `checkGenericProperties` first; then `GetLegacyConditionsFn` (core.go), whose table
  `legacyTypes` holds only built-in kinds (Service, Pod, Secret, PersistentVolumeClaim, apps/*, extensions/*,
  policy/PodDisruptionBudget, batch/CronJob, ConfigMap, batch/Job, apiextensions.k8s.io/CustomResourceDefinition),
  so none for kubeforge.dev; then `checkReadyCondition`; else Current ("Resource is current").
- generic.go `checkGenericProperties`: metadata.deletionTimestamp set -> Terminating; then `checkGeneration`;
  then the first of, in condition order, Reconciling=True -> InProgress, Stalled=True -> Failed.
- generic.go `checkGeneration`: only when metadata.generation and status.observedGeneration are both present,
  and they differ -> InProgress (reason LatestGenerationNotObserved).
- status.go `checkReadyCondition`: the first Ready condition: True -> Current, False or Unknown -> InProgress.
"""

from __future__ import annotations

import copy

import pytest

from tests.unit.status_samples import all_samples

SAMPLES = all_samples()
LEGACY_GROUP_KINDS = {"Service", "Pod", "Secret", "PersistentVolumeClaim", "apps/StatefulSet", "apps/DaemonSet",
                      "extensions/DaemonSet", "apps/Deployment", "extensions/Deployment", "apps/ReplicaSet",
                      "extensions/ReplicaSet", "policy/PodDisruptionBudget", "batch/CronJob", "ConfigMap",
                      "batch/Job", "apiextensions.k8s.io/CustomResourceDefinition"}


def kstatus(obj: dict) -> tuple[str, str]:
    """(status, message) as kstatus' Compute gives them for a custom resource."""
    group = obj["apiVersion"].rpartition("/")[0]
    assert f"{group}/{obj['kind']}" not in LEGACY_GROUP_KINDS  # GetLegacyConditionsFn: no kind-specific rules
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating", "Resource scheduled for deletion"
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress", f"{obj['kind']} generation is {generation}, but latest observed generation is {observed}"
    conditions = status.get("conditions") or []
    for condition in conditions:
        if condition.get("type") == "Reconciling" and condition.get("status") == "True":
            return "InProgress", condition.get("message", "")
        if condition.get("type") == "Stalled" and condition.get("status") == "True":
            return "Failed", condition.get("message", "")
    for condition in conditions:
        if condition.get("type") != "Ready":
            continue
        if condition.get("status") == "True":
            return "Current", "Resource is Ready"
        if condition.get("status") in ("False", "Unknown"):
            return "InProgress", condition.get("message", "")
    return "Current", "Resource is current"


@pytest.mark.parametrize("sample", SAMPLES, ids=[f"{s.kind}:{s.case}" for s in SAMPLES])
def test_each_phase_of_each_kind_reads_as_flux_needs(sample):
    status, message = kstatus(sample.obj)
    assert status == sample.kstatus, (sample.kind, sample.case, status, message)
    if status == "Failed":  # Flux reports the Stalled message as the reason the Kustomization is not ready
        assert message == sample.obj["status"]["message"] and message


def test_every_kind_reports_the_generation_it_observed_so_a_spec_change_is_waited_for():
    for sample in SAMPLES:
        if sample.case != "no status":
            assert sample.obj["status"]["observedGeneration"] is not None, (sample.kind, sample.case)


def test_a_stalled_resource_never_also_reads_reconciling():
    """kstatus takes the first of Reconciling=True and Stalled=True in condition order, so a resource with both
    would read by accident of ordering; the operator sets them together and never both."""
    for sample in SAMPLES:
        conditions = {c["type"]: c["status"] for c in (sample.obj.get("status") or {}).get("conditions", [])}
        assert not (conditions.get("Reconciling") == "True" and conditions.get("Stalled") == "True"), sample.case


def test_a_resource_being_deleted_is_terminating():
    ready = copy.deepcopy(next(s.obj for s in SAMPLES if s.kstatus == "Current" and s.case != "no status"))
    ready["metadata"]["deletionTimestamp"] = "2026-12-03T12:00:00Z"
    assert kstatus(ready)[0] == "Terminating"
