"""The seed's image-caption dataset and tiny diffusion components, built without downloads.

Shapes: a circle, square or triangle in one colour on a background of another, captioned "a red circle on a blue
background"; every sample follows from (seed, index), so the same call writes the same bytes on every machine.
Written as WebDataset tar shards (<key>.png + <key>.txt) or as a Parquet table (image bytes, caption)."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
           "white": (245, 245, 245), "black": (20, 20, 20)}
SAMPLE_COUNT = 64
IMAGE_SIZE = 64
SHARD_COUNT = 2


def caption_of(shape: str, colour: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def render(shape: str, colour: str, background: str, rng: random.Random, size: int = IMAGE_SIZE) -> bytes:
    """A PNG of `shape` filled with `colour` on `background`, its size and place drawn from rng."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), COLOURS[background])
    draw = ImageDraw.Draw(image)
    extent = rng.randint(size * 2 // 5, size * 3 // 4)
    left, top = rng.randint(0, size - extent), rng.randint(0, size - extent)
    box = (left, top, left + extent - 1, top + extent - 1)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([(left + extent // 2, top), (left, top + extent - 1), (left + extent - 1, top + extent - 1)],
                     fill=COLOURS[colour])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def shape_samples(count: int = SAMPLE_COUNT, seed: int = 0, size: int = IMAGE_SIZE) -> list[tuple[bytes, str]]:
    """(PNG bytes, caption) pairs; shapes and colours cycle through every combination before repeating, so even a
    small count covers each shape and colour."""
    rng = random.Random(seed)
    colours = sorted(COLOURS)
    combinations = [(shape, colour, background) for shape in SHAPES for colour in colours for background in colours
                    if colour != background]
    rng.shuffle(combinations)
    samples = []
    for index in range(count):
        shape, colour, background = combinations[index % len(combinations)]
        samples.append((render(shape, colour, background, rng, size), caption_of(shape, colour, background)))
    return samples


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # no clock or owner in the bytes
    archive.addfile(info, io.BytesIO(data))


def write_webdataset(directory: Path, samples: list[tuple[bytes, str]], shards: int = SHARD_COUNT) -> list[Path]:
    """shard-00000.tar ... with members <key>.png and <key>.txt, keys 000000... in sample order across shards."""
    directory.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(samples) // shards)
    paths = []
    for shard in range(shards):
        path = directory / f"shard-{shard:05d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
            for index in range(shard * per_shard, min(len(samples), (shard + 1) * per_shard)):
                image, caption = samples[index]
                _add_member(archive, f"{index:06d}.png", image)
                _add_member(archive, f"{index:06d}.txt", caption.encode())
        paths.append(path)
    return paths


def write_parquet(path: Path, samples: list[tuple[bytes, str]], image_field: str = "image",
                  caption_field: str = "caption") -> Path:
    """One Parquet file: a binary image column and a string caption column, rows in sample order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({image_field: pa.array([image for image, _ in samples], type=pa.binary()),
                      caption_field: pa.array([caption for _, caption in samples], type=pa.string())})
    pq.write_table(table, path)
    return path


def write_shapes(directory: Path, count: int = SAMPLE_COUNT, seed: int = 0, shards: int = SHARD_COUNT,
                 parquet: bool = False) -> Path:
    """The shapes dataset under `directory`: tar shards, or with parquet=True one part-0.parquet."""
    samples = shape_samples(count, seed)
    if parquet:
        return write_parquet(directory / "part-0.parquet", samples)
    write_webdataset(directory, samples, shards)
    return directory
