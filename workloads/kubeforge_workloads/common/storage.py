"""Object-store access for workloads: the resource prefix, progress, checkpoints with manifests, outputs."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from kubeforge.api.workload import WorkloadContext
from kubeforge.storage.layout import MANIFEST_FILE, ResourcePrefix, committed_steps, parse_s3_uri
from kubeforge.storage.objectstore import S3ObjectStore
from kubeforge.storage.progress import CheckpointManifest, FailureReport, Progress


CHAOS_MANIFEST_DELAY_ENV = "KUBEFORGE_CHAOS_MANIFEST_DELAY_SECONDS"  # widens the torn-checkpoint window for tests
TRANSFER_THREADS = 8  # checkpoints are a handful of files: send them side by side, not one after another


def in_parallel(function, items: list) -> None:
    """Apply function to every item on a small thread pool (boto3 clients are thread-safe); re-raise the first
    error only after every transfer finished, so nothing is left running behind a failure."""
    if len(items) <= 1:
        for item in items:
            function(item)
        return
    with ThreadPoolExecutor(max_workers=min(TRANSFER_THREADS, len(items))) as pool:
        futures = [pool.submit(function, item) for item in items]
    for future in futures:
        future.result()


def upload_tree(client, local_dir: Path, bucket: str, key_prefix: str, names: Optional[list[str]] = None) -> int:
    """Upload every file under local_dir (or only those whose relative path is in `names`) to key_prefix +
    relative path, side by side; returns how many."""
    paths = [p for p in sorted(local_dir.rglob("*")) if p.is_file()
             and (names is None or p.relative_to(local_dir).as_posix() in names)]
    in_parallel(lambda path: client.upload_file(str(path), bucket, key_prefix + path.relative_to(local_dir).as_posix()),
                paths)
    return len(paths)


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

    # checkpoints
    def latest_committed_checkpoint(self) -> Optional[int]:
        """The highest step whose MANIFEST.json exists; torn checkpoints (no manifest) are ignored."""
        steps = committed_steps(self.prefix, self.store.list(self.prefix.bucket, self.prefix.checkpoints_key))
        return steps[-1] if steps else None

    latest_checkpoint = latest_committed_checkpoint

    def clear_checkpoint(self, step: int) -> None:
        """Remove what an earlier, interrupted attempt left under step-<n>/ before writing it again."""
        self.store.delete_prefix(self.prefix.bucket, self.prefix.checkpoint_key(step))

    def upload_checkpoint_files(self, step: int, local_dir: Path, names: Optional[list[str]] = None) -> None:
        """Upload files of a checkpoint without committing it (other ranks' RNG states, for instance)."""
        upload_tree(self.store.client, local_dir, self.prefix.bucket, self.prefix.checkpoint_key(step), names)

    def commit_checkpoint(self, step: int, epoch: float, local_dir: Path, uploaded_by_others: tuple[str, ...] = ()
                          ) -> str:
        """Upload every file, then the manifest: a reader never sees a checkpoint without all its files.

        `uploaded_by_others` names the files other ranks uploaded before (upload_checkpoint_files); they must all
        be there, and the manifest lists them too."""
        base = self.prefix.checkpoint_key(step)
        self.upload_checkpoint_files(step, local_dir)
        files = {path.relative_to(local_dir).as_posix(): path.stat().st_size
                 for path in local_dir.rglob("*") if path.is_file()}
        if uploaded_by_others:
            remote = {}
            for page in self.store.client.get_paginator("list_objects_v2").paginate(Bucket=self.prefix.bucket,
                                                                                     Prefix=base):
                remote.update({item["Key"][len(base):]: int(item["Size"]) for item in page.get("Contents", [])})
            missing = sorted(set(uploaded_by_others) - set(remote))
            if missing:
                raise IOError(f"checkpoint step-{step} lacks files other ranks should have uploaded: {missing}")
            files.update({name: remote[name] for name in uploaded_by_others})
        delay = float(os.environ.get(CHAOS_MANIFEST_DELAY_ENV) or 0)
        if delay:  # every file is up, the manifest is not: a kill now leaves a torn checkpoint
            time.sleep(delay)
        manifest = CheckpointManifest(step=step, epoch=epoch, attempt=self.context.attempt, files=files,
                                      created_at=utcnow())
        self.store.put(self.prefix.bucket, base + MANIFEST_FILE, manifest.model_dump_json(by_alias=True).encode())
        return f"s3://{self.prefix.bucket}/{base}"

    def download_checkpoint(self, step: int, local_dir: Path) -> str:
        base = self.prefix.checkpoint_key(step)
        manifest = CheckpointManifest.model_validate_json(self.store.get(self.prefix.bucket, base + MANIFEST_FILE))

        def download(item: tuple[str, int]) -> None:
            relative, size = item
            target = local_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            self.store.client.download_file(self.prefix.bucket, base + relative, str(target))
            if target.stat().st_size != size:
                raise IOError(f"checkpoint file {relative} has {target.stat().st_size} bytes, manifest says {size}")

        in_parallel(download, sorted(manifest.files.items()))
        return f"s3://{self.prefix.bucket}/{base}"

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
    for item in keys:
        target = local_dir / item[len(root):]
        target.parent.mkdir(parents=True, exist_ok=True)
        store.client.download_file(bucket, item, str(target))
    return local_dir
