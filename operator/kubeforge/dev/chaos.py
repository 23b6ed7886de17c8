"""Chaos for tests and demos, in the spirit of chaos-mesh: ask the local KubeRay (through the API, with the
annotation `chaos.kubeforge.dev/action` on the RayJob) to do something physical to a job. The chaos never writes the
RayJob's status: the local KubeRay derives it afterwards from what it observes (Ray's job status and message,
processes killed by its memory monitor), as KubeRay derives it from Ray and from pod state.

    kill(api, ns, rayjob)            SIGKILL the job's driver, workers and actors at once: the node under it vanished.
        reason="Evicted"             the same, after recording the kubelet's Evicted event on the RayJob.
        reason="OOMKilled"           same as oom() (kept for compatibility: an OOM kill is the monitor's verdict).
    oom(api, ns, rayjob)             the training loop allocates memory until the container limit the local KubeRay
                                     enforces (resources.limits.memory) is crossed and the monitor kills it.
    stall(api, ns, rayjob)           the training loop blocks at its next step (GIL released, heartbeat thread alive),
                                     as a rank waiting in a collective for a dead peer; resume() undoes it.
    hang(api, ns, rayjob)            SIGSTOP every process of the job (heartbeat stops too).
    resume(api, ns, rayjob)          SIGCONT the same set and end a stall.
    wait_for_checkpoint(...)         block until the owner's status.progress.lastCheckpoint shows a checkpoint.

The local KubeRay acts on the annotation within about a second, then removes it and records
`chaos.kubeforge.dev/last: "<action> at <time>"`; with wait=True these functions return only once that happened.
`api` is a kubernetes.client.CustomObjectsApi.
"""

from __future__ import annotations

import time

import click

from kubeforge.dev.kuberay.controller import CHAOS_ANNOTATION, CHAOS_LAST_ANNOTATION, GROUP, PLURAL, VERSION
from kubeforge.dev.kuberay.status import CHAOS_REASONS
from kubeforge.storage.layout import checkpoint_step_of

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


def oom(api, namespace: str, rayjob: str, wait: bool = False, timeout: float = 30) -> None:
    request(api, namespace, rayjob, "oom", wait, timeout)


def stall(api, namespace: str, rayjob: str, wait: bool = False, timeout: float = 30) -> None:
    request(api, namespace, rayjob, "stall", wait, timeout)


def wait_for_checkpoint(api, namespace: str, rayjob: str, min_step: int | None = None, timeout: float = 600,
                        poll: float = 0.5) -> str:
    """Wait until the resource owning the RayJob reports status.progress.lastCheckpoint (at step >= min_step when
    given); returns that URI. Raises TimeoutError, or LookupError when the RayJob or its owner is gone."""
    deadline = time.monotonic() + timeout
    while True:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, rayjob)
        owners = [o for o in obj["metadata"].get("ownerReferences") or [] if o.get("controller")] or \
            obj["metadata"].get("ownerReferences") or []
        if not owners:
            raise LookupError(f"RayJob {namespace}/{rayjob} has no owner whose progress reports checkpoints")
        owner = owners[0]
        group, _, version = owner["apiVersion"].rpartition("/")
        owner_obj = api.get_namespaced_custom_object(group, version, namespace, _plural(owner["kind"]),
                                                     owner["name"])
        uri = ((owner_obj.get("status") or {}).get("progress") or {}).get("lastCheckpoint")
        step = checkpoint_step_of(uri)
        if uri and (min_step is None or (step is not None and step >= min_step)):
            return uri
        if (obj.get("status") or {}).get("jobDeploymentStatus") in ("Complete", "Failed", "ValidationFailed"):
            raise LookupError(f"RayJob {namespace}/{rayjob} finished before a checkpoint"
                              + (f" at step >= {min_step}" if min_step else "") + " was reported")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{owner['kind']} {namespace}/{owner['name']} reported no checkpoint"
                               + (f" at step >= {min_step}" if min_step else "") + f" within {timeout:.0f}s")
        time.sleep(poll)


def _plural(kind: str) -> str:
    from kubeforge.api import KINDS

    return next((info.plural for info in KINDS if info.kind == kind), kind.lower() + "s")


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
@click.option("--reason", type=click.Choice(REASONS), default="NodeLost", show_default=True,
              help="NodeLost: SIGKILL all the job's processes; Evicted: the same after the kubelet's Evicted event; "
                   "OOMKilled: same as `oom`. The RayJob's status is what the local KubeRay then observes.")
@click.option("--after-checkpoint", "after_checkpoint", type=int, default=None, is_flag=False, flag_value=0,
              metavar="[STEP]", help="first wait until the owning resource reports a checkpoint (at step >= STEP)")
@click.option("--checkpoint-timeout", type=float, default=600, show_default=True,
              help="seconds to wait for that checkpoint")
@_namespace
@_kubeconfig
@_wait
@_timeout
def kill_cmd(rayjob: str, reason: str, after_checkpoint: int | None, checkpoint_timeout: float, namespace: str,
             kubeconfig: str, wait: bool, timeout: float) -> None:
    """Kill the job's processes at once, as when the node under them vanishes."""
    if after_checkpoint is not None:
        from kubernetes.client.exceptions import ApiException

        try:
            uri = wait_for_checkpoint(_api(kubeconfig), namespace, rayjob, after_checkpoint or None,
                                      timeout=checkpoint_timeout)
        except ApiException as error:
            raise click.ClickException(f"rayjob {namespace}/{rayjob}: {error.status} {error.reason}") from error
        except (TimeoutError, LookupError) as error:
            raise click.ClickException(str(error)) from error
        click.echo(f"rayjob {namespace}/{rayjob}: checkpoint {uri} reported")
    _run(kill, rayjob, namespace, kubeconfig, wait, timeout, reason=reason)
    click.echo(f"rayjob {namespace}/{rayjob}: kill ({reason}) {'done' if wait else 'requested'}")


def _simple_command(name: str, action, summary: str) -> None:
    """`kubeforge dev chaos <name> RAYJOB`: ask the local KubeRay for `action` and report it."""

    @chaos_cli.command(name, help=summary)
    @click.argument("rayjob")
    @_namespace
    @_kubeconfig
    @_wait
    @_timeout
    def command(rayjob: str, namespace: str, kubeconfig: str, wait: bool, timeout: float) -> None:
        _run(action, rayjob, namespace, kubeconfig, wait, timeout)
        click.echo(f"rayjob {namespace}/{rayjob}: {name} {'done' if wait else 'requested'}")


_simple_command("oom", oom, "Make the training loop allocate memory until its container's memory limit is enforced.")
_simple_command("stall", stall, "Block the training loop at its next step while the process and its heartbeat keep "
                                "running (`resume` ends it).")
_simple_command("hang", hang, "SIGSTOP the job's driver and worker processes.")
_simple_command("resume", resume, "SIGCONT the job's processes and end a stall.")
