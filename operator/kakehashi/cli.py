"""The `kakehashi` command: one entry point for the platform's tools."""

from __future__ import annotations

import click

from kakehashi import __version__
from kakehashi.demo import demo
from kakehashi.dev.cli import dev


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kakehashi")
def main() -> None:
    """Kakehashi: from a notebook to a production inference service, no rewrite in between."""


main.add_command(dev)
main.add_command(demo)
