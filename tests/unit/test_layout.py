"""The storage layout reads a checkpoint's step back from the URIs it writes."""

from kubeforge.storage.layout import ResourcePrefix, checkpoint_step_of


def test_checkpoint_step_of_reads_the_uris_the_layout_writes():
    prefix = ResourcePrefix.for_resource("bucket", "team-a", "FineTune", "docs")
    assert checkpoint_step_of(prefix.uri("checkpoints", "step-12") + "/") == 12
    assert checkpoint_step_of("s3://bucket/team-a/FineTune/docs/checkpoints/step-8") == 8


def test_checkpoint_step_of_is_none_without_a_step():
    for value in (None, "", "s3://bucket/team-a/FineTune/docs/checkpoints/", "s3://b/x/step-abc/",
                  "s3://b/x/step-5/model.safetensors"):
        assert checkpoint_step_of(value) is None, value
