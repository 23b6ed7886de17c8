"""`kubeforge` command line: operator, CRD generation, local sandbox."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parents[2]


class LazyGroup(click.Group):
    """A group whose named subcommands are imported on first use, so that `kubeforge operator` (the
    container's command) never loads the sandbox."""

    def __init__(self, *args, lazy_commands: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands  # command name -> "module:attribute"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            module_name, attribute = self.lazy_commands[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module_name), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy_commands={"dev": "kubeforge.dev.cli:dev"})
def main() -> None:
    """Kubeforge: the generative-AI lifecycle as Kubernetes resources on KubeRay."""


@main.command()
def operator() -> None:
    """Run the operator (what the container runs). Configured by KUBEFORGE_* environment variables."""
    from kubeforge.main import run_operator

    run_operator()


@main.command()
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False), default=None,
              help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
@click.option("-n", "--namespace", default=None, help="also check this namespace's workload Secret")
def doctor(kubeconfig: str | None, namespace: str | None) -> None:
    """Check the operator's prerequisites (KubeRay CRDs, bucket, MLflow, workload Secret) with the operator's
    settings (KUBEFORGE_* environment) and credentials (AWS_* environment). Exit 1 if any fails."""
    from kubernetes import client, config

    from kubeforge.prerequisites import doctor as run_checks
    from kubeforge.settings import Settings

    if kubeconfig:
        api_client = config.new_client_from_config(kubeconfig)
    else:
        from kubeforge.cluster import load_kube_config

        load_kube_config()
        api_client = client.ApiClient()
    checks = run_checks(Settings(), api_client, namespace)
    for name, problem in checks:
        click.echo(f"{'ok  ' if problem is None else 'FAIL'} {name}" + (f": {problem}" if problem else ""))
    sys.exit(1 if any(problem for _, problem in checks) else 0)


@main.command()
@click.argument("resource", metavar="vi/NAME")
@click.argument("text")
@click.option("-k", default=5, show_default=True, help="chunks to return")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE", help="only chunks with this metadata")
@click.option("--version", type=int, default=None, help="an index version (default: the current one)")
@click.option("-n", "--namespace", default="default", show_default=True)
def query(resource: str, text: str, k: int, filters: tuple[str, ...], version, namespace: str) -> None:
    """Query a VectorIndex: the chunks nearest TEXT, as JSON lines (score, document, text, metadata).

    Reads the index from the object store with the workloads' query library (the same one RAG and EvalRun use),
    so it needs the `workloads` extra and object-store credentials (AWS_*) where it runs."""
    import subprocess

    from kubernetes import client

    from kubeforge.api.meta import GROUP, VERSION
    from kubeforge.cluster import load_kube_config

    kind, _, name = resource.rpartition("/")
    if kind not in ("", "vi", "vectorindex", "vectorindexes"):
        raise click.BadParameter(f"{resource}: expected vi/NAME", param_hint="RESOURCE")
    load_kube_config()
    obj = client.CustomObjectsApi().get_namespaced_custom_object(GROUP, VERSION, namespace, "vectorindexes", name)
    status = obj.get("status") or {}
    if not status.get("currentVersion") or not status.get("storagePrefix"):
        raise click.ClickException(f"VectorIndex {namespace}/{name} has no version yet "
                                   f"(phase {status.get('phase') or 'unknown'}): wait for Ready")
    # A subprocess: the operator package never imports the workloads (and their ML stack).
    argv = [sys.executable, "-m", "kubeforge_workloads.index.query", status["storagePrefix"], text, "-k", str(k)]
    argv += [arg for f in filters for arg in ("--filter", f)]
    argv += ["--version", str(version)] if version is not None else []
    sys.exit(subprocess.call(argv))


@main.command()
@click.argument("resource", metavar="se/NAME")
@click.option("--template", required=True, help="the endpoint's promptTemplates entry to fill with each row")
@click.option("--input", "input_uri", required=True, metavar="s3://BUCKET/KEY", help="a .jsonl or .parquet table")
@click.option("--output", "output_uri", required=True, metavar="s3://BUCKET/PREFIX/",
              help="where the results go: one JSON line per row in shards part-<first row>.jsonl")
@click.option("--column", default="text", show_default=True, help="the column that fills the template's {input}")
@click.option("--id-column", default="id", show_default=True, help="copied into each result as `id`")
@click.option("--model", default=None, help="the endpoint's base model (default) or one of its adapters")
@click.option("--block-rows", default=16, show_default=True, type=click.IntRange(min=1),
              help="rows per output shard: the unit of progress and resume")
@click.option("--retries", default=2, show_default=True, type=click.IntRange(min=0),
              help="rerun a failed run this many times (KubeRay's backoffLimit; with the endpoint's "
                   "clusterSelector, this command resubmits while it follows)")
@click.option("--detach", is_flag=True, help="submit and return without following (KubeRay still retries, except "
                                             "on a cluster picked by clusterSelector)")
@click.option("--timeout", default=3600, show_default=True, help="seconds to follow before giving up")
@click.option("-n", "--namespace", default="default", show_default=True)
def batch(resource: str, template: str, input_uri: str, output_uri: str, column: str, id_column: str,
          model: str | None, block_rows: int, retries: int, detach: bool, timeout: int, namespace: str) -> None:
    """Run a ServingEndpoint's prompt template over every row of a table, as a KubeRay RayJob with Ray Data on
    the endpoint's base model (or adapter), and print rows done/total as it goes.

    Rerunning the same command resumes: shards already written are skipped. Retries are the cluster's: the
    RayJob has backoffLimit --retries, so KubeRay reruns a failed run on a fresh cluster, followed or not. On a
    cluster picked by the endpoint's clusterSelector (where KubeRay refuses backoffLimit) this command resubmits a
    failed attempt as a new RayJob `<endpoint>-b<id>-<attempt>` while it follows; with --detach there a failure is
    final. The RayJobs are owned by the endpoint (deleted with it)."""
    from kubernetes import client

    from kubeforge.batchrun import BatchError, BatchRun, endpoint_name, prepare
    from kubeforge.cluster import load_kube_config
    from kubeforge.settings import Settings
    from kubeforge.storage.objectstore import S3ObjectStore

    load_kube_config()
    run = BatchRun(client.CustomObjectsApi(), S3ObjectStore(), Settings(), namespace, click.echo)
    try:
        endpoint = run.endpoint(endpoint_name(resource))
        request, app = prepare(endpoint, template, model, input_uri, output_uri, column, id_column, block_rows)
        submitted = run.submit(endpoint, request, app, retries)
    except BatchError as error:
        raise click.ClickException(str(error)) from None
    if detach:
        return
    sys.exit(run.follow(endpoint, submitted, app, retries, timeout))


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

