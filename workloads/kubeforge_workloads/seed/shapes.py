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


# The tiny diffusion model of the seed's recipe, small enough that a U-Net step at 32 px, batch 4, takes well under
# a second on a CPU. The VAE halves the side twice (three blocks): 32 px -> 8x8 latents, 64 px -> 16x16.
TEXT_HIDDEN_SIZE = 32
TEXT_MAX_LENGTH = 16
"""Tokens per caption, start and end included: the longest seed caption has 9."""
VAE_DOWNSCALE = 4
TINY_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 8,
    "block_out_channels": [16, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    "sample_size": 32,
}
TINY_UNET_CONFIG = {
    "sample_size": 32 // VAE_DOWNSCALE, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": [32, 64], "norm_num_groups": 8, "attention_head_dim": 8,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": TEXT_HIDDEN_SIZE,
}


def all_captions() -> list[str]:
    return [caption_of(shape, colour, background) for shape in SHAPES for colour in sorted(COLOURS)
            for background in sorted(COLOURS) if colour != background]


def learn_merges(word_counts: dict[str, int]) -> list[tuple[str, str]]:
    """Byte-pair merges until every word is one token: the most frequent adjacent pair first, ties broken by the
    pair itself, so the same words always give the same merges (the tokenizers trainer breaks ties by hash order)."""
    parts = {word: [*word[:-1], word[-1] + "</w>"] for word in sorted(word_counts)}
    merges = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for word, pieces in parts.items():
            for pair in zip(pieces, pieces[1:]):
                counts[pair] = counts.get(pair, 0) + word_counts[word]
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for word, pieces in parts.items():
            merged, index = [], 0
            while index < len(pieces):
                if tuple(pieces[index:index + 2]) == best:
                    merged.append(pieces[index] + pieces[index + 1])
                    index += 2
                else:
                    merged.append(pieces[index])
                    index += 1
            parts[word] = merged


def build_clip_tokenizer(max_length: int = TEXT_MAX_LENGTH):
    """A CLIPTokenizer (CLIP's normalisation, pre-tokenisation and </w> byte-level BPE) whose merges make each
    shapes caption word one token; any other text still encodes, byte by byte."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    pipeline = CLIPTokenizer().backend_tokenizer  # an empty CLIP tokenizer: its normaliser and pre-tokeniser
    word_counts: dict[str, int] = {}
    for caption in all_captions():
        for word, _ in pipeline.pre_tokenizer.pre_tokenize_str(pipeline.normalizer.normalize_str(caption)):
            word_counts[word] = word_counts.get(word, 0) + 1
    merges = learn_merges(word_counts)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet),
              *(left + right for left, right in merges)]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_tiny_clip(directory: Path, hidden_size: int = TEXT_HIDDEN_SIZE, layers: int = 2) -> Path:
    """Tokenizer and CLIPTextModel in one directory (from_pretrained(directory) loads either), weights from a fixed
    seed."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_clip_tokenizer()
    tokenizer.save_pretrained(directory)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                            num_hidden_layers=layers, num_attention_heads=4, projection_dim=hidden_size,
                            max_position_embeddings=tokenizer.model_max_length,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(directory)
    return directory
