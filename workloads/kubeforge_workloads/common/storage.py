"""Object-store access for workloads: the resource prefix, progress, failure reports, outputs, and parallel
transfers (checkpoints are common/checkpoint.py's)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from kubeforge.api.workload import WorkloadContext
from kubeforge.storage.layout import ResourcePrefix, parse_s3_uri
from kubeforge.storage.objectstore import S3ObjectStore
from kubeforge.storage.progress import FailureReport, Progress


TRANSFER_CONCURRENCY = 8
"""Files in flight at once (and parts of one large file): checkpoints are a handful of files, sent side by side."""


def transfer_manager(client):
    """boto3's transfer manager: parallel, multipart, retried transfers; use it as a context manager."""
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    return create_transfer_manager(client, TransferConfig(max_concurrency=TRANSFER_CONCURRENCY,
                                                          use_threads=True))


def upload_files(client, bucket: str, files: dict[str, Path]) -> None:
    """Upload key -> local path, side by side; the first error is raised once every transfer has ended, so
    nothing keeps writing behind a failure."""
    with transfer_manager(client) as manager:
        futures = [manager.upload(str(path), bucket, key) for key, path in sorted(files.items())]
    for future in futures:
        future.result()


def download_files(client, bucket: str, files: dict[str, Path]) -> None:
    """Download key -> local path (parent folders created), side by side; errors as upload_files."""
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    with transfer_manager(client) as manager:
        futures = [manager.download(bucket, key, str(path)) for key, path in sorted(files.items())]
    for future in futures:
        future.result()


def upload_tree(client, local_dir: Path, bucket: str, key_prefix: str) -> int:
    """Upload every file under local_dir to key_prefix + its relative path; returns how many."""
    files = {key_prefix + path.relative_to(local_dir).as_posix(): path
             for path in sorted(local_dir.rglob("*")) if path.is_file()}
    upload_files(client, bucket, files)
    return len(files)


def utcnow() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class WorkloadStorage:
    def __init__(self, context: WorkloadContext, store: Optional[S3ObjectStore] = None):
        self.context = context
        self.store = store or S3ObjectStore()
        self.prefix = ResourcePrefix(context.storage.bucket, context.storage.prefix)

    # progress and failures
    def write_progress(self, progress: Progress) -> None:
        self.store.put(self.prefix.bucket, self.prefix.progress_key, progress.to_json().encode())

    def read_progress(self) -> Optional[Progress]:
        raw = self.store.get(self.prefix.bucket, self.prefix.progress_key)
        return Progress.model_validate_json(raw) if raw else None

    def write_failure(self, code: int, reason: str, message: str, tail: str) -> None:
        report = FailureReport(attempt=self.context.attempt, exit_code=code, reason=reason, message=message,
                               traceback_tail=tail)
        self.store.put(self.prefix.bucket, self.prefix.failure_key(self.context.attempt),
                       report.model_dump_json(by_alias=True).encode())

    def read_failure(self) -> Optional[FailureReport]:
        """This attempt's failure report, if one was written."""
        raw = self.store.get(self.prefix.bucket, self.prefix.failure_key(self.context.attempt))
        return FailureReport.model_validate_json(raw) if raw else None

    # outputs
    def upload_dir(self, local_dir: Path, *parts: str) -> str:
        key = self.prefix.output_key(*parts)
        upload_tree(self.store.client, local_dir, self.prefix.bucket, key + "/")
        return f"s3://{self.prefix.bucket}/{key}"

    def put_json(self, value: dict, *parts: str) -> None:
        self.store.put(self.prefix.bucket, self.prefix.output_key(*parts), json.dumps(value, indent=1).encode())

    def get_json(self, *parts: str) -> Optional[dict]:
        raw = self.store.get(self.prefix.bucket, self.prefix.output_key(*parts))
        return json.loads(raw) if raw else None


def object_exists(store: S3ObjectStore, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        store.client.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def download_uri(store: S3ObjectStore, uri: str, local_dir: Path) -> Path:
    """Download an s3:// object (returns the file) or every object under the prefix (returns local_dir)."""
    from kubeforge_workloads.common.errors import UserError

    bucket, key = parse_s3_uri(uri)
    local_dir.mkdir(parents=True, exist_ok=True)
    if key and not key.endswith("/") and object_exists(store, bucket, key):
        target = local_dir / os.path.basename(key)
        store.client.download_file(bucket, key, str(target))
        return target
    root = key.rstrip("/") + "/" if key.strip("/") else ""
    keys = [k for k in store.list(bucket, root) if not k.endswith("/")]
    if not keys:
        raise UserError(f"{uri} does not exist in the object store")
    download_files(store.client, bucket, {item: local_dir / item[len(root):] for item in keys})
    return local_dir


def run_entrypoint(run: Callable[[WorkloadContext, "WorkloadStorage"], object], what: str) -> None:
    """A RayJob entrypoint: the context from the environment, `run` under run_workload (a failure is classified,
    reported to the attempt's failure.json and becomes the exit code), then how long it took; the process ends
    without the interpreter's teardown (end_process)."""
    from kubeforge_workloads.common.errors import end_process, exit_code, run_workload

    context = WorkloadContext.from_env()
    storage = WorkloadStorage(context)
    started = time.monotonic()
    try:
        run_workload(lambda: run(context, storage), storage.write_failure)
    except SystemExit as exit:
        end_process(exit_code(exit))
    print(f"kubeforge: {what} finished in {time.monotonic() - started:.1f}s", flush=True)
    end_process(0)
