"""kstatus conditions (controllers/conditions.py): what each write carries, when lastTransitionTime moves."""

from kubeforge.controllers.conditions import condition_status, set_condition, set_kstatus

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def test_set_condition_records_the_generation_it_observed():
    (condition,) = set_condition([], "Ready", True, "Succeeded", "done", 3, T0)
    assert condition == {"type": "Ready", "status": "True", "reason": "Succeeded", "message": "done",
                         "lastTransitionTime": T0, "observedGeneration": 3}


def test_set_kstatus_records_the_generation_on_every_condition():
    conditions = set_kstatus([], ready=False, reconciling=True, stalled=False, reason="Running", message="step 3",
                             generation=7, now=T0)
    assert [(c["type"], c["observedGeneration"]) for c in conditions] == \
        [("Ready", 7), ("Reconciling", 7), ("Stalled", 7)]
    updated = set_kstatus(conditions, ready=False, reconciling=True, stalled=False, reason="Running",
                          message="step 4", generation=8, now=T1)
    assert {c["observedGeneration"] for c in updated} == {8}


def test_last_transition_time_moves_only_when_the_status_flips():
    first = set_condition([], "Ready", False, "Running", "a", 1, T0)
    same = set_condition(first, "Ready", False, "Running", "b", 1, T1)
    assert same[0]["lastTransitionTime"] == T0 and same[0]["message"] == "b"
    flipped = set_condition(same, "Ready", True, "Succeeded", "c", 1, T1)
    assert flipped[0]["lastTransitionTime"] == T1 and flipped[0]["status"] == "True"
    unknown = set_condition(flipped, "Ready", "Unknown", "Launching", "", 1, T1)
    assert unknown[0]["status"] == "Unknown"


def test_a_previous_condition_without_a_transition_time_gets_now():
    (condition,) = set_condition([{"type": "Ready", "status": "False"}], "Ready", False, "Running", "", 1, T1)
    assert condition["lastTransitionTime"] == T1


def test_conditions_are_replaced_by_type_and_kept_in_kstatus_order():
    conditions = [{"type": "Custom", "status": "True"}, {"type": "Stalled", "status": "False"},
                  {"type": "Ready", "status": "False", "lastTransitionTime": T0}]
    result = set_condition(conditions, "Reconciling", True, "Running", "", 1, T1)
    assert [c["type"] for c in result] == ["Ready", "Reconciling", "Stalled", "Custom"]
    assert len(set_condition(result, "Ready", True, "Succeeded", "", 1, T1)) == 4
    reversed_order = [{"type": "Stalled", "status": "False"}, {"type": "Reconciling", "status": "True"}]
    assert [c["type"] for c in set_condition(reversed_order, "Ready", False, "Running", "", 1, T1)] == \
        ["Ready", "Reconciling", "Stalled"]


def test_set_kstatus_keeps_messages_on_true_conditions_and_ready_only():
    conditions = set_kstatus([], ready=False, reconciling=False, stalled=True, reason="Failed", message="boom",
                             generation=1, now=T0)
    by_type = {c["type"]: c for c in conditions}
    assert by_type["Ready"]["status"] == "False" and by_type["Ready"]["message"] == "boom"
    assert by_type["Stalled"]["status"] == "True" and by_type["Stalled"]["message"] == "boom"
    assert by_type["Reconciling"]["status"] == "False" and by_type["Reconciling"]["message"] == ""
    assert {c["reason"] for c in conditions} == {"Failed"}
    assert {c["lastTransitionTime"] for c in conditions} == {T0}


def test_condition_status_reads_one_type():
    obj = {"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Stalled", "status": "False"}]}}
    assert condition_status(obj, "Ready") == "True"
    assert condition_status(obj, "Stalled") == "False"
    assert condition_status(obj, "Reconciling") is None
    assert condition_status({}, "Ready") is None
    assert condition_status(None, "Ready") is None
    assert condition_status({"status": None}, "Ready") is None
    assert condition_status({"status": {"conditions": None}}, "Ready") is None
