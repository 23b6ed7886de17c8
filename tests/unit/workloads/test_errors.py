"""Exceptions map to the exit codes the operator classifies, also through Ray's wrappers."""

import pytest

from kubeforge.api.workload import ExitCode
from kubeforge_workloads.common.errors import (DataError, NodeCheckError, UserError, classify_exception,
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
