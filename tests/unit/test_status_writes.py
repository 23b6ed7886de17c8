"""Status is written only on change, removed keys are nulled in the merge patch, and kinds without a
controller say so instead of being silently ignored."""

from datetime import datetime, timezone

from kubeforge.controllers.observe import latest_status_patch, needs_observation
from kubeforge.controllers.unsupported import unsupported_status


def test_no_patch_when_nothing_changed_ignoring_kopf_bookkeeping():
    status = {"phase": "Running", "attempts": [{"number": 1}]}
    assert latest_status_patch({**status, "kopf": {"progress": {}}}, status) is None


def test_removed_keys_are_nulled():
    patch = latest_status_patch({"phase": "Retrying", "nextAttemptAt": "t"}, {"phase": "Running"})
    assert patch == {"phase": "Running", "nextAttemptAt": None}


def test_terminal_resources_are_not_observed_unless_stalled_on_spec():
    assert needs_observation({})
    assert needs_observation({"phase": "Running"})
    assert not needs_observation({"phase": "Succeeded"})
    assert not needs_observation({"phase": "Failed", "conditions": [
        {"type": "Stalled", "status": "True", "reason": "RetriesExhausted"}]})
    assert needs_observation({"phase": "Failed", "conditions": [
        {"type": "Stalled", "status": "True", "reason": "InvalidSpec"}]})


def test_unsupported_kind_is_stalled_with_an_explanation():
    obj = {"kind": "EvalRun", "metadata": {"generation": 3}, "status": {"kopf": {}}}
    status = unsupported_status(obj, datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert status["phase"] == "Pending" and status["observedGeneration"] == 3
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "ControllerNotAvailable"
    assert "no controller for EvalRun" in stalled["message"] and "kopf" not in status
