"""Exceptions map to the exit codes the operator classifies, also through Ray's wrappers."""

import subprocess
import sys
import textwrap

import pytest

from kubeforge.api.workload import ExitCode
from kubeforge_workloads.common.errors import (DataError, NodeCheckError, UserError, classify_exception, exit_code,
                                               run_workload)


class RayWrapper(Exception):
    """Stands in for ray.train.WorkerGroupError: the original exception survives only as text."""


@pytest.mark.parametrize("error,code,reason", [
    (UserError("spec.baseModel.uri x has no config.json"), ExitCode.USER_ERROR, "UserError"),
    (DataError("line 3: missing field"), ExitCode.DATA_ERROR, "UserError"),
    (NodeCheckError("no CUDA device"), ExitCode.NODE_CHECK_FAILED, "NodeCheckFailed"),
    (RayWrapper("Training failed:\nkubeforge_workloads.common.errors.NodeCheckError: forced"),
     ExitCode.NODE_CHECK_FAILED, "NodeCheckFailed"),
    (RayWrapper("worker: DataError: s3://b/t.jsonl: 2 invalid row(s)"), ExitCode.DATA_ERROR, "UserError"),
    (RuntimeError("CUDA out of memory. Tried to allocate"), ExitCode.OUT_OF_MEMORY, "OutOfMemory"),
    (RuntimeError("something else"), 1, "Unknown"),
    (RayWrapper("torch.OutOfMemoryError: CUDA error"), ExitCode.OUT_OF_MEMORY, "OutOfMemory"),
    (ConnectionError("connection reset by peer"), ExitCode.INFRASTRUCTURE, "Infrastructure"),
])
def test_classify_exception(error, code, reason):
    got_code, got_reason, message = classify_exception(error)
    assert (got_code, got_reason) == (int(code), reason) and message


def test_cause_chain_is_followed():
    try:
        try:
            raise DataError("line 7: not JSON")
        except DataError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert classify_exception(outer)[:2] == (int(ExitCode.DATA_ERROR), "UserError")


def test_run_workload_reports_and_exits_with_the_code():
    reports = []

    def broken():
        raise UserError("missing dataset s3://b/nope.jsonl")

    with pytest.raises(SystemExit) as info:
        run_workload(broken, lambda *args: reports.append(args))
    assert info.value.code == ExitCode.USER_ERROR
    code, reason, message, tail = reports[0]
    assert (code, reason, message) == (64, "UserError", "missing dataset s3://b/nope.jsonl") and "Traceback" in tail


def test_end_process_waits_for_threads_runs_the_atexit_handlers_flushes_the_output_and_keeps_the_code(tmp_path):
    marker = tmp_path / "atexit-ran"
    finished = tmp_path / "thread-finished"
    script = textwrap.dedent(f"""
        import atexit, sys, threading, time
        from kubeforge_workloads.common.errors import end_process
        atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))
        threading.Thread(target=lambda: (time.sleep(0.5), open({str(finished)!r}, "w").write("done"))).start()
        sys.stdout.write("a line still in the buffer")
        sys.stderr.write("and one on stderr")
        end_process(7)
        print("never reached")
    """)
    ended = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (ended.returncode, ended.stdout, ended.stderr) == (7, "a line still in the buffer", "and one on stderr")
    assert marker.read_text() == "ran" and finished.read_text() == "done"  # as a normal exit, it waits for them


@pytest.mark.parametrize("code,expected", [(None, 0), (0, 0), (64, 64), ("a message", 1)])
def test_exit_code_is_what_sys_exit_gives_the_process(code, expected, capsys):
    assert exit_code(SystemExit(code)) == expected
    assert capsys.readouterr().err == ("a message\n" if code == "a message" else "")
