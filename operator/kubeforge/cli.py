"""`kubeforge` command line: operator, CRD generation, local sandbox."""

from __future__ import annotations

import sys
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parents[2]


@click.group()
def main() -> None:
    """Kubeforge: the generative-AI lifecycle as Kubernetes resources on KubeRay."""


@main.command()
def operator() -> None:
    """Run the operator (what the container runs). Configured by KUBEFORGE_* environment variables."""
    from kubeforge.main import run_operator

    run_operator()


@main.group()
def crds() -> None:
    """Custom resource definitions generated from the pydantic models."""


@crds.command("generate")
@click.option("--out", type=click.Path(path_type=Path), default=REPO_ROOT / "crds", show_default=True)
def crds_generate(out: Path) -> None:
    """Write crds/*.yaml from kubeforge.api."""
    from kubeforge.api.crdgen import write_all

    for path in write_all(out):
        click.echo(f"wrote {path}")


@crds.command("check")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=REPO_ROOT / "crds", show_default=True)
def crds_check(directory: Path) -> None:
    """Exit 1 if the committed CRDs differ from what the models generate."""
    from kubeforge.api.crdgen import stale_files

    stale = stale_files(directory)
    for path in stale:
        click.echo(f"stale: {path} (run `kubeforge crds generate`)", err=True)
    sys.exit(1 if stale else 0)


from kubeforge.dev.cli import dev  # noqa: E402  (light: click only; heavy imports happen per command)

main.add_command(dev)
