"""The contract between operator and workload: the context document and the exit codes.

The operator serialises a `WorkloadContext` into the RayJob's runtime env (env var
`KUBEFORGE_CONTEXT`); the entrypoint validates it with the same models the CRD came from.
"""

from __future__ import annotations

import os
from enum import IntEnum
from typing import Any, Optional

from pydantic import BaseModel

CONTEXT_ENV = "KUBEFORGE_CONTEXT"


class ExitCode(IntEnum):
    """Exit codes workloads use so the operator can classify failures without parsing logs."""

    OK = 0
    USER_ERROR = 64          # EX_USAGE: bad spec, missing data, bad template: fail fast, no retry
    DATA_ERROR = 65          # EX_DATAERR: invalid rows in the dataset: no retry
    NODE_CHECK_FAILED = 69   # EX_UNAVAILABLE: pre-flight node check failed: retry elsewhere
    OUT_OF_MEMORY = 71       # host or device OOM caught in-process: retry (maybe with smaller batch)
    INFRASTRUCTURE = 75      # EX_TEMPFAIL: storage/network hiccup: retry


class StorageContext(BaseModel):
    bucket: str
    prefix: str
    """Resource prefix under the bucket, e.g. default/FineTune/demo."""


class MlflowContext(BaseModel):
    experiment: str
    run_name: str
    tracking_uri: Optional[str] = None
    """None means the workload uses MLFLOW_TRACKING_URI from its environment."""


class WorkloadContext(BaseModel):
    kind: str
    namespace: str
    name: str
    uid: str
    generation: int
    attempt: int
    spec: dict[str, Any]
    """The resource spec as stored by the API server (camelCase, defaults applied)."""
    storage: StorageContext
    mlflow: MlflowContext
    inputs: dict[str, Any] = {}
    """What the operator resolved from the resource's dependencies (a FineTune's model URI, a VectorIndex's
    version, an endpoint's URL), keyed as the kind's `inputs` hook names them; also recorded in status.inputs."""

    @classmethod
    def from_env(cls, environ: Optional[dict] = None) -> "WorkloadContext":
        environ = os.environ if environ is None else environ
        if CONTEXT_ENV not in environ:
            raise RuntimeError(f"{CONTEXT_ENV} is not set: workloads are launched by the Kubeforge operator")
        return cls.model_validate_json(environ[CONTEXT_ENV])
