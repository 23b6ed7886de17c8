"""The diffusion workload's data side: image-caption pairs from tar shards and Parquet (bad samples skipped and
named), pixels, the seed's shapes dataset and tiny components, and the latent cache (keyed, computed once, reused;
an attempt that finds every latent cached never downloads the images)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from kubeforge.api.trainingjob import TrainingJobSpec
from kubeforge_workloads.common.errors import DataError, UserError
from kubeforge_workloads.common.storage import upload_tree
from kubeforge_workloads.pretrain.images import FIRST_CAPTIONS, ImageDataset, pixels, read_pairs
from kubeforge_workloads.seed.shapes import shape_samples, write_parquet, write_shapes, write_webdataset
from tests.unit.workloads.conftest import BUCKET


def diffusion_spec(uri: str, fmt: str = "webdataset", **changes) -> TrainingJobSpec:
    spec = {"task": "diffusion",
            "model": {"unet": {"config": {"sample_size": 4}}, "vae": {"config": {"latent_channels": 4}},
                      "textEncoder": {"uri": f"s3://{BUCKET}/seed/models/tiny-clip"},
                      "tokenizer": {"uri": f"s3://{BUCKET}/seed/models/tiny-clip"}},
            "dataset": {"uri": uri, "format": fmt},
            "training": {"globalBatchSize": 4, "microBatchSize": 4},
            "phases": [{"resolution": 32, "steps": 10}],
            "precompute": {"latents": True, "dtype": "fp16"}}
    for path, value in changes.items():
        target = spec
        *parents, leaf = path.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return TrainingJobSpec.model_validate(spec)


def _upload(store, local: Path, prefix: str) -> str:
    upload_tree(store.client, local, BUCKET, prefix)
    return f"s3://{BUCKET}/{prefix}"


@pytest.fixture(scope="module")
def samples():
    return shape_samples(count=12, seed=3)


def test_both_formats_give_the_same_pairs_in_the_same_order(object_store, samples, tmp_path):
    write_webdataset(tmp_path / "wds", samples, shards=3)
    write_parquet(tmp_path / "pq" / "part-0.parquet", samples[:5])
    write_parquet(tmp_path / "pq" / "part-1.parquet", samples[5:])
    from_tars = read_pairs(diffusion_spec(_upload(object_store, tmp_path / "wds", "d/wds/")), object_store,
                           tmp_path / "c1")
    from_parquet = read_pairs(diffusion_spec(_upload(object_store, tmp_path / "pq", "d/pq/"), "parquet"),
                              object_store, tmp_path / "c2")
    assert from_tars.images == from_parquet.images == [image for image, _ in samples]
    assert from_tars.captions == from_parquet.captions == [caption for _, caption in samples]
    assert from_tars.ids[:2] == ["shard-00000.tar/000000", "shard-00000.tar/000001"]
    assert from_tars.ids[-1] == "shard-00002.tar/000011"
    assert from_parquet.ids[4:6] == ["part-0.parquet row 4", "part-1.parquet row 0"]
    assert not from_tars.skipped and not from_parquet.skipped


def test_a_single_parquet_file_with_hugging_face_image_structs_and_own_column_names(object_store, samples, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = pa.array([{"bytes": image, "path": None} for image, _ in samples],
                      type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"img": images, "text": [caption for _, caption in samples]}), tmp_path / "hf.parquet")
    object_store.client.upload_file(str(tmp_path / "hf.parquet"), BUCKET, "d/hf.parquet")
    spec = diffusion_spec(f"s3://{BUCKET}/d/hf.parquet", "parquet", **{"dataset.imageField": "img",
                                                                       "dataset.captionField": "text"})
    pairs = read_pairs(spec, object_store, tmp_path / "c")
    assert pairs.images == [image for image, _ in samples]
    assert pairs.ids[3] == "hf.parquet row 3"


def test_a_missing_column_names_the_spec_field(object_store, samples, tmp_path):
    write_parquet(tmp_path / "p.parquet", samples, caption_field="text")
    object_store.client.upload_file(str(tmp_path / "p.parquet"), BUCKET, "d/p.parquet")
    with pytest.raises(DataError, match=r"p.parquet has no column 'caption' \(spec.dataset.captionField\)"):
        read_pairs(diffusion_spec(f"s3://{BUCKET}/d/p.parquet", "parquet"), object_store, tmp_path / "c")


def _truncated(png: bytes) -> bytes:
    return png[: len(png) // 2]


def test_corrupt_images_and_empty_captions_are_skipped_and_named_in_tars(object_store, samples, tmp_path):
    bad = list(samples)
    bad[2] = (_truncated(bad[2][0]), bad[2][1])
    bad[7] = (bad[7][0], "   ")
    write_webdataset(tmp_path / "wds", bad, shards=2)
    # A sample whose caption file is missing, and one whose image is.
    with tarfile.open(tmp_path / "wds" / "shard-00001.tar", "a") as archive:
        for name, data in (("extra-a.png", samples[0][0]), ("extra-b.txt", b"a caption without an image")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    pairs = read_pairs(diffusion_spec(_upload(object_store, tmp_path / "wds", "d/bad/")), object_store,
                       tmp_path / "c")
    assert pairs.skipped == {"corruptImage": {"count": 1, "examples": ["shard-00000.tar/000002"]},
                             "emptyCaption": {"count": 1, "examples": ["shard-00001.tar/000007"]},
                             "missingCaption": {"count": 1, "examples": ["shard-00001.tar/extra-a"]},
                             "missingImage": {"count": 1, "examples": ["shard-00001.tar/extra-b"]}}
    assert len(pairs) == len(samples) - 2
    assert "shard-00000.tar/000002" not in pairs.ids and "shard-00001.tar/000007" not in pairs.ids
    assert pairs.captions == [caption for index, (_, caption) in enumerate(samples) if index not in (2, 7)]
    assert "skipped 4 of" in pairs.skipped_summary() and "corruptImage 1 (shard-00000.tar/000002)" in \
        pairs.skipped_summary()


def test_corrupt_images_and_empty_captions_are_skipped_and_named_in_parquet(object_store, samples, tmp_path):
    bad = list(samples)
    bad[1] = (b"\x89PNG\r\n\x1a\n not really", bad[1][1])
    bad[4] = (bad[4][0], "")
    write_parquet(tmp_path / "pq" / "part-0.parquet", bad)
    pairs = read_pairs(diffusion_spec(_upload(object_store, tmp_path / "pq", "d/pq/"), "parquet"), object_store,
                       tmp_path / "c")
    assert pairs.skipped == {"corruptImage": {"count": 1, "examples": ["part-0.parquet row 1"]},
                             "emptyCaption": {"count": 1, "examples": ["part-0.parquet row 4"]}}
    assert len(pairs) == len(samples) - 2


def test_examples_are_capped_but_the_count_is_not(object_store, samples, tmp_path):
    write_parquet(tmp_path / "pq" / "part-0.parquet", [(image, "") for image, _ in samples[:8]] + samples[8:])
    pairs = read_pairs(diffusion_spec(_upload(object_store, tmp_path / "pq", "d/pq/"), "parquet"), object_store,
                       tmp_path / "c")
    assert pairs.skipped["emptyCaption"]["count"] == 8
    assert pairs.skipped["emptyCaption"]["examples"] == [f"part-0.parquet row {i}" for i in range(5)]


def test_nothing_usable_is_a_data_error_naming_the_uri(object_store, samples, tmp_path):
    write_parquet(tmp_path / "pq" / "part-0.parquet", [(image, " ") for image, _ in samples[:3]])
    uri = _upload(object_store, tmp_path / "pq", "d/empty/")
    with pytest.raises(DataError, match=rf"{uri}: no usable image-caption pairs .*emptyCaption 3"):
        read_pairs(diffusion_spec(uri, "parquet"), object_store, tmp_path / "c")


def test_a_prefix_without_shards_is_a_user_error(object_store, tmp_path):
    object_store.put(BUCKET, "d/none/readme.md", b"no shards here")
    with pytest.raises(UserError, match=r"s3://kfbucket/d/none/ holds no .tar files \(spec.dataset.uri\)"):
        read_pairs(diffusion_spec(f"s3://{BUCKET}/d/none/"), object_store, tmp_path / "c")


def test_the_fingerprint_follows_the_shards_contents(object_store, samples, tmp_path):
    write_webdataset(tmp_path / "wds", samples, shards=2)
    uri = _upload(object_store, tmp_path / "wds", "d/fp/")
    first = read_pairs(diffusion_spec(uri), object_store, tmp_path / "c1").fingerprint
    assert read_pairs(diffusion_spec(uri), object_store, tmp_path / "c2").fingerprint == first
    write_webdataset(tmp_path / "wds", samples[::-1], shards=2)
    _upload(object_store, tmp_path / "wds", "d/fp/")
    assert read_pairs(diffusion_spec(uri), object_store, tmp_path / "c3").fingerprint != first


def test_pixels_are_rgb_in_minus_one_to_one_short_side_resized_and_centre_cropped():
    import numpy as np
    from PIL import Image

    # 40x20 grey-alpha image: left quarter black, the middle white, right quarter black.
    array = np.zeros((20, 40), dtype=np.uint8)
    array[:, 10:30] = 255
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").convert("LA").save(buffer, format="PNG")
    batch = pixels([buffer.getvalue(), shape_samples(1)[0][0]], 16)
    assert batch.shape == (2, 3, 16, 16) and batch.dtype.__str__() == "torch.float32"
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    # Short side 20 -> 16: the long side becomes 32; the centre crop keeps columns 8..24 of it, which are the
    # white middle (8..24 of 32 is 10..30 of 40), so the cropped image is white apart from resampling at its edges.
    assert batch[0, :, :, 2:14].min() > 0.9
    assert batch[1].min() < 0 < batch[1].max()


def test_the_seed_dataset_is_deterministic(tmp_path):
    first = write_shapes(tmp_path / "a")
    second = write_shapes(tmp_path / "b")
    names = sorted(path.name for path in first.iterdir())
    assert names == ["shard-00000.tar", "shard-00001.tar"]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    parquet_a = write_shapes(tmp_path / "pa", parquet=True)
    parquet_b = write_shapes(tmp_path / "pb", parquet=True)
    assert parquet_a.read_bytes() == parquet_b.read_bytes()
    samples = shape_samples()
    assert len(samples) == 64 and len({caption for _, caption in samples}) == 64
    assert samples[0][1].startswith("a ") and samples[0][1].endswith(" background")
    assert shape_samples(seed=1) != samples


def test_tiny_clip_is_deterministic_loads_from_one_directory_and_fits_the_tiny_unet(tmp_path):
    import hashlib

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    from kubeforge_workloads.seed.shapes import (TEXT_MAX_LENGTH, TINY_UNET_CONFIG, TINY_VAE_CONFIG, VAE_DOWNSCALE,
                                                 all_captions, build_tiny_clip)

    first, second = build_tiny_clip(tmp_path / "a"), build_tiny_clip(tmp_path / "b")
    for path in sorted(first.iterdir()):
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256((second / path.name).read_bytes()).digest()
    tokenizer, text_encoder = AutoTokenizer.from_pretrained(first), CLIPTextModel.from_pretrained(first)
    assert type(tokenizer).__name__ == "CLIPTokenizer" and tokenizer.model_max_length == TEXT_MAX_LENGTH
    caption = "a red circle on a blue background"
    assert tokenizer.convert_ids_to_tokens(tokenizer(caption)["input_ids"]) == \
        ["<|startoftext|>", *(word + "</w>" for word in caption.split()), "<|endoftext|>"]
    assert max(len(tokenizer(text)["input_ids"]) for text in all_captions()) <= TEXT_MAX_LENGTH
    ids = tokenizer([caption, "an unseen prompt, much longer than any seed caption " * 3], padding="max_length",
                    max_length=TEXT_MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    torch.manual_seed(0)
    vae, unet = AutoencoderKL(**TINY_VAE_CONFIG), UNet2DConditionModel(**TINY_UNET_CONFIG)
    with torch.no_grad():
        hidden = text_encoder(ids)[0]
        latents = vae.encode(torch.zeros(2, 3, 32, 32)).latent_dist.mean
        assert latents.shape == (2, 4, 32 // VAE_DOWNSCALE, 32 // VAE_DOWNSCALE)
        assert latents.shape[-1] == unet.config.sample_size
        noise = unet(latents, torch.tensor([1, 500]), encoder_hidden_states=hidden).sample
    assert noise.shape == latents.shape and hidden.shape == (2, TEXT_MAX_LENGTH, unet.config.cross_attention_dim)


# --- the latent cache -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """The seed's tiny CLIP (tokenizer and text encoder) and a tiny VAE from its config, seeded."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, CLIPTextModel

    from kubeforge_workloads.seed.shapes import TINY_VAE_CONFIG, build_tiny_clip

    clip = build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")
    torch.manual_seed(0)
    vae = AutoencoderKL(**TINY_VAE_CONFIG).eval()
    return vae, CLIPTextModel.from_pretrained(clip).eval(), AutoTokenizer.from_pretrained(clip)


def trainingjob_storage(store, attempt: int, name: str = "sd"):
    from kubeforge.api.workload import MlflowContext, StorageContext, WorkloadContext
    from kubeforge_workloads.common.storage import WorkloadStorage

    context = WorkloadContext(kind="TrainingJob", namespace="ns", name=name, uid=f"uid-{name}", generation=1,
                              attempt=attempt, spec={}, storage=StorageContext(bucket=BUCKET,
                                                                               prefix=f"ns/TrainingJob/{name}"),
                              mlflow=MlflowContext(experiment="e", run_name=name))
    return WorkloadStorage(context, store)


class CountingEncode:
    """Counts calls of vae.encode (set on the instance, so it shadows the method) and passes them on."""

    def __init__(self, vae, monkeypatch):
        self.calls, self.original = 0, vae.encode
        monkeypatch.setattr(vae, "encode", self, raising=False)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)


@pytest.fixture
def shapes_pairs(object_store, samples, tmp_path):
    write_webdataset(tmp_path / "wds", samples, shards=2)
    uri = _upload(object_store, tmp_path / "wds", "seed/datasets/shapes/")
    return uri, ImageDataset(diffusion_spec(uri), object_store, tmp_path / "read")


def test_the_cache_key_follows_every_input_and_nothing_else():
    from kubeforge_workloads.pretrain.latents import cache_key

    uri = f"s3://{BUCKET}/d/"
    base = cache_key(diffusion_spec(uri), 32, "dataset-1", "encoders-1")
    assert base == cache_key(diffusion_spec(uri), 32, "dataset-1", "encoders-1")
    changed = {
        "resolution": cache_key(diffusion_spec(uri), 64, "dataset-1", "encoders-1"),
        "dtype": cache_key(diffusion_spec(uri, **{"precompute.dtype": "bf16"}), 32, "dataset-1", "encoders-1"),
        "dataset contents": cache_key(diffusion_spec(uri), 32, "dataset-2", "encoders-1"),
        "encoder weights": cache_key(diffusion_spec(uri), 32, "dataset-1", "encoders-2"),
        "dataset uri": cache_key(diffusion_spec(f"s3://{BUCKET}/e/"), 32, "dataset-1", "encoders-1"),
        "caption column": cache_key(diffusion_spec(uri, **{"dataset.captionField": "text"}), 32, "dataset-1",
                                    "encoders-1"),
        "vae": cache_key(diffusion_spec(uri, **{"model.vae": {"config": {"latent_channels": 8}}}), 32,
                         "dataset-1", "encoders-1"),
        "text encoder": cache_key(diffusion_spec(uri, **{"model.textEncoder": {"uri": "s3://kfbucket/other"}}), 32,
                                  "dataset-1", "encoders-1"),
        "tokenizer": cache_key(diffusion_spec(uri, **{"model.tokenizer": {"uri": "s3://kfbucket/other"}}), 32,
                               "dataset-1", "encoders-1"),
    }
    assert len(set(changed.values()) | {base}) == len(changed) + 1, changed
    unrelated = [{"training.learningRate": 0.1}, {"training.seed": 7}, {"dataset.shuffleSeed": 3},
                 {"model.unet": {"config": {"sample_size": 8}}}, {"phases": [{"resolution": 32, "steps": 99}]},
                 {"ema": {"decay": 0.99, "startFraction": 0.5}}, {"samples": {"count": 2}},
                 {"model.noiseScheduler": {"type": "ddim"}}]
    for change in unrelated:
        assert cache_key(diffusion_spec(uri, **change), 32, "dataset-1", "encoders-1") == base, change
    assert len(base) == 64 and int(base, 16) >= 0


def test_the_encoders_fingerprint_follows_weights_configs_and_vocabulary(encoders):
    import copy

    import torch

    from kubeforge_workloads.pretrain.latents import encoders_fingerprint

    vae, text_encoder, tokenizer = encoders
    base = encoders_fingerprint(vae, text_encoder, tokenizer)
    assert encoders_fingerprint(copy.deepcopy(vae), copy.deepcopy(text_encoder), tokenizer) == base
    other_weights = copy.deepcopy(vae)
    with torch.no_grad():
        next(other_weights.parameters()).view(-1)[0] += 1e-3
    other_scale = copy.deepcopy(vae)
    other_scale.register_to_config(scaling_factor=0.5)
    other_text = copy.deepcopy(text_encoder)
    with torch.no_grad():
        list(other_text.parameters())[-1].view(-1)[0] += 1e-3
    fingerprints = {encoders_fingerprint(other_weights, text_encoder, tokenizer),
                    encoders_fingerprint(other_scale, text_encoder, tokenizer),
                    encoders_fingerprint(vae, other_text, tokenizer)}
    assert len(fingerprints) == 3 and base not in fingerprints
    # Where an attempt downloaded a component to is not part of it.
    moved_vae, moved_text = copy.deepcopy(vae), copy.deepcopy(text_encoder)
    moved_vae.register_to_config(_name_or_path="/tmp/kubeforge-sd-2-0-abc/vae")
    moved_text.config.name_or_path = "/tmp/kubeforge-sd-2-0-abc/text_encoder"
    assert encoders_fingerprint(moved_vae, moved_text, tokenizer) == base


def test_latents_are_computed_once_into_the_bucket_cache_then_reused_without_the_vae(object_store, shapes_pairs,
                                                                                      encoders, tmp_path,
                                                                                      monkeypatch):
    import torch

    from kubeforge.storage.layout import MANIFEST_FILE
    from kubeforge_workloads.pretrain.latents import PrecomputedInputs, phase_inputs

    uri, dataset = shapes_pairs
    vae, text_encoder, tokenizer = encoders
    spec = diffusion_spec(uri)
    counting = CountingEncode(vae, monkeypatch)
    barriers = []
    first = phase_inputs(spec, 32, dataset, vae, text_encoder, tokenizer, trainingjob_storage(object_store, 1),
                         tmp_path / "a1", is_writer=True, wait=lambda: barriers.append("attempt 1"), batch_size=5)
    assert isinstance(first, PrecomputedInputs) and not first.reused
    assert counting.calls == 3  # 12 samples in batches of 5
    assert first.uri.startswith(f"s3://{BUCKET}/_precompute/") and barriers == ["attempt 1"]
    cache_prefix = first.uri[len(f"s3://{BUCKET}/"):]
    assert sorted(object_store.list(BUCKET, cache_prefix)) == [cache_prefix + MANIFEST_FILE,
                                                               cache_prefix + "shard-00000.safetensors"]
    pairs = dataset.pairs()
    assert first.count == len(pairs) == first.summary.count == first.manifest["count"]
    assert first.summary.first_captions == first.manifest["firstCaptions"] == pairs.captions[:FIRST_CAPTIONS]
    expected = first.batch([0, 5, 11])

    # A later attempt, and another resource with the same inputs: read, not recomputed, the VAE never called, and
    # the images never downloaded (the dataset's summary comes from the manifest).
    counting.calls = 0
    for storage in (trainingjob_storage(object_store, 2), trainingjob_storage(object_store, 1, name="sd-copy")):
        local = tmp_path / storage.context.name
        listed = ImageDataset(spec, object_store, local)
        again = phase_inputs(spec, 32, listed, vae, text_encoder, tokenizer, storage, local,
                             is_writer=True, wait=lambda: barriers.append("later"))
        assert again.reused and again.uri == first.uri and counting.calls == 0
        assert not listed.loaded and not (local / "dataset").exists() and again.summary == first.summary
        assert again.manifest["createdBy"]["attempt"] == 1 and again.manifest["createdBy"]["name"] == "sd"
        for name, tensor in again.batch(torch.tensor([0, 5, 11])).items():
            assert torch.equal(tensor, expected[name]), name
    assert barriers == ["attempt 1", "later", "later"]

    # Another resolution is another cache entry.
    other = phase_inputs(spec, 64, dataset, vae, text_encoder, tokenizer, trainingjob_storage(object_store, 2),
                         tmp_path / "r64", is_writer=True, wait=lambda: None)
    assert not other.reused and other.uri != first.uri
    assert other.batch([0])["latents"].shape == (1, 4, 16, 16)


def test_other_ranks_read_what_the_writer_stored_after_the_barrier(object_store, shapes_pairs, encoders, tmp_path,
                                                                  monkeypatch):
    import torch

    from kubeforge_workloads.pretrain.latents import phase_inputs

    uri, dataset = shapes_pairs
    vae, text_encoder, tokenizer = encoders
    spec = diffusion_spec(uri)
    written = {}

    def writer_then_barrier():
        # The barrier returns once the writer has stored the cache: here, the writer runs inside it.
        written["writer"] = phase_inputs(spec, 32, dataset, vae, text_encoder, tokenizer,
                                         trainingjob_storage(object_store, 1), tmp_path / "rank0", is_writer=True,
                                         wait=lambda: None)

    counting = CountingEncode(vae, monkeypatch)
    reader = phase_inputs(spec, 32, dataset, vae, text_encoder, tokenizer, trainingjob_storage(object_store, 1),
                          tmp_path / "rank1", is_writer=False, wait=writer_then_barrier)
    assert counting.calls == 1  # the writer's one batch; the reader encoded nothing
    assert not reader.reused and reader.uri == written["writer"].uri
    ids = list(range(len(dataset.pairs())))
    for name, tensor in reader.batch(ids).items():
        assert torch.equal(tensor, written["writer"].batch(ids)[name]), name


def test_a_manifest_without_the_dataset_summary_reads_the_pairs_and_checks_the_count(object_store, shapes_pairs,
                                                                                     encoders, tmp_path):
    """A cache written before manifests held firstCaptions: the summary comes from the pairs, which are read, and a
    count that differs from the dataset's is refused."""
    import json

    from kubeforge.storage.layout import MANIFEST_FILE
    from kubeforge_workloads.common.errors import WorkloadError
    from kubeforge_workloads.pretrain.latents import phase_inputs

    uri, dataset = shapes_pairs
    vae, text_encoder, tokenizer = encoders
    spec = diffusion_spec(uri)
    first = phase_inputs(spec, 32, dataset, vae, text_encoder, tokenizer, trainingjob_storage(object_store, 1),
                         tmp_path / "a1", is_writer=True, wait=lambda: None)
    manifest_key = first.uri[len(f"s3://{BUCKET}/"):] + MANIFEST_FILE
    old = {key: value for key, value in first.manifest.items() if key != "firstCaptions"}
    object_store.put(BUCKET, manifest_key, json.dumps(old).encode())
    listed = ImageDataset(spec, object_store, tmp_path / "a2")
    again = phase_inputs(spec, 32, listed, vae, text_encoder, tokenizer, trainingjob_storage(object_store, 2),
                         tmp_path / "a2", is_writer=True, wait=lambda: None)
    assert again.reused and listed.loaded and again.summary == first.summary

    object_store.put(BUCKET, manifest_key, json.dumps({**old, "count": old["count"] + 1}).encode())
    with pytest.raises(WorkloadError, match="holds 13 samples but the dataset has 12"):
        phase_inputs(spec, 32, ImageDataset(spec, object_store, tmp_path / "a3"), vae, text_encoder, tokenizer,
                     trainingjob_storage(object_store, 3), tmp_path / "a3", is_writer=True, wait=lambda: None)


def test_a_torn_cache_without_its_manifest_is_recomputed(object_store, shapes_pairs, encoders, tmp_path):
    from kubeforge.storage.layout import MANIFEST_FILE
    from kubeforge_workloads.pretrain.latents import phase_inputs

    uri, dataset = shapes_pairs
    vae, text_encoder, tokenizer = encoders
    spec = diffusion_spec(uri)
    first = phase_inputs(spec, 32, dataset, vae, text_encoder, tokenizer, trainingjob_storage(object_store, 1),
                         tmp_path / "a1", is_writer=True, wait=lambda: None)
    cache_prefix = first.uri[len(f"s3://{BUCKET}/"):]
    object_store.client.delete_object(Bucket=BUCKET, Key=cache_prefix + MANIFEST_FILE)  # the writer died before it
    again = phase_inputs(spec, 32, dataset, vae, text_encoder, tokenizer, trainingjob_storage(object_store, 2),
                         tmp_path / "a2", is_writer=True, wait=lambda: None)
    assert not again.reused and object_store.get(BUCKET, cache_prefix + MANIFEST_FILE) is not None


@pytest.mark.parametrize("dtype, tolerance", [("fp32", 1e-5), ("fp16", 2e-3), ("bf16", 1.6e-2)])
def test_precomputed_inputs_match_encoding_at_every_batch(object_store, shapes_pairs, encoders, tmp_path, dtype,
                                                          tolerance):
    """fp32 differs from encoding in another batch only by the batch's float rounding; fp16 (11 significant bits)
    and bf16 (8) by one rounding of each value: relative error at most 2^-11 ~ 4.9e-4 and 2^-8 ~ 3.9e-3."""
    import torch

    from kubeforge_workloads.pretrain.latents import OnTheFlyInputs, phase_inputs

    uri, dataset = shapes_pairs
    vae, text_encoder, tokenizer = encoders
    spec = diffusion_spec(uri, **{"precompute.dtype": dtype})
    cached = phase_inputs(spec, 32, dataset, vae, text_encoder, tokenizer, trainingjob_storage(object_store, 1),
                          tmp_path / "c", is_writer=True, wait=lambda: None)
    live = phase_inputs(diffusion_spec(uri, **{"precompute.latents": False}), 32, dataset, vae, text_encoder, tokenizer,
                        trainingjob_storage(object_store, 1), tmp_path / "l", is_writer=True,
                        wait=lambda: pytest.fail("encoding at every batch needs no barrier"))
    assert isinstance(live, OnTheFlyInputs) and live.uri is None and not live.reused
    ids = [3, 0, 7, 11]
    from_cache, from_encoders = cached.batch(ids), live.batch(torch.tensor(ids))
    for name in ("latents", "encoder_hidden_states"):
        assert from_cache[name].dtype == from_encoders[name].dtype == torch.float32
        torch.testing.assert_close(from_cache[name], from_encoders[name], rtol=tolerance, atol=tolerance)
    assert from_cache["latents"].shape == (4, 4, 8, 8) and from_cache["encoder_hidden_states"].shape == (4, 16, 32)
    # The latents are scaled: the VAE's raw posterior mean times its scaling factor.
    with torch.no_grad():
        raw = vae.encode(pixels([dataset.pairs().images[3]], 32)).latent_dist.mean
    torch.testing.assert_close(from_encoders["latents"][0], raw[0] * vae.config.scaling_factor)
