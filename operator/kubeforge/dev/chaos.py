"""Chaos for tests and demos, in the spirit of chaos-mesh: ask the local KubeRay (through the API, with an
annotation on the RayJob) to kill a job's cluster, hang its processes, or resume them."""

from __future__ import annotations

import click

from kubeforge.dev.kuberay.controller import CHAOS_ANNOTATION, GROUP, PLURAL, VERSION

REASONS = ("NodeLost", "OOMKilled", "Evicted")


def request(api, namespace: str, rayjob: str, action: str) -> None:
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, rayjob,
                                       {"metadata": {"annotations": {CHAOS_ANNOTATION: action}}})


def kill(api, namespace: str, rayjob: str, reason: str = "NodeLost") -> None:
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {', '.join(REASONS)}")
    request(api, namespace, rayjob, f"kill:{reason}")


def hang(api, namespace: str, rayjob: str) -> None:
    request(api, namespace, rayjob, "hang")


def resume(api, namespace: str, rayjob: str) -> None:
    request(api, namespace, rayjob, "resume")


def _api(kubeconfig):
    from kubernetes import client, config

    return client.CustomObjectsApi(config.new_client_from_config(kubeconfig))


@click.group("chaos")
def chaos_cli() -> None:
    """Inject failures into a RayJob run by the local KubeRay (uses $KUBECONFIG)."""


@chaos_cli.command("kill")
@click.argument("rayjob")
@click.option("--reason", type=click.Choice(REASONS), default="NodeLost", show_default=True)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--kubeconfig", envvar="KUBECONFIG")
def kill_cmd(rayjob: str, reason: str, namespace: str, kubeconfig: str) -> None:
    """Stop the job and report its cluster lost, as KubeRay would."""
    kill(_api(kubeconfig), namespace, rayjob, reason)
    click.echo(f"rayjob {namespace}/{rayjob}: kill ({reason}) requested")


@chaos_cli.command("hang")
@click.argument("rayjob")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--kubeconfig", envvar="KUBECONFIG")
def hang_cmd(rayjob: str, namespace: str, kubeconfig: str) -> None:
    """SIGSTOP the job's driver and worker processes."""
    hang(_api(kubeconfig), namespace, rayjob)
    click.echo(f"rayjob {namespace}/{rayjob}: hang requested")


@chaos_cli.command("resume")
@click.argument("rayjob")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--kubeconfig", envvar="KUBECONFIG")
def resume_cmd(rayjob: str, namespace: str, kubeconfig: str) -> None:
    """SIGCONT the job's processes."""
    resume(_api(kubeconfig), namespace, rayjob)
    click.echo(f"rayjob {namespace}/{rayjob}: resume requested")
