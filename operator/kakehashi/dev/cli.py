"""`kakehashi dev …`: the local clusters, S3 and registry, from the command line."""

from __future__ import annotations

import shlex
import sys
import time

import click

from kakehashi.dev import images, stack
from kakehashi.dev.environment import DevEnvironment


def _progress(message: str) -> None:
    click.echo(f"[{time.strftime('%H:%M:%S')}] {message}", err=True)


@click.group("dev")
def dev() -> None:
    """Local learning and production clusters, S3 (MinIO) and an OCI registry on loopback.

    Everything is built from pinned Go modules on first use (several minutes) and cached, so
    later runs start in seconds. Use KUBECONFIG to point the platform at clusters you already
    have (kind, k3d, EKS) instead.
    """


@dev.command()
def up() -> None:
    """Build what is missing and start everything; safe to run again."""
    started = time.monotonic()
    env = stack.up(progress=_progress)
    click.echo(f"Dev environment ready in {time.monotonic() - started:.1f}s")
    for cluster in (env.learning, env.production):
        click.echo(f"  cluster {cluster.name:<10} {cluster.server}  kubeconfig={cluster.kubeconfig}")
    click.echo(f"  s3         {env.s3.endpoint}  bucket={env.s3.model_bucket}")
    click.echo(f"  registry   http://{env.registry}")
    if env.gateway is not None:
        click.echo(f"  gateway    {env.gateway.url}  (Traefik; HTTPRoutes of production)")
    click.echo("Run `eval \"$(kakehashi dev env)\"` to use them from this shell.")


@dev.command("images")
@click.argument("names", nargs=-1, type=click.Choice(sorted(images.PROJECT_IMAGES)))
def images_(names: tuple[str, ...]) -> None:
    """Build the project's images from its Dockerfiles (buildah, no daemon) and push them to
    the local registry; unchanged ones are not rebuilt. Default: the images the tests run."""
    started = time.monotonic()
    built = stack.build_images(list(names or images.DEFAULT_IMAGES), progress=_progress)
    for name, reference in built.items():
        click.echo(f"  {name:<10} {reference}")
    click.echo(f"Images ready in {time.monotonic() - started:.1f}s")


@dev.command()
def down() -> None:
    """Stop every process `dev up` started (by pid) and delete their data."""
    stack.down(progress=_progress)


@dev.command()
def status() -> None:
    """Show each component, its pid and endpoint; exit 1 if anything is down."""
    rows = stack.status()
    if not rows:
        click.echo("Dev environment is not running (run `kakehashi dev up`).")
        sys.exit(1)
    for row in rows:
        state = f"running pid={row.pid}" if row.running else "STOPPED"
        click.echo(f"{row.cluster:<10} {row.component:<24} {state:<20} {row.endpoint}")
    sys.exit(0 if all(row.running for row in rows) else 1)


@dev.command()
def env() -> None:
    """Print shell exports for the running environment: eval "$(kakehashi dev env)"."""
    for key, value in DevEnvironment.load().exports().items():
        click.echo(f"export {key}={shlex.quote(value)}")
