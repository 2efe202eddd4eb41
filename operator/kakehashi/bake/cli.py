"""`kakehashi bake`: the bake Job's command (wired into `kakehashi.cli` as `main.add_command`).

Progress goes to stderr, one line per step; the result is one JSON object on stdout, and a
short one (`image`, `modelDigest`, `bytesUploaded`, ...; or `{"error": {"reason", "message",
"temporary"}}`) in `--result FILE`, under the 4096 bytes Kubernetes keeps of a termination
message, so the operator reads the image digest without parsing prose. Exit codes: 0 baked,
2 the model cannot be baked (permanent), 3 the registry was unreachable or failing (temporary:
running the Job again resumes from the blobs already pushed).

Registry credentials for the target registry: KAKEHASHI_REGISTRY_USERNAME and
KAKEHASHI_REGISTRY_PASSWORD (a Secret's keys), else a Docker config.json ($DOCKER_CONFIG), else
an ECR token for an ECR host, else anonymous. KAKEHASHI_REGISTRY_INSECURE=true speaks plain
HTTP to registries that are not on loopback (the dev environment's).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.command("bake")
@click.argument("model")
@click.option("--base", "base_image", required=True, envvar="KAKEHASHI_BAKE_BASE",
              help="Base serving image, host/repository:tag or @sha256:... .")
@click.option("--repository", required=True, envvar="KAKEHASHI_BAKE_REPOSITORY",
              help="Repository to push to, host/repository.")
@click.option("--service", required=True, help="ModelService name (the tag's first part).")
@click.option("--name", "model_name", default="model", show_default=True,
              help="Model name: the image holds it at /models/NAME/.")
@click.option("--tag", default=None, help="Tag to push (default: SERVICE-<model digest>).")
@click.option("--training-run", default=None, help="namespace/name of the TrainingRun.")
@click.option("--metrics", default=None, help="The run's metrics as a JSON object.")
@click.option("--source", default=None, help="Git URL of the training code (label).")
@click.option("--revision", default=None, help="Git revision of the training code (label).")
@click.option("--label", "extra_labels", multiple=True, metavar="KEY=VALUE",
              help="Another image label (repeatable).")
@click.option("--expected-digest", default=None,
              help="The model digest the TrainingRun recorded; a mismatch refuses the bake.")
@click.option("--no-verify", is_flag=True, help="Bake even if the files do not match the digest.")
@click.option("--no-compile", is_flag=True,
              help="Never compile; bake the model as it is (the server may then need TensorFlow).")
@click.option("--compression", type=click.Choice(["none", "gzip"]), default="none",
              show_default=True, help="Layer compression (weights barely compress).")
@click.option("--insecure", is_flag=True, envvar="KAKEHASHI_REGISTRY_INSECURE",
              help="Plain HTTP to the registries (loopback registries always are).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the model is downloaded and the layer written (default: a temp dir).")
@click.option("--result", "result_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write the result JSON here.")
def bake_command(model: str, base_image: str, repository: str, service: str, model_name: str,
                 tag: str | None, training_run: str | None, metrics: str | None,
                 source: str | None, revision: str | None, extra_labels: tuple[str, ...],
                 expected_digest: str | None, no_verify: bool, no_compile: bool,
                 compression: str, insecure: bool, workdir: Path | None,
                 result_file: Path | None) -> None:
    """Bake MODEL (a directory or s3://bucket/prefix/) onto the base image, by appending one
    reproducible layer through the registry API; print the pushed image's digest as JSON."""
    from kakehashi.bake.bake import BakeError, bake, compile_with_tensorflow
    from kakehashi.bake.layer import LayerError
    from kakehashi.bake.registry import Credentials, RegistryError

    labels = {}
    for item in extra_labels:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--label")
        labels[key] = value
    parsed_metrics = None
    if metrics:
        try:
            parsed_metrics = {str(k): float(v) for k, v in json.loads(metrics).items()}
        except (ValueError, AttributeError, TypeError) as error:
            raise click.BadParameter(f"not a JSON object of numbers: {error}",
                                     param_hint="--metrics") from None
    username = os.environ.get("KAKEHASHI_REGISTRY_USERNAME")
    credentials = (Credentials(username, os.environ.get("KAKEHASHI_REGISTRY_PASSWORD", ""))
                   if username else None)
    try:
        result = bake(model if model.startswith("s3://") else Path(model), base_image,
                      repository, service=service, model_name=model_name, tag=tag,
                      training_run=training_run, metrics=parsed_metrics, source=source,
                      revision=revision, labels=labels, expected_digest=expected_digest,
                      verify_digest=not no_verify,
                      compile_hook=None if no_compile else compile_with_tensorflow,
                      compression="gzip" if compression == "gzip" else "none",
                      insecure=True if insecure else None, credentials=credentials,
                      workdir=workdir, progress=_say)
    except (BakeError, LayerError, ValueError) as error:
        _fail(result_file, getattr(error, "reason", "BakeFailed"), str(error), temporary=False)
        sys.exit(2)
    except RegistryError as error:
        _fail(result_file, error.reason, str(error), temporary=error.temporary)
        sys.exit(3 if error.temporary else 2)
    if result_file is not None:
        result_file.write_text(json.dumps(result.summary(), sort_keys=True) + "\n")
    click.echo(json.dumps(result.as_dict(), sort_keys=True))


def _fail(result_file: Path | None, reason: str, message: str, *, temporary: bool) -> None:
    _say(f"Bake failed ({reason}): {message}")
    text = json.dumps({"error": {"reason": reason, "message": message[:3000],
                                 "temporary": temporary}}, sort_keys=True)
    if result_file is not None:
        result_file.write_text(text + "\n")
    click.echo(text)
