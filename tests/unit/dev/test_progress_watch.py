"""`kubeforge dev demo`'s board: one line per visible change, final only when every applied resource is, and the
failures it must exit non-zero for."""

from __future__ import annotations

import yaml

from kubeforge.dev.progress_watch import HEADER, ProgressBoard, Ref, applied_refs, verdict

FT = Ref("FineTune", "default", "quickstart")
VI = Ref("VectorIndex", "default", "docs")


def resource(ref: Ref, phase=None, summary=None, restarts=0, reason=None, ready="False", generation=1,
             observed=1, stalled=None) -> dict:
    conditions = [{"type": "Ready", "status": ready, "reason": reason or ""}]
    if stalled:
        conditions.append({"type": "Stalled", "status": "True", "reason": stalled, "message": "bad spec"})
    status = {"phase": phase, "restarts": restarts, "observedGeneration": observed, "conditions": conditions}
    if summary:
        status["progress"] = {"summary": summary}
    return {"apiVersion": "kubeforge.dev/v1alpha1", "kind": ref.kind,
            "metadata": {"name": ref.name, "namespace": ref.namespace, "generation": generation},
            "status": status if phase else {}}


def clock(ticks):
    values = iter(ticks)
    return lambda: next(values)


def test_a_line_per_change_in_the_columns_and_none_for_repeats():
    board = ProgressBoard([FT], clock=clock([100, 100, 112, 140, 141]))
    first = board.observe("ADDED", resource(FT))
    assert first.split() == ["0s", "FineTune/quickstart", "-", "-", "0", "-"]
    running = board.observe("MODIFIED", resource(FT, "Running", "5/20 (25%)", reason="Running"))
    assert running.split() == ["12s", "FineTune/quickstart", "Running", "5/20", "(25%)", "0", "Running"]
    assert board.observe("MODIFIED", resource(FT, "Running", "5/20 (25%)", reason="Running")) is None
    retry = board.observe("MODIFIED", resource(FT, "Retrying", "5/20 (25%)", restarts=1, reason="Retrying"))
    assert retry.split()[2:] == ["Retrying", "5/20", "(25%)", "1", "Retrying"]
    columns = HEADER.split()
    assert columns == ["TIME", "KIND/NAME", "PHASE", "PROGRESS", "RESTARTS", "REASON"]
    assert HEADER.index("PHASE") == retry.index("Retrying")  # lines line up under the header


def test_done_only_when_every_followed_resource_is_final():
    board = ProgressBoard([FT, VI])
    board.observe("MODIFIED", resource(FT, "Succeeded", "20/20 (100%)", ready="True", reason="Succeeded"))
    assert not board.done and board.pending() == [VI]
    board.observe("MODIFIED", resource(VI, "Running", "3/9", reason="Running"))
    assert not board.done
    board.observe("MODIFIED", resource(VI, "Ready", ready="True", reason="Ready"))
    assert board.done and board.failures() == {}


def test_resources_not_applied_are_neither_printed_nor_waited_for():
    board = ProgressBoard([FT])
    other = Ref("FineTune", "default", "someone-elses")
    assert board.observe("ADDED", resource(other, "Running")) is None
    assert board.observe("ADDED", resource(Ref("FineTune", "team-b", "quickstart"), "Succeeded")) is None
    assert not board.done


def test_failed_stalled_and_deleted_end_the_wait_as_failures():
    board = ProgressBoard([FT, VI, Ref("EvalRun", "default", "gone")])
    board.observe("MODIFIED", resource(FT, "Failed", restarts=3, reason="RetriesExhausted"))
    board.observe("MODIFIED", resource(VI, "Pending", stalled="ControllerNotAvailable"))
    assert not board.done
    assert board.observe("DELETED", resource(Ref("EvalRun", "default", "gone"), "Running")).split()[2] == "Deleted"
    assert board.done
    failures = {str(ref): why for ref, why in board.failures().items()}
    assert failures["FineTune/quickstart"] == "failed (RetriesExhausted)"
    assert failures["VectorIndex/docs"].startswith("stalled (ControllerNotAvailable)")
    assert failures["EvalRun/gone"] == "deleted"


def test_status_of_an_earlier_generation_is_not_final():
    assert verdict(resource(FT, "Succeeded", ready="True", generation=2, observed=1)) is None
    assert verdict(resource(VI, "Ready", ready="True", generation=3, observed=2)) is None
    assert verdict(resource(VI, "Ready", ready="True", generation=3, observed=3)) == "ready"
    assert verdict(resource(VI, "Ready", ready="False", generation=3, observed=3)) is None


def test_applied_refs_follow_only_kubeforge_kinds_with_their_namespace():
    manifest = """
apiVersion: v1
kind: Secret
metadata: {name: creds}
---
apiVersion: kubeforge.dev/v1alpha1
kind: FineTune
metadata: {name: quickstart}
---
---
apiVersion: kubeforge.dev/v1alpha1
kind: VectorIndex
metadata: {name: docs, namespace: team-a}
"""
    assert applied_refs(yaml.safe_load_all(manifest), "default") == [
        FT, Ref("VectorIndex", "team-a", "docs")]
