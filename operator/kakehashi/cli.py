"""The `kakehashi` command: one entry point for the platform's tools."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import ClassVar

import click

from kakehashi import __version__


class LazyGroup(click.Group):
    """Subcommands imported only when run: each image installs one extra (the bake Job's image
    has no kopf, the serving image no kubernetes), and `kakehashi bake` must start there."""

    LAZY: ClassVar[dict[str, str]] = {
        "dev": "kakehashi.dev.cli:dev",
        "demo": "kakehashi.demo:demo",
        "operator": "kakehashi.runner:operator_group",
        "bake": "kakehashi.bake.cli:bake_command",
        # The notebook SDK's verbs (kakehashi[sdk]).
        **{verb: f"kakehashi.sdk.cli:{verb}"
           for verb in ("train", "runs", "status", "logs", "deploy", "services", "rollback", "predict")},
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.LAZY:
            module, _, attribute = self.LAZY[name].partition(":")
            command: click.Command = getattr(importlib.import_module(module), attribute)
            return command
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kakehashi")
def main() -> None:
    """Kakehashi: from a notebook to a production inference service, no rewrite in between."""


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


@main.command("compile")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--atol", type=float, default=1e-5, show_default=True,
              help="Absolute tolerance of the compiled outputs against the SavedModel's.")
@click.option("--rtol", type=float, default=1e-3, show_default=True,
              help="Relative tolerance of that check.")
def compile_command(model_dir: Path, atol: float, rtol: float) -> None:
    """Compile MODEL_DIR/savedmodel to TFLite once, parity-checked, into MODEL_DIR/compiled.

    Every serving signature is converted and compared with the SavedModel on deterministic
    inputs; compiled/record.json says how closely each matched. Exits 1 if any did not convert
    or failed parity (the server then serves the SavedModel, which needs TensorFlow).
    """
    from kakehashi.compile import CompileError, compile_model

    try:
        record = compile_model(model_dir, atol=atol, rtol=rtol, progress=click.echo)
    except CompileError as error:
        raise click.ClickException(str(error)) from None
    verdict = "passed" if record.passed else "FAILED"
    click.echo(f"{model_dir / 'compiled'}: {verdict} (from {record.source_digest}, "
               f"{record.seconds:g} s)")
    if not record.passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
