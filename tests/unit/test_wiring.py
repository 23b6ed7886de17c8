"""The kopf layer: what it watches and indexes, and whom a change wakes. (The loop each resource runs is in
test_resource_loop.py; the wiring against a real API server in tests/integration/test_operator_events.py.)"""

import asyncio

import kopf

from kubeforge.controllers import wiring
from kubeforge.settings import Settings

SETTINGS = Settings(bucket="kubeforge")


def handlers(registry: kopf.OperatorRegistry):
    def plural(handler):
        return handler.selector.plural or handler.selector.any_name

    return {
        "daemons": {(plural(h), h.id) for h in registry._spawning.get_all_handlers()},
        "indexes": {(plural(h), h.id) for h in registry._indexing.get_all_handlers()},
        "events": {(plural(h), h.id) for h in registry._watching.get_all_handlers()},
    }


def test_every_batch_kind_runs_a_loop_and_every_child_and_kind_is_watched_into_an_index():
    registry = kopf.OperatorRegistry()
    wiring.register(SETTINGS, registry)
    found = handlers(registry)
    assert ("finetunes", "reconcile") in found["daemons"]
    assert ("servingendpoints", "reconcile") in found["daemons"]
    assert ("rayjobs", "rayjobs_by_owner") in found["indexes"]
    assert ("rayjobs", "wake-owner") in found["events"]
    assert ("rayservices", "rayservices_by_owner") in found["indexes"]
    assert ("rayservices", "wake-owner-rayservices") in found["events"]
    for plural in ("trainingjobs", "finetunes", "vectorindexes", "servingendpoints", "evalruns"):
        assert (plural, f"{plural}_by_name") in found["indexes"]  # dependencies are read from memory
        assert (plural, f"wake-{plural}") in found["events"]
    assert not any(h.id == "reconcile" for h in registry._spawning.get_all_handlers()
                   if isinstance(h, kopf._core.intents.handlers.TimerHandler))  # no polling timer


def test_a_child_event_wakes_its_owner_and_a_dependency_event_wakes_who_waits_on_it():
    async def scenario():
        wakeups = wiring.Wakeups()
        owner, other = wakeups.event_for("uid-a"), wakeups.event_for("uid-b")
        wakeups.wake("uid-a")
        assert owner.is_set() and not other.is_set()
        owner.clear()
        wakeups.watch_dependencies("uid-b", [("team", "FineTune", "base")])
        wakeups.resource_changed(("team", "FineTune", "base"))
        wakeups.resource_changed(("team", "FineTune", "unrelated"))
        assert other.is_set() and not owner.is_set()
        other.clear()
        wakeups.watch_dependencies("uid-b", [])  # no longer waiting (its run started)
        wakeups.resource_changed(("team", "FineTune", "base"))
        assert not other.is_set()
        wakeups.forget("uid-a")
        wakeups.wake("uid-a")  # a deleted resource's loop is gone: nothing to wake, no error
    asyncio.run(scenario())


def test_kopf_signals_a_loop_to_stop_and_waits_for_its_pass_before_cancelling_it():
    registry = kopf.OperatorRegistry()
    wiring.register(SETTINGS, registry)
    daemon = next(h for h in registry._spawning.get_all_handlers() if h.id == "reconcile")
    # without a backoff kopf cancels at once: a pass whose terminal write stopped it dies before its deletes
    assert daemon.cancellation_backoff and daemon.cancellation_backoff >= 5
