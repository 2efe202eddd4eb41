"""The `kakehashi` command: one entry point for the platform's tools."""

from __future__ import annotations

import click

from kakehashi import __version__
from kakehashi.demo import demo
from kakehashi.dev.cli import dev
from kakehashi.runner import operator_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kakehashi")
def main() -> None:
    """Kakehashi: from a notebook to a production inference service, no rewrite in between."""


main.add_command(dev)
main.add_command(demo)
main.add_command(operator_group)


@main.command("crds")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="manifests/crds",
    show_default=True,
    help="Directory to write the CRDs (and their kustomization.yaml) to.",
)
def crds(out: str) -> None:
    """Regenerate the CustomResourceDefinitions from the resource models."""
    from pathlib import Path

    from kakehashi.api import crds as crd_module

    for path in crd_module.write(Path(out)):
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
