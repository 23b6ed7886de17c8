"""A sandbox scenario driven on its own thread, so that its waiting (slow steps, hang timeouts, restarts) overlaps
another scenario's instead of adding to the suite's wall time. The scenario's own assertions run on that thread;
the test that owns it re-raises whatever it raised."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Mapping

import pytest


class BackgroundScenario:
    def __init__(self, name: str, drive: Callable[[], Any]):
        self.name = name
        self._drive = drive
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"scenario-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._drive()
        except BaseException as error:  # noqa: B902 - an assertion on this thread is the owning test's failure
            self._error = error

    def result(self, timeout: float) -> Any:
        """What the scenario returned; its exception, raised here, if it raised one."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"scenario {self.name} still running after {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value

    def wait_quietly(self, timeout: float) -> None:
        """At module teardown: let the thread end before the next module's scenarios start."""
        self._thread.join(timeout)


def selected(request: pytest.FixtureRequest, test_name: str) -> bool:
    """Whether this pytest run will run `test_name` (a scenario nobody will check is not worth starting)."""
    return any(item.originalname == test_name for item in request.session.items)


@contextlib.contextmanager
def scenarios_for_selected_tests(request: pytest.FixtureRequest, drives: Mapping[str, Callable[[], Any]],
                                 teardown_timeout: float = 600) -> Iterator[dict[str, BackgroundScenario]]:
    """Starts a scenario per test name in `drives` that this run selected, keyed by test name; at exit, lets each
    thread end before the next module's scenarios start."""
    scenarios = {test: BackgroundScenario(test, drive) for test, drive in drives.items() if selected(request, test)}
    try:
        yield scenarios
    finally:
        for scenario in scenarios.values():
            scenario.wait_quietly(teardown_timeout)
