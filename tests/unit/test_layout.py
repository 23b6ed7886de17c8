"""The storage layout: where each object lives, which checkpoints count, and reading a step back from a URI."""

import re

import pytest

from kubeforge.storage.layout import MANIFEST_FILE, ResourcePrefix, checkpoint_step_of, committed_steps, parse_s3_uri


def test_checkpoint_step_of_reads_the_uris_the_layout_writes():
    prefix = ResourcePrefix.for_resource("bucket", "team-a", "FineTune", "docs")
    assert checkpoint_step_of(prefix.uri("checkpoints", "step-12") + "/") == 12
    assert checkpoint_step_of("s3://bucket/team-a/FineTune/docs/checkpoints/step-8") == 8


def test_checkpoint_step_of_is_none_without_a_step():
    for value in (None, "", "s3://bucket/team-a/FineTune/docs/checkpoints/", "s3://b/x/step-abc/",
                  "s3://b/x/step-5/model.safetensors"):
        assert checkpoint_step_of(value) is None, value


def _manifests(prefix, *steps):
    return [prefix.manifest_key(step) for step in steps]


def test_committed_steps_are_numbers_in_numeric_order_across_a_digit_boundary():
    prefix = ResourcePrefix.for_resource("bucket", "team-a", "FineTune", "docs")
    keys = [*_manifests(prefix, 12, 4, 8), prefix.checkpoint_key(8) + "model.safetensors"]
    assert committed_steps(prefix, keys) == [4, 8, 12]
    assert committed_steps(prefix, keys)[-1] == 12  # the step a retry resumes from


def test_committed_steps_ignore_torn_checkpoints_other_resources_and_other_files():
    prefix = ResourcePrefix.for_resource("bucket", "team-a", "FineTune", "docs")
    other = ResourcePrefix.for_resource("bucket", "team-a", "FineTune", "docs-2")
    keys = [
        prefix.checkpoint_key(20) + "model.safetensors",             # torn: files up, manifest not
        prefix.checkpoint_key(30) + "nested/" + MANIFEST_FILE,       # a manifest below a checkpoint's root
        prefix.checkpoints_key + "step-x/" + MANIFEST_FILE,          # not a step number
        prefix.key("outputs", "step-40", MANIFEST_FILE),             # outside checkpoints/
        prefix.checkpoint_key(50) + MANIFEST_FILE + ".tmp",          # not the manifest itself
        *_manifests(other, 60),                                       # another resource
        prefix.manifest_key(5),                                      # after all of those: still found
        prefix.manifest_key(5),                                      # listed twice: counted once
    ]
    assert committed_steps(prefix, keys) == [5]
    assert committed_steps(prefix, []) == []


def test_resource_prefix_keys_and_uris():
    prefix = ResourcePrefix.for_resource("bucket", "team-a", "FineTune", "docs")
    assert prefix.prefix == "team-a/FineTune/docs"
    assert prefix.progress_key == "team-a/FineTune/docs/progress.json"
    assert prefix.checkpoints_key == "team-a/FineTune/docs/checkpoints/"
    assert prefix.checkpoint_key(7) == "team-a/FineTune/docs/checkpoints/step-7/"
    assert prefix.manifest_key(7) == "team-a/FineTune/docs/checkpoints/step-7/MANIFEST.json"
    assert prefix.failure_key(2) == "team-a/FineTune/docs/attempts/2/failure.json"
    assert prefix.output_key("adapter", "x.bin") == "team-a/FineTune/docs/outputs/adapter/x.bin"
    assert prefix.uri("outputs") == "s3://bucket/team-a/FineTune/docs/outputs"
    assert prefix.key("/a/", "", "b/") == "team-a/FineTune/docs/a/b"
    assert prefix.output_key("XL-adapter/", "weights.X") == "team-a/FineTune/docs/outputs/XL-adapter/weights.X"
    override = ResourcePrefix.for_resource("bucket", "team-a", "FineTune", "docs", override="/custom/place/")
    assert override.prefix == "custom/place" and override.bucket == "bucket"
    assert ResourcePrefix.for_resource("b", "ns", "FineTune", "x", override="XL/runs-X/").prefix == "XL/runs-X"


def test_parse_s3_uri():
    assert parse_s3_uri("s3://bucket/a/b.jsonl") == ("bucket", "a/b.jsonl")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    for bad, problem in (("http://bucket/a", "not an s3:// URI"), ("bucket/a", "not an s3:// URI"),
                         ("s3:///a", "s3 URI without a bucket")):
        with pytest.raises(ValueError, match=f"^{re.escape(problem)}: {re.escape(repr(bad))}$"):
            parse_s3_uri(bad)


def test_index_versions_count_only_with_their_manifest_in_numeric_order():
    from kubeforge.storage.layout import INDEX_CHUNKS_FILE, committed_index_versions, index_versions_present

    prefix = ResourcePrefix.for_resource("bucket", "team-a", "VectorIndex", "docs")
    assert prefix.index_version_key(3) == "team-a/VectorIndex/docs/outputs/index/v-3/"
    assert prefix.index_manifest_key(3) == "team-a/VectorIndex/docs/outputs/index/v-3/" + MANIFEST_FILE
    keys = [prefix.index_manifest_key(10), prefix.index_manifest_key(9), prefix.index_version_key(9) + INDEX_CHUNKS_FILE,
            prefix.index_version_key(11) + INDEX_CHUNKS_FILE,  # being written: no manifest yet
            prefix.index_version_key(2) + "nested/" + MANIFEST_FILE,  # not a version's own manifest
            ResourcePrefix.for_resource("bucket", "team-a", "VectorIndex", "docs-2").index_manifest_key(12)]
    assert committed_index_versions(prefix, keys) == [9, 10]
    assert index_versions_present(prefix, keys) == [2, 9, 10, 11]


def test_the_precompute_cache_is_shared_by_the_bucket_and_outside_every_resource_prefix():
    from kubeforge.storage.layout import precompute_cache_prefix

    key = "0123456789abcdef" * 4
    cache = precompute_cache_prefix(key)
    assert cache == f"_precompute/{key}/"
    # The same for every resource: nothing of the resource enters the prefix, and no resource's prefix contains it
    # or is contained in it (deleting a resource's prefix keeps the cache; a namespace cannot be named _precompute).
    for prefix in (ResourcePrefix.for_resource("bucket", "team-a", "TrainingJob", "sd"),
                   ResourcePrefix.for_resource("bucket", "precompute", "TrainingJob", "sd")):
        assert not cache.startswith(prefix.prefix + "/") and not prefix.key("x").startswith(cache)
    for bad in ("", "../other", "ABCDEF0123456789", "0123456789abcdef/x", "short"):
        with pytest.raises(ValueError, match="hex digest"):
            precompute_cache_prefix(bad)
