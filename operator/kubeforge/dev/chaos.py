"""Chaos for tests and demos, in the spirit of chaos-mesh: ask the local KubeRay (through the API, with the
annotation `chaos.kubeforge.dev/action` on the RayJob) to kill a job's cluster, hang its processes, or resume them.

    kill(api, ns, rayjob, "NodeLost" | "OOMKilled" | "Evicted")
        the local KubeRay SIGKILLs the job's driver and workers, stops the Ray job and writes the status KubeRay
        reports for a job whose node was lost / OOM-killed / evicted: jobDeploymentStatus Failed, jobStatus FAILED,
        reason AppFailed, message "Job entrypoint command failed: <Reason>: ..." (OOMKilled also says exit code 137).
    hang(api, ns, rayjob)    SIGSTOP the job's driver (Ray job info driver_info.pid), its worker/actor processes
                             (Ray state API, by the job's Ray JobID) and every process carrying the job's marker env.
    resume(api, ns, rayjob)  SIGCONT the same set.

The local KubeRay acts on the annotation within about a second, then removes it and records
`chaos.kubeforge.dev/last: "<action> at <time>"`; with wait=True these functions return only once that happened.
`api` is a kubernetes.client.CustomObjectsApi.
"""

from __future__ import annotations

import time

import click

from kubeforge.dev.kuberay.controller import CHAOS_ANNOTATION, CHAOS_LAST_ANNOTATION, GROUP, PLURAL, VERSION
from kubeforge.dev.kuberay.status import CHAOS_REASONS

REASONS = CHAOS_REASONS  # ("NodeLost", "OOMKilled", "Evicted")


def request(api, namespace: str, rayjob: str, action: str, wait: bool = False, timeout: float = 30) -> None:
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, rayjob,
                                       {"metadata": {"annotations": {CHAOS_ANNOTATION: action}}})
    if wait:
        wait_applied(api, namespace, rayjob, action, timeout)


def wait_applied(api, namespace: str, rayjob: str, action: str, timeout: float = 30) -> None:
    """Wait until the local KubeRay has acted on the chaos annotation (it removes it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        annotations = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, rayjob)["metadata"].get(
            "annotations") or {}
        if annotations.get(CHAOS_ANNOTATION) != action:
            return
        time.sleep(0.3)
    raise TimeoutError(f"the local KubeRay did not act on {action!r} for RayJob {namespace}/{rayjob} within "
                       f"{timeout:.0f}s (is it running? a RayJob still Initializing acts once submitted)")


def kill(api, namespace: str, rayjob: str, reason: str = "NodeLost", wait: bool = False, timeout: float = 30) -> None:
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {', '.join(REASONS)}")
    request(api, namespace, rayjob, f"kill:{reason}", wait, timeout)


def hang(api, namespace: str, rayjob: str, wait: bool = False, timeout: float = 30) -> None:
    request(api, namespace, rayjob, "hang", wait, timeout)


def resume(api, namespace: str, rayjob: str, wait: bool = False, timeout: float = 30) -> None:
    request(api, namespace, rayjob, "resume", wait, timeout)


def last_action(api, namespace: str, rayjob: str) -> str | None:
    annotations = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, rayjob)["metadata"].get(
        "annotations") or {}
    return annotations.get(CHAOS_LAST_ANNOTATION)


def _api(kubeconfig):
    from kubernetes import client, config

    return client.CustomObjectsApi(config.new_client_from_config(kubeconfig))


def _run(action, rayjob: str, namespace: str, kubeconfig: str, wait: bool, timeout: float, **kwargs) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        action(_api(kubeconfig), namespace, rayjob, wait=wait, timeout=timeout, **kwargs)
    except ApiException as error:
        raise click.ClickException(f"rayjob {namespace}/{rayjob}: {error.status} {error.reason}") from error
    except TimeoutError as error:
        raise click.ClickException(str(error)) from error


_wait = click.option("--wait/--no-wait", default=True, show_default=True,
                     help="return once the local KubeRay has acted on the request")
_timeout = click.option("--timeout", type=float, default=30, show_default=True, help="seconds to wait")
_namespace = click.option("-n", "--namespace", default="default", show_default=True)
_kubeconfig = click.option("--kubeconfig", envvar="KUBECONFIG")


@click.group("chaos")
def chaos_cli() -> None:
    """Inject failures into a RayJob run by the local KubeRay (uses $KUBECONFIG)."""


@chaos_cli.command("kill")
@click.argument("rayjob")
@click.option("--reason", type=click.Choice(REASONS), default="NodeLost", show_default=True)
@_namespace
@_kubeconfig
@_wait
@_timeout
def kill_cmd(rayjob: str, reason: str, namespace: str, kubeconfig: str, wait: bool, timeout: float) -> None:
    """Kill the job's processes and report its node lost / OOMKilled / Evicted, as KubeRay would."""
    _run(kill, rayjob, namespace, kubeconfig, wait, timeout, reason=reason)
    click.echo(f"rayjob {namespace}/{rayjob}: kill ({reason}) {'done' if wait else 'requested'}")


@chaos_cli.command("hang")
@click.argument("rayjob")
@_namespace
@_kubeconfig
@_wait
@_timeout
def hang_cmd(rayjob: str, namespace: str, kubeconfig: str, wait: bool, timeout: float) -> None:
    """SIGSTOP the job's driver and worker processes."""
    _run(hang, rayjob, namespace, kubeconfig, wait, timeout)
    click.echo(f"rayjob {namespace}/{rayjob}: hang {'done' if wait else 'requested'}")


@chaos_cli.command("resume")
@click.argument("rayjob")
@_namespace
@_kubeconfig
@_wait
@_timeout
def resume_cmd(rayjob: str, namespace: str, kubeconfig: str, wait: bool, timeout: float) -> None:
    """SIGCONT the job's processes."""
    _run(resume, rayjob, namespace, kubeconfig, wait, timeout)
    click.echo(f"rayjob {namespace}/{rayjob}: resume {'done' if wait else 'requested'}")
