"""The chaos functions and click group against a fake CustomObjectsApi that plays the local KubeRay."""

import pytest
from click.testing import CliRunner

from kubeforge.dev import chaos


class FakeApi:
    """Records the annotation patch; the 'controller' clears it after `delay_reads` reads."""

    def __init__(self, delay_reads=1):
        self.patches, self.annotations, self.reads, self.delay_reads = [], {}, 0, delay_reads

    def patch_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        self.patches.append((group, version, namespace, plural, name, body))
        self.annotations.update(body["metadata"]["annotations"])

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.reads += 1
        if self.reads > self.delay_reads:
            self.annotations.pop("chaos.kubeforge.dev/action", None)
        return {"metadata": {"annotations": dict(self.annotations)}}


@pytest.mark.parametrize("call,action", [
    (lambda api: chaos.kill(api, "ns", "rj", "OOMKilled"), "kill:OOMKilled"),
    (lambda api: chaos.kill(api, "ns", "rj"), "kill:NodeLost"),
    (lambda api: chaos.hang(api, "ns", "rj"), "hang"),
    (lambda api: chaos.resume(api, "ns", "rj"), "resume"),
])
def test_functions_annotate_the_rayjob(call, action):
    api = FakeApi()
    call(api)
    assert api.patches == [("ray.io", "v1", "ns", "rayjobs", "rj",
                            {"metadata": {"annotations": {"chaos.kubeforge.dev/action": action}}})]


def test_kill_rejects_unknown_reasons():
    with pytest.raises(ValueError, match="NodeLost, OOMKilled, Evicted"):
        chaos.kill(FakeApi(), "ns", "rj", "Cosmic")


def test_wait_returns_once_applied_and_times_out_otherwise():
    api = FakeApi(delay_reads=2)
    chaos.hang(api, "ns", "rj", wait=True)
    assert api.reads == 3
    with pytest.raises(TimeoutError, match="did not act"):
        chaos.hang(FakeApi(delay_reads=10**6), "ns", "rj", wait=True, timeout=0.5)


@pytest.mark.parametrize("args,action,echo", [
    (["kill", "rj", "--reason", "Evicted", "-n", "team"], "kill:Evicted", "rayjob team/rj: kill (Evicted) done"),
    (["hang", "rj", "--no-wait"], "hang", "rayjob default/rj: hang requested"),
    (["resume", "rj"], "resume", "rayjob default/rj: resume done"),
])
def test_cli(monkeypatch, args, action, echo):
    api = FakeApi()
    monkeypatch.setattr(chaos, "_api", lambda kubeconfig: api)
    result = CliRunner().invoke(chaos.chaos_cli, args)
    assert result.exit_code == 0, result.output
    assert echo in result.output
    assert api.patches[0][5]["metadata"]["annotations"]["chaos.kubeforge.dev/action"] == action


def test_cli_rejects_bad_reason(monkeypatch):
    monkeypatch.setattr(chaos, "_api", lambda kubeconfig: FakeApi())
    result = CliRunner().invoke(chaos.chaos_cli, ["kill", "rj", "--reason", "Cosmic"])
    assert result.exit_code == 2 and "Cosmic" in result.output


@pytest.mark.parametrize("args,action,echo", [
    (["stall", "rj"], "stall", "rayjob default/rj: stall done"),
    (["oom", "rj", "-n", "team"], "oom", "rayjob team/rj: oom done"),
])
def test_cli_stall_and_oom(monkeypatch, args, action, echo):
    api = FakeApi()
    monkeypatch.setattr(chaos, "_api", lambda kubeconfig: api)
    result = CliRunner().invoke(chaos.chaos_cli, args)
    assert result.exit_code == 0, result.output
    assert echo in result.output
    assert api.patches[0][5]["metadata"]["annotations"]["chaos.kubeforge.dev/action"] == action


class OwnedRayJobApi(FakeApi):
    """A RayJob owned by a FineTune whose status.progress.lastCheckpoint advances one step per read."""

    def __init__(self, checkpoints):
        super().__init__()
        self.checkpoints = list(checkpoints)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if plural == "finetunes":
            assert (group, version, name) == ("kubeforge.dev", "v1alpha1", "ft")
            uri = self.checkpoints.pop(0) if len(self.checkpoints) > 1 else self.checkpoints[0]
            return {"status": {"progress": {"lastCheckpoint": uri} if uri else {}}}
        obj = super().get_namespaced_custom_object(group, version, namespace, plural, name)
        obj["metadata"]["ownerReferences"] = [{"apiVersion": "kubeforge.dev/v1alpha1", "kind": "FineTune",
                                               "name": "ft", "controller": True}]
        obj["status"] = {"jobDeploymentStatus": "Running"}
        return obj


def test_kill_after_checkpoint_waits_for_a_checkpoint_at_the_step(monkeypatch):
    api = OwnedRayJobApi([None, "s3://b/p/checkpoints/step-4/", "s3://b/p/checkpoints/step-8/",
                          "s3://b/p/checkpoints/step-12/"])
    monkeypatch.setattr(chaos, "_api", lambda kubeconfig: api)
    monkeypatch.setattr(chaos.time, "sleep", lambda s: None)
    result = CliRunner().invoke(chaos.chaos_cli, ["kill", "rj", "--after-checkpoint", "10"])
    assert result.exit_code == 0, result.output
    assert "checkpoint s3://b/p/checkpoints/step-12/ reported" in result.output  # 12 >= 10; 8 was not
    assert api.patches[0][5]["metadata"]["annotations"]["chaos.kubeforge.dev/action"] == "kill:NodeLost"


def test_kill_after_any_checkpoint(monkeypatch):
    api = OwnedRayJobApi([None, None, "s3://b/p/checkpoints/step-4/"])
    monkeypatch.setattr(chaos, "_api", lambda kubeconfig: api)
    monkeypatch.setattr(chaos.time, "sleep", lambda s: None)
    result = CliRunner().invoke(chaos.chaos_cli, ["kill", "rj", "--after-checkpoint"])
    assert result.exit_code == 0, result.output
    assert "step-4/ reported" in result.output and api.patches


def test_kill_after_checkpoint_times_out_without_killing(monkeypatch):
    api = OwnedRayJobApi([None])
    monkeypatch.setattr(chaos, "_api", lambda kubeconfig: api)
    result = CliRunner().invoke(chaos.chaos_cli, ["kill", "rj", "--after-checkpoint", "--checkpoint-timeout", "0.3"])
    assert result.exit_code == 1 and "reported no checkpoint within 0s" in result.output and api.patches == []
