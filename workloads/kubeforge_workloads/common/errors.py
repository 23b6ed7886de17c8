"""Failures a workload understands, the exit codes they map to, and the boundary that reports them."""

from __future__ import annotations

import atexit
import os
import sys
import threading
import traceback
from typing import Callable, NoReturn, Optional

from kubeforge.api.workload import ExitCode


class WorkloadError(Exception):
    exit_code = ExitCode.INFRASTRUCTURE
    reason = "Infrastructure"


class UserError(WorkloadError):
    """Bad spec, missing data or model, bad template: retrying cannot help."""

    exit_code = ExitCode.USER_ERROR
    reason = "UserError"


class DataError(UserError):
    """Invalid rows in a dataset (the message names file and line)."""

    exit_code = ExitCode.DATA_ERROR


class NodeCheckError(WorkloadError):
    exit_code = ExitCode.NODE_CHECK_FAILED
    reason = "NodeCheckFailed"


def classify_exception(error: BaseException) -> tuple[int, str, str]:
    """(exit code, reason, message) for an exception, looking through Ray's wrappers to the cause."""
    chain, seen = [], set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__ or getattr(current, "cause", None)
    for item in chain:
        if isinstance(item, WorkloadError):
            return int(item.exit_code), item.reason, str(item)
    text = " ".join(f"{type(e).__name__}: {e}" for e in chain)
    # Ray wraps worker exceptions in its own types; the original class name survives in the text.
    for name, cls in (("NodeCheckError", NodeCheckError), ("DataError", DataError), ("UserError", UserError)):
        if name in text:
            message = text.split(f"{name}: ", 1)[-1].splitlines()[0]
            return int(cls.exit_code), cls.reason, message
    if "OutOfMemoryError" in text or "out of memory" in text.lower():
        return int(ExitCode.OUT_OF_MEMORY), "OutOfMemory", text[:500]
    if any(name in text for name in ("EndpointConnectionError", "ConnectionError", "ReadTimeout", "ClientError")):
        return int(ExitCode.INFRASTRUCTURE), "Infrastructure", text[:500]
    return 1, "Unknown", text[:500]


def default_report(code: int, reason: str, message: str, tail: str) -> None:
    """Write attempts/<n>/failure.json for the resource named by KUBEFORGE_CONTEXT."""
    from kubeforge.api.workload import WorkloadContext
    from kubeforge_workloads.common.storage import WorkloadStorage

    WorkloadStorage(WorkloadContext.from_env()).write_failure(code, reason, message, tail)


def run_workload(main: Callable[[], None], report: Optional[Callable[[int, str, str, str], None]] = None) -> None:
    """Run `main`; on failure report (exit code, reason, message, traceback tail) and exit with the code.

    The default report writes the FailureReport to attempts/<n>/failure.json of the context's prefix."""
    report = report or default_report
    try:
        main()
    except SystemExit:
        raise
    except BaseException as error:  # the boundary: everything becomes a classified exit
        code, reason, message = classify_exception(error)
        tail = "".join(traceback.format_exception(error))[-4000:]
        try:
            report(code, reason, message, tail)
        except Exception as report_error:  # reporting must never hide the original failure
            print(f"kubeforge: could not write the failure report: {report_error}", file=sys.stderr)
        print(f"kubeforge: {reason}: {message}", file=sys.stderr)
        sys.exit(code)


def end_process(code: int) -> NoReturn:
    """Exit with `code` as the interpreter does (wait for the non-daemon threads, run the atexit handlers: Ray's
    shutdown, MLflow's flush, logging; flush the output) but without its teardown: with torch, transformers and
    MLflow loaded, freeing every module takes about 1.5 s after the last atexit handler (`import
    sentence_transformers` alone: 1.3 s), a tenth of a small VectorIndex re-sync, and nothing in it saves or
    reports anything."""
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to save
            pass
    os._exit(code)


def exit_code(exit: SystemExit) -> int:
    """The status sys.exit(x) would give the process: None is 0, an int is itself, anything else is printed and 1."""
    if exit.code is None or isinstance(exit.code, int):
        return exit.code or 0
    print(exit.code, file=sys.stderr)
    return 1
