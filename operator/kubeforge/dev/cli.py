"""`kubeforge dev ...`: the local sandbox commands. Heavy imports happen inside each command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from kubeforge.dev.sandbox import DEFAULT_BASE_PORT, PORT_BLOCK_SIZE  # light: no third-party imports but yaml

STATE_DIR_OPTION = click.option("--state-dir", type=click.Path(path_type=Path),
                                default=lambda: os.environ.get("KUBEFORGE_DEV_DIR", ".kubeforge-dev"),
                                show_default=".kubeforge-dev (or $KUBEFORGE_DEV_DIR)")


@click.group()
def dev() -> None:
    """Local sandbox: API emulator, local KubeRay + Ray, S3 (moto), MLflow and the operator on loopback."""


@dev.command()
@STATE_DIR_OPTION
@click.option("--base-port", type=int, default=DEFAULT_BASE_PORT, show_default=True,
              help=f"First of the {PORT_BLOCK_SIZE} consecutive ports the sandbox takes (its servers, then Ray's).")
@click.option("--no-operator", is_flag=True, help="Start everything but the operator (run it yourself).")
@click.option("--no-seed", is_flag=True, help="Skip the seed model and datasets.")
def up(state_dir: Path, base_port: int, no_operator: bool, no_seed: bool) -> None:
    """Start the sandbox in the background."""
    from kubeforge.dev import sandbox

    try:
        state = sandbox.up(state_dir, base_port, with_operator=not no_operator, with_seed=not no_seed)
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"\nexport KUBECONFIG={state.kubeconfig.resolve()}")


@dev.command()
@STATE_DIR_OPTION
def down(state_dir: Path) -> None:
    """Stop every sandbox process (state stays on disk)."""
    from kubeforge.dev import sandbox

    try:
        stopped = sandbox.down(state_dir)
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None
    click.echo("stopped" if stopped else f"no sandbox state in {state_dir}")


@dev.command()
@STATE_DIR_OPTION
def status(state_dir: Path) -> None:
    """Show each component and whether it answers."""
    from kubeforge.dev import sandbox

    report = sandbox.status(state_dir)
    if not report:
        raise click.ClickException(f"no sandbox in {state_dir}; run `kubeforge dev up`")
    for component, state in report.items():
        click.echo(f"{component:10} {state}")
    sys.exit(0 if all(s.startswith("running") for s in report.values()) else 1)


@dev.command()
@STATE_DIR_OPTION
def kubeconfig(state_dir: Path) -> None:
    """Print the kubeconfig path: `export KUBECONFIG=$(kubeforge dev kubeconfig)`."""
    path = Path(state_dir).resolve() / "kubeconfig"
    if not path.exists():
        raise click.ClickException(f"no kubeconfig in {state_dir}; run `kubeforge dev up`")
    click.echo(str(path))


@dev.command()
@STATE_DIR_OPTION
@click.argument("component", type=click.Choice(["s3", "apiserver", "mlflow", "kuberay", "operator", "seed"]))
@click.option("-f", "--follow", is_flag=True)
def logs(state_dir: Path, component: str, follow: bool) -> None:
    """Show a component's log."""
    path = Path(state_dir).resolve() / "logs" / f"{component}.log"
    if not path.exists():
        raise click.ClickException(f"no log for {component} in {path.parent}")
    os.execvp("tail", ["tail", "-n", "200", *(["-f"] if follow else []), str(path)])


@dev.command()
@STATE_DIR_OPTION
@click.option("-f", "--file", "manifest", type=click.Path(exists=True), default="examples/quickstart.yaml",
              show_default=True)
@click.option("--timeout", default=900, show_default=True, help="Seconds to wait for the final state.")
def demo(state_dir: Path, manifest: str, timeout: int) -> None:
    """Bring the sandbox up if needed, apply a manifest and follow its resources to their final state."""
    import yaml

    from kubeforge.dev import progress_watch, sandbox

    state = sandbox.SandboxState.load(Path(state_dir).resolve())
    if state is None or not all(s.startswith("running") for s in sandbox.status(state_dir).values()):
        state = sandbox.up(state_dir)
    env = {**os.environ, **state.client_env()}
    subprocess.run(["kubectl", "apply", "-f", manifest], env=env, check=True)
    refs = progress_watch.applied_refs(yaml.safe_load_all(Path(manifest).read_text()), sandbox.NAMESPACE)
    board = progress_watch.follow(refs, str(state.kubeconfig), timeout, echo=click.echo)
    subprocess.run(["kubectl", "get", "genai", "-o", "wide"], env=env)
    if board.failures():
        raise click.ClickException("; ".join(f"{ref} {why}" for ref, why in board.failures().items()) +
                                   " (see `kubectl describe` and `kubeforge dev logs operator`)")
    if not board.done:
        raise click.ClickException(f"{', '.join(map(str, board.pending()))} not final after {timeout}s; see "
                                   "`kubectl describe` and `kubeforge dev logs operator`")
    click.echo(f"\nAll done. In another shell: export KUBECONFIG={state.kubeconfig.resolve()}")


from kubeforge.dev.chaos import chaos_cli  # noqa: E402  (light: click only at import)

dev.add_command(chaos_cli, "chaos")
