"""Checkpoints in the object store (DESIGN.md §3.4): every rank contributes its files, one rank writes the
manifest last, so a step counts as committed only once its MANIFEST.json exists.

    checkpoints/step-<n>/<files of every rank>
    checkpoints/step-<n>/MANIFEST.json   CheckpointManifest (what the operator reads) plus filesByRank

Retention (`keep_latest`) acts in the object store after each commit, on a thread of its own (nobody waits for
old checkpoints to be deleted; wait() and close() raise its error). Commits, and the other ranks' contributions,
can run on a background thread, one at a time per rank, so a large upload costs the steps it overlaps instead of
stalling them: the committing rank then waits (in its background thread) until every other rank's files are in the
object store before it writes the manifest. An S3 object appears whole or not at all, so a file that is listed is
a file that is complete.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

from boto3.s3.transfer import TransferConfig, create_transfer_manager

from kubeforge.storage.layout import MANIFEST_FILE, committed_steps
from kubeforge.storage.progress import CheckpointManifest
from kubeforge_workloads.common import chaos
from kubeforge_workloads.common.storage import TRANSFER_CONCURRENCY, WorkloadStorage, download_files, utcnow

FILES_BY_RANK = "filesByRank"
"""Manifest key beside CheckpointManifest's own fields (the operator's model ignores it): rank -> its files."""
_STEP_DIR = re.compile(r"step-(\d+)/")
CONTRIBUTIONS_TIMEOUT_SECONDS = 1800.0
"""How long a background commit waits for other ranks' background contributions: a rank whose upload failed
raises at its own next checkpoint (and its worker group restarts), so this only bounds a commit nobody ends."""
_CONTRIBUTIONS_POLL_SECONDS = 0.05  # one small list request; a commit waits at most this long past the last file


def transfer_concurrency_per_rank(local_ranks: int) -> int:
    """Each of `local_ranks` ranks on one machine gets its share of TRANSFER_CONCURRENCY (at least 2): the same
    transfers in flight per machine however many ranks it runs (measured with 2 ranks: 8 each made a 130 MB
    checkpoint's uploads 0.80x one transfer manager's, 4 each 0.87x)."""
    return max(2, TRANSFER_CONCURRENCY // max(1, local_ranks))


@dataclass
class Commit:
    """One committed checkpoint as this rank measured it: seconds from the start of its commit (its own upload,
    waiting for the other ranks' files) to the manifest written, and the bytes the manifest lists."""

    step: int
    seconds: float
    bytes: int


def local_files(local_dir: Path) -> list[str]:
    """Every file under local_dir, as the relative paths a manifest lists."""
    return sorted(path.relative_to(local_dir).as_posix() for path in local_dir.rglob("*") if path.is_file())


class Checkpointer:
    """latest() / load(step) / save(step, files_by_rank) over a resource's prefix.

    `rank` is the rank of this process: in save(), its files are uploaded from the local directory, while every
    other rank's files must already have been contributed (contribute()) by that rank."""

    def __init__(self, storage: WorkloadStorage, rank: int = 0, keep_latest: Optional[int] = None,
                 transfer_concurrency: int = TRANSFER_CONCURRENCY):
        """transfer_concurrency: this rank's transfers in flight at once; ranks that share a machine (and its
        network) share TRANSFER_CONCURRENCY (transfer_concurrency_per_rank) instead of each starting as many."""
        if keep_latest is not None and keep_latest < 1:
            raise ValueError(f"keep_latest must be at least 1 (the newest committed checkpoint), got {keep_latest}")
        self.storage, self.rank, self.keep_latest = storage, rank, keep_latest
        self.prefix, self.client = storage.prefix, storage.store.client
        self.transfer_config = TransferConfig(max_concurrency=transfer_concurrency, use_threads=True)
        self._committer: Optional[ThreadPoolExecutor] = None
        self._in_flight: Optional[Future] = None
        self._janitor: Optional[ThreadPoolExecutor] = None
        self._pruning: Optional[Future] = None
        self.commits: list[Commit] = []
        """Every checkpoint this rank committed, in order (what the training loop compares its stalls with)."""

    # reading
    def committed(self) -> list[int]:
        """Committed steps, ascending; torn ones (files without a manifest) never count."""
        return committed_steps(self.prefix, self.storage.store.list(self.prefix.bucket, self.prefix.checkpoints_key))

    def latest(self) -> Optional[int]:
        steps = self.committed()
        return steps[-1] if steps else None

    def uri(self, step: int) -> str:
        return f"s3://{self.prefix.bucket}/{self.prefix.checkpoint_key(step)}"

    def manifest(self, step: int) -> dict:
        """The manifest as written: CheckpointManifest's fields (camelCase) and filesByRank."""
        raw = self.storage.store.get(self.prefix.bucket, self.prefix.manifest_key(step))
        if raw is None:
            raise FileNotFoundError(f"checkpoint step-{step} is not committed (no {MANIFEST_FILE})")
        return json.loads(raw)

    def load(self, step: int, local_dir: Path, ranks: Optional[Iterable[int]] = None) -> str:
        """Download a committed checkpoint (only the files of `ranks`, if given) into local_dir; every file is
        checked against the size the manifest recorded. Returns the checkpoint's URI."""
        files = self.files(step, local_dir)
        names = files.names
        if ranks is not None:
            by_rank = files.manifest.get(FILES_BY_RANK) or {}
            wanted = {name for rank in ranks for name in by_rank.get(str(rank), [])}
            names = [name for name in names if name in wanted]
        files.fetch(names)
        return self.uri(step)

    def files(self, step: int, local_dir: Path) -> "CheckpointFiles":
        """A committed checkpoint's files, downloaded into local_dir only when asked for (fetch())."""
        return CheckpointFiles(self, step, self.manifest(step), local_dir)

    # writing
    def clear(self, step: int) -> None:
        """Remove what an interrupted writer left under step-<n>/ before writing it again."""
        self.storage.store.delete_prefix(self.prefix.bucket, self.prefix.checkpoint_key(step))

    def contribute(self, step: int, local_dir: Path, names: Iterable[str]) -> None:
        """Upload this rank's files of a checkpoint without committing it (the committing rank lists them)."""
        base = self.prefix.checkpoint_key(step)
        self.upload({base + name: local_dir / name for name in names})

    def upload(self, files: Mapping[str, Path]) -> None:
        """key -> local path, side by side with this rank's transfer concurrency; the first error is raised once
        every transfer has ended."""
        with create_transfer_manager(self.client, self.transfer_config) as manager:
            futures = [manager.upload(str(path), self.prefix.bucket, key) for key, path in sorted(files.items())]
        for future in futures:
            future.result()

    def save(self, step: int, files_by_rank: Mapping[int, Iterable[str]], local_dir: Path, epoch: float = 0.0,
             contributions_timeout: float = 0.0) -> str:
        """Commit step: upload this rank's files from local_dir, check every other rank's contribution is there
        (waiting up to contributions_timeout seconds for contributions still uploading), write the manifest last,
        then apply retention. Returns the checkpoint's URI."""
        started = time.monotonic()
        files_by_rank = {int(rank): sorted(names) for rank, names in files_by_rank.items()}
        base = self.prefix.checkpoint_key(step)
        own = files_by_rank.get(self.rank, [])
        self.upload({base + name: local_dir / name for name in own})
        sizes = {name: (local_dir / name).stat().st_size for name in own}
        others = {name for rank, names in files_by_rank.items() if rank != self.rank for name in names}
        if others:
            sizes.update(self._await_contributions(step, others, started + contributions_timeout))
        delay = chaos.manifest_delay_seconds(step)
        if delay:  # every file is up, the manifest is not: a kill now leaves a torn checkpoint
            time.sleep(delay)
        manifest = CheckpointManifest(step=step, epoch=epoch, attempt=self.storage.context.attempt, files=sizes,
                                      created_at=utcnow()).model_dump(by_alias=True)
        manifest[FILES_BY_RANK] = {str(rank): names for rank, names in sorted(files_by_rank.items())}
        self.write_manifest(step, manifest)
        self.commits.append(Commit(step, time.monotonic() - started, sum(sizes.values())))
        self.prune_in_background()
        return self.uri(step)

    def prune_in_background(self) -> None:
        """Retention after a commit, off its critical path (the checkpoint is committed already; deleting the old
        ones is nobody's wait); its error is raised by the next wait() or close()."""
        if self.keep_latest is None:
            return
        self._raise_failed_prune()
        if self._janitor is None:
            self._janitor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubeforge-retention")
        self._pruning = self._janitor.submit(self.prune)

    def _raise_failed_prune(self) -> None:
        pruning, self._pruning = self._pruning, None
        if pruning is not None:
            pruning.result()

    def write_manifest(self, step: int, manifest: dict) -> None:
        """The commit itself: the one object whose presence makes step a committed checkpoint."""
        self.storage.store.put(self.prefix.bucket, self.prefix.manifest_key(step), json.dumps(manifest).encode())

    def _await_contributions(self, step: int, names: set[str], deadline: float) -> dict[str, int]:
        """The sizes of other ranks' files once all are in the object store; IOError naming the missing ones
        past the deadline."""
        base = self.prefix.checkpoint_key(step)
        while True:
            remote = self._remote_sizes(base)
            missing = sorted(names - set(remote))
            if not missing:
                return {name: remote[name] for name in names}
            if time.monotonic() >= deadline:
                raise IOError(f"checkpoint step-{step} lacks files other ranks should have contributed: {missing}")
            time.sleep(_CONTRIBUTIONS_POLL_SECONDS)

    def prune(self) -> list[int]:
        """Keep the newest `keep_latest` committed checkpoints in the object store; delete every step directory
        (committed or torn) below the oldest one kept. Steps above it are never touched: the newest committed
        one, and any being written, are always above. Returns the steps deleted."""
        if self.keep_latest is None:
            return []
        committed = self.committed()
        if len(committed) <= self.keep_latest:
            return []
        oldest_kept = committed[-self.keep_latest]
        present = {int(match.group(1)) for key in self.storage.store.list(self.prefix.bucket,
                                                                            self.prefix.checkpoints_key)
                   if (match := _STEP_DIR.match(key[len(self.prefix.checkpoints_key):]))}
        doomed = sorted(step for step in present if step < oldest_kept)
        for step in doomed:
            # The manifest goes first: a reader never sees a committed checkpoint with files missing.
            self.client.delete_object(Bucket=self.prefix.bucket, Key=self.prefix.manifest_key(step))
            self.clear(step)
        return doomed

    def _remote_sizes(self, base: str) -> dict[str, int]:
        sizes = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.prefix.bucket, Prefix=base):
            sizes.update({item["Key"][len(base):]: int(item["Size"]) for item in page.get("Contents", [])})
        return sizes

    # background commits
    def save_in_background(self, step: int, files_by_rank: Mapping[int, Iterable[str]], local_dir: Path,
                           epoch: float = 0.0, on_committed: Optional[Callable[[str], None]] = None,
                           contributions_timeout: float = 0.0) -> None:
        """save() on a background thread, after the previous background save ended (its error is raised here).
        local_dir must stay intact until the commit ends (wait()). Other ranks that contribute in the background
        need a contributions_timeout (e.g. CONTRIBUTIONS_TIMEOUT_SECONDS)."""

        def commit() -> str:
            uri = self.save(step, files_by_rank, local_dir, epoch, contributions_timeout)
            if on_committed:
                on_committed(uri)
            return uri

        self._submit(commit)

    def contribute_in_background(self, step: int, local_dir: Path, names: Iterable[str],
                                 on_contributed: Optional[Callable[[], None]] = None) -> None:
        """contribute() on a background thread, after this rank's previous background work ended (its error is
        raised here); the committing rank waits for these files before it writes the manifest. local_dir must stay
        intact until on_contributed runs."""
        names = list(names)

        def upload() -> None:
            self.contribute(step, local_dir, names)
            if on_contributed:
                on_contributed()

        self._submit(upload)

    def in_background(self, work: Callable[[], object]) -> None:
        """Any work that ends in contribute() or save() (e.g. waiting for an asynchronous DCP write first) on this
        rank's background thread, after the previous background work ended (its error is raised here)."""
        self._submit(work)

    def _submit(self, work: Callable[[], object]) -> None:
        self.wait()
        if self._committer is None:
            self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubeforge-commit")
        self._in_flight = self._committer.submit(work)

    def wait(self) -> Optional[str]:
        """Block until the background save (or contribution) in flight has ended; returns a save's URI, or raises
        its error."""
        in_flight, self._in_flight = self._in_flight, None
        uri = in_flight.result() if in_flight is not None else None
        self._raise_failed_prune()
        return uri

    def close(self) -> None:
        """Wait for the commit or contribution in flight (the last checkpoint is durable before the run reports
        Done)."""
        try:
            self.wait()
        finally:
            for executor in (self._committer, self._janitor):
                if executor is not None:
                    executor.shutdown()
            self._committer = self._janitor = None


class CheckpointFiles:
    """One committed checkpoint, fetched file by file: a rank downloads only what it reads (its DCP shards,
    the metadata, its RNG state), not every rank's files."""

    def __init__(self, checkpointer: Checkpointer, step: int, manifest: dict, local_dir: Path):
        self.checkpointer, self.step, self.manifest, self.local_dir = checkpointer, step, manifest, local_dir
        self.sizes: dict[str, int] = CheckpointManifest.model_validate(manifest).files
        self.fetched: set[str] = set()

    @property
    def names(self) -> list[str]:
        return sorted(self.sizes)

    def fetch(self, names: Iterable[str]) -> None:
        """Download these files (once each) and check each against the size the manifest recorded."""
        wanted = sorted(set(names) - self.fetched)
        unknown = [name for name in wanted if name not in self.sizes]
        uri = self.checkpointer.uri(self.step)
        if unknown:
            raise FileNotFoundError(f"checkpoint {uri} has no {unknown} (its manifest lists {self.names})")
        base = self.checkpointer.prefix.checkpoint_key(self.step)
        download_files(self.checkpointer.client, self.checkpointer.prefix.bucket,
                       {base + name: self.local_dir / name for name in wanted})
        for name in wanted:
            actual = (self.local_dir / name).stat().st_size
            if actual != self.sizes[name]:
                raise IOError(f"checkpoint file {uri}{name} has {actual} bytes, the manifest says {self.sizes[name]}")
        self.fetched.update(wanted)


def save_sharded(state_dict: dict, local_dir: Path) -> list[str]:
    """Write this rank's part of a sharded state dict (FSDP) with torch distributed checkpoint (DCP), every rank
    calling it; returns the files this rank wrote (its shard files; rank 0 also the metadata), ready for
    contribute() / save()."""
    import torch.distributed.checkpoint as dcp

    local_dir.mkdir(parents=True, exist_ok=True)
    before = set(local_files(local_dir))
    dcp.save(state_dict, storage_writer=local_writer(local_dir))
    return sorted(set(local_files(local_dir)) - before)


def local_writer(local_dir: Path):
    """DCP's file writer, one file per rank, without fsync: the files only go on to the object store, and a crash
    before the manifest leaves nothing committed whatever the disk kept."""
    import torch.distributed.checkpoint as dcp

    return dcp.FileSystemWriter(str(local_dir), single_file_per_rank=True, sync_files=False)


class AsyncShardedSaver:
    """This rank's side of asynchronous sharded saves (torch's dcp.async_save): start() copies the state into CPU
    buffers that are reused from save to save (DCP's DefaultStager keyed by the live tensors' storages), so the
    step loop may change the live tensors as soon as it returns, and DCP writes the copy on a background thread.

    DCP's collectives (the save plans, the metadata gather) run on `process_group`: pass a gloo group of their own
    (new_group(backend="gloo"), created by every rank), so that a write in the background never interleaves its
    collectives with the training's on the default group. Without torch.distributed initialized it saves as one
    process. One write at a time: the caller waits for start()'s future before the next start() (the staging
    buffers are reused)."""

    def __init__(self, process_group=None):
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        self.process_group = process_group
        self.stager = DefaultStager(StagingOptions(use_pinned_memory=False, use_shared_memory=False,
                                                   use_async_staging=False, use_non_blocking_copy=False))

    def start(self, state_dict: dict, local_dir: Path, writer=None) -> Future:
        """Stage state_dict now, write it into local_dir in the background; the future's result is the files this
        rank wrote (its shard file; rank 0 also the DCP metadata), or the write's error."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        local_dir.mkdir(parents=True, exist_ok=True)
        before = set(local_files(local_dir))
        written = dcp.async_save(state_dict, storage_writer=writer or local_writer(local_dir),
                                 process_group=self.process_group, async_stager=self.stager,
                                 no_dist=not (dist.is_available() and dist.is_initialized()))
        files: Future = Future()

        def ended(write: Future) -> None:
            try:
                write.result()
                files.set_result(sorted(set(local_files(local_dir)) - before))
            except BaseException as error:  # noqa: B036 - handed to whoever waits for the files
                files.set_exception(error)

        written.add_done_callback(ended)
        return files

    def close(self) -> None:
        self.stager.close()


DCP_METADATA_FILE = ".metadata"


def load_sharded(state_dict: dict, local_dir: Path, fetch: Optional[Callable[[list[str]], None]] = None) -> None:
    """Fill a sharded state dict in place from a DCP checkpoint in local_dir. With `fetch` (e.g.
    CheckpointFiles.fetch), local_dir starts empty and this rank downloads only the DCP metadata and the files
    its load plan reads: its own shards (FSDP), or whichever rank's file holds a replicated tensor (DDP); after a
    change of worker count the plan reads whatever overlaps the new shards."""
    import torch.distributed.checkpoint as dcp

    local_dir.mkdir(parents=True, exist_ok=True)
    reader = dcp.FileSystemReader(str(local_dir)) if fetch is None else fetching_reader(local_dir, fetch)
    dcp.load(state_dict, storage_reader=reader)


def fetching_reader(local_dir: Path, fetch: Callable[[list[str]], None]):
    import torch.distributed.checkpoint as dcp

    class FetchingReader(dcp.FileSystemReader):
        """FileSystemReader that downloads a file right before DCP reads it."""

        def __init__(self, local_dir: Path, fetch: Callable[[list[str]], None]):
            super().__init__(str(local_dir))
            self.fetch = fetch

        def read_metadata(self, *args, **kwargs):
            self.fetch([DCP_METADATA_FILE])
            return super().read_metadata(*args, **kwargs)

        def read_data(self, plan, planner):
            self.fetch(sorted({self.storage_data[item.storage_index].relative_path for item in plan.items}))
            return super().read_data(plan, planner)

    return FetchingReader(local_dir, fetch)
