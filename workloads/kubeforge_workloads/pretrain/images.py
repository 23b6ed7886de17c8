"""Image-caption pairs for diffusion training, from WebDataset-style tar shards or Parquet files in the object store.

A sample that cannot be used (an image PIL cannot decode, an empty or missing caption, a caption without an image)
is skipped and counted per cause with its shard and key or row named, never silently. The order is deterministic:
shards sorted by key, samples in their order within a shard, so sample id i is the same pair on every rank and
every attempt. Images stay encoded until `pixels` decodes a batch of them.

`ImageDataset` lists the shards at once (their fingerprint keys the latent cache) but downloads and reads them only
when the pairs are first asked for: an attempt whose latents are all cached never does (a resume used to download
the whole image dataset on every rank only to train on cached latents)."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from kubeforge.storage.layout import parse_s3_uri
from kubeforge_workloads.common.errors import DataError, UserError
from kubeforge_workloads.common.storage import download_files
from kubeforge_workloads.pretrain.cache import cache_digest

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
CAPTION_EXTENSION = "txt"
MAX_EXAMPLES = 5
"""Skipped samples named per cause; the count covers all of them."""

CORRUPT_IMAGE = "corruptImage"
EMPTY_CAPTION = "emptyCaption"
MISSING_CAPTION = "missingCaption"
MISSING_IMAGE = "missingImage"
UNDECODABLE_CAPTION = "undecodableCaption"


@dataclass
class ImagePairs:
    uri: str
    """spec.dataset.uri, as read."""
    fingerprint: str
    """sha256 of the listing the pairs were read from (keys, sizes, ETags): changes when any shard changes."""
    images: list[bytes] = field(default_factory=list)
    """Encoded images (PNG, JPEG, WebP), verified to decode."""
    captions: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    """Where each pair came from: "shard-00001.tar/000012" or "part-0.parquet row 12"."""
    skipped: dict[str, dict] = field(default_factory=dict)
    """cause -> {"count": n, "examples": [id, ... (at most MAX_EXAMPLES)]}."""

    def __len__(self) -> int:
        return len(self.images)

    def add(self, image: bytes, caption: str, sample_id: str) -> None:
        self.images.append(image)
        self.captions.append(caption)
        self.ids.append(sample_id)

    def skip(self, cause: str, sample_id: str) -> None:
        entry = self.skipped.setdefault(cause, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < MAX_EXAMPLES:
            entry["examples"].append(sample_id)

    @property
    def skipped_count(self) -> int:
        return sum(entry["count"] for entry in self.skipped.values())

    def skipped_summary(self) -> str:
        """One line: how many samples were skipped, why, and which (the first few per cause)."""
        causes = "; ".join(f"{cause} {entry['count']} ({', '.join(entry['examples'])}"
                           f"{', ...' if entry['count'] > len(entry['examples']) else ''})"
                           for cause, entry in sorted(self.skipped.items()))
        return f"{self.uri}: skipped {self.skipped_count} of {self.skipped_count + len(self)} samples: {causes}"


    def summary(self) -> "DatasetSummary":
        return DatasetSummary(count=len(self), skipped=self.skipped, first_captions=self.captions[:FIRST_CAPTIONS])


FIRST_CAPTIONS = 16
"""Captions a DatasetSummary keeps: the most spec.samples.count takes from the dataset."""


@dataclass
class DatasetSummary:
    """What training needs to know of the pairs besides their latents: how many, what was skipped, and the first
    captions (the sample grid's prompts when spec.samples.prompts is empty). A latent cache's manifest holds it."""
    count: int
    skipped: dict[str, dict]
    first_captions: list[str]

    @property
    def skipped_count(self) -> int:
        return sum(entry["count"] for entry in self.skipped.values())


class ImageDataset:
    """spec.dataset (format webdataset or parquet), listed: `fingerprint` is known at once, `pairs()` downloads into
    `cache` and reads the shards on its first call only."""

    def __init__(self, spec, store, cache: Path):
        dataset = spec.dataset
        self.format = getattr(dataset.format, "value", dataset.format)
        if self.format not in ("webdataset", "parquet"):
            raise UserError(f"spec.dataset.format {self.format!r} holds no image-caption pairs; use webdataset or "
                            "parquet")
        self.spec_dataset, self.store, self.cache = dataset, store, cache
        self.uri = dataset.uri
        self.objects = _list_objects(store, dataset.uri, ".tar" if self.format == "webdataset" else ".parquet")
        self.fingerprint = _fingerprint(self.objects)
        self._pairs: ImagePairs | None = None

    @property
    def loaded(self) -> bool:
        return self._pairs is not None

    def pairs(self) -> ImagePairs:
        """Every usable image-caption pair (downloaded and read once)."""
        if self._pairs is None:
            self._pairs = self._read()
        return self._pairs

    def _read(self) -> ImagePairs:
        dataset = self.spec_dataset
        pairs = ImagePairs(uri=dataset.uri, fingerprint=self.fingerprint)
        bucket, _ = parse_s3_uri(dataset.uri)
        local = {name: self.cache / "dataset" / name for name, _, _, _ in self.objects}
        download_files(self.store.client, bucket, {key: local[name] for name, key, _, _ in self.objects})
        for name, _, _, _ in self.objects:
            if self.format == "webdataset":
                _read_tar(local[name], name, pairs)
            else:
                _read_parquet(local[name], name, dataset.image_field, dataset.caption_field, pairs)
        if pairs.skipped:
            print(f"kubeforge: {pairs.skipped_summary()}", flush=True)
        if not pairs.images:
            reason = f"; {pairs.skipped_summary()}" if pairs.skipped else ""
            raise DataError(f"{dataset.uri}: no usable image-caption pairs (spec.dataset.uri){reason}")
        return pairs


def read_pairs(spec, store, cache: Path) -> ImagePairs:
    """Every usable image-caption pair of spec.dataset (format webdataset or parquet), downloaded into `cache`."""
    return ImageDataset(spec, store, cache).pairs()


def pixels(images: list[bytes], resolution: int):
    """A float32 tensor [N, 3, resolution, resolution] in [-1, 1]: each image in RGB, its short side resized to
    `resolution` (bicubic), centre-cropped."""
    import numpy as np
    import torch
    from PIL import Image

    batch = np.empty((len(images), resolution, resolution, 3), dtype=np.uint8)
    for index, encoded in enumerate(images):
        with Image.open(io.BytesIO(encoded)) as image:
            rgb = image.convert("RGB")
        width, height = rgb.size
        scale = resolution / min(width, height)
        size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        if size != rgb.size:
            rgb = rgb.resize(size, resample=Image.Resampling.BICUBIC)
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        batch[index] = np.asarray(rgb.crop((left, top, left + resolution, top + resolution)))
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).to(torch.float32)
    return tensor / 127.5 - 1.0


def _list_objects(store, uri: str, suffix: str) -> list[tuple[str, str, int, str]]:
    """(name relative to the prefix, key, size, ETag) of the one object `uri` names, or of every *suffix object
    under the prefix, sorted by key."""
    from botocore.exceptions import ClientError

    bucket, key = parse_s3_uri(uri)
    if key and not key.endswith("/"):
        try:
            head = store.client.head_object(Bucket=bucket, Key=key)
            return [(PurePosixPath(key).name, key, head["ContentLength"], head.get("ETag", ""))]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
    root = key.rstrip("/") + "/" if key.strip("/") else ""
    objects = []
    for page in store.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root):
        for item in page.get("Contents", []):
            if item["Key"].endswith(suffix):
                objects.append((item["Key"][len(root):], item["Key"], item["Size"], item.get("ETag", "")))
    if not objects:
        raise UserError(f"{uri} holds no {suffix} files (spec.dataset.uri); point it at a {suffix} file or a "
                        "prefix of them")
    return sorted(objects, key=lambda entry: entry[1])


def _fingerprint(objects) -> str:
    return cache_digest([[name, size, etag] for name, _, size, etag in objects])


def _decodes(encoded: bytes) -> bool:
    """Whether PIL can decode the whole image: verify() checks the container (PNG CRCs), load() the pixel data
    (a truncated JPEG passes verify())."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(encoded)) as image:
            image.verify()
        with Image.open(io.BytesIO(encoded)) as image:
            image.load()
            return image.width > 0 and image.height > 0
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError...)
        return False


def _add_checked(pairs: ImagePairs, image, caption, sample_id: str) -> None:
    if image is None:
        pairs.skip(MISSING_IMAGE, sample_id)
    elif caption is None:
        pairs.skip(MISSING_CAPTION, sample_id)
    elif not caption.strip():
        pairs.skip(EMPTY_CAPTION, sample_id)
    elif not _decodes(image):
        pairs.skip(CORRUPT_IMAGE, sample_id)
    else:
        pairs.add(image, caption.strip(), sample_id)


def _read_tar(path: Path, name: str, pairs: ImagePairs) -> None:
    """WebDataset convention: members <key>.<ext> with the same key (everything before the first dot of the file
    name) form a sample, in the order their keys first appear."""
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                directory, _, base = member.name.rpartition("/")
                stem, dot, extension = base.partition(".")
                if not dot or stem.startswith("."):
                    continue
                key = f"{directory}/{stem}" if directory else stem
                samples.setdefault(key, {})[extension.lower()] = archive.extractfile(member).read()
    except tarfile.TarError as error:
        raise DataError(f"{pairs.uri}: {name} is not a readable tar file ({error}); remove or rewrite it") from error
    for key, members in samples.items():
        sample_id = f"{name}/{key}"
        image = next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), None)
        raw_caption = members.get(CAPTION_EXTENSION)
        if image is None and raw_caption is None:
            continue  # neither image nor caption (e.g. only metadata): not a sample of this dataset
        try:
            caption = raw_caption.decode("utf-8") if raw_caption is not None else None
        except UnicodeDecodeError:
            pairs.skip(UNDECODABLE_CAPTION, sample_id)
            continue
        _add_checked(pairs, image, caption, sample_id)


def _read_parquet(path: Path, name: str, image_field: str, caption_field: str, pairs: ImagePairs) -> None:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:
        raise DataError(f"{pairs.uri}: {name} is not a readable Parquet file ({error}); remove or rewrite it") \
            from error
    columns = parquet.schema_arrow.names
    for column, spec_field in ((image_field, "imageField"), (caption_field, "captionField")):
        if column not in columns:
            raise DataError(f"{pairs.uri}: {name} has no column {column!r} (spec.dataset.{spec_field}); its "
                            f"columns are {columns}")
    row = 0
    for batch in parquet.iter_batches(columns=[image_field, caption_field], batch_size=1024):
        for image, caption in zip(batch.column(image_field).to_pylist(), batch.column(caption_field).to_pylist()):
            if isinstance(image, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
                image = image.get("bytes")
            if image is not None and not isinstance(image, (bytes, bytearray)):
                raise DataError(f"{pairs.uri}: {name} column {image_field!r} (spec.dataset.imageField) holds "
                                f"{type(image).__name__}, not encoded image bytes")
            if caption is not None and not isinstance(caption, str):
                raise DataError(f"{pairs.uri}: {name} column {caption_field!r} (spec.dataset.captionField) holds "
                                f"{type(caption).__name__}, not text")
            _add_checked(pairs, bytes(image) if image is not None else None, caption, f"{name} row {row}")
            row += 1
