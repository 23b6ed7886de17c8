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
