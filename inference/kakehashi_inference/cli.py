"""`kakehashi-serve`: run the inference server with uvicorn.

Its flags are generated from `Settings`: one `--<field>` per field, with the field's help, its
environment variable and its real default, so the help cannot drift from what the server does.
Flags win over `KAKEHASHI_*` variables. One process, one worker: dynamic batching needs every
request in the same process, and the model already uses every CPU the container has; scale out
with replicas instead.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import click
from pydantic.fields import FieldInfo

from kakehashi_inference import __version__
from kakehashi_inference.settings import ENV_PREFIX, Settings

_BYTES = {"max_image_bytes", "max_request_bytes"}


def _default_text(name: str, field: FieldInfo) -> str:
    default = field.get_default(call_default_factory=True)
    if name == "model_dir":
        return "/models/<model-name>"
    if name == "threads":
        return "the cgroup CPU quota"
    if name == "model_workers":
        return "one per thread"
    if isinstance(default, bool):
        return "true" if default else "false"
    if name in _BYTES and isinstance(default, int) and default % (1 << 20) == 0:
        return f"{default} ({default >> 20} MiB)"
    if isinstance(default, tuple):
        return ",".join(default) or "none"
    return str(default)


def _option(name: str, field: FieldInfo) -> Callable[[Any], Any]:
    flag = "--" + name.replace("_", "-")
    env = ENV_PREFIX + name.upper()
    help_text = f"{field.description} [env {env}; default {_default_text(name, field)}]"
    annotation = field.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0] if len(args) == 1 else annotation
    if annotation is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
    kind: Any = None
    if typing.get_origin(annotation) is Literal:
        kind = click.Choice([str(value) for value in typing.get_args(annotation)])
    elif annotation is int:
        kind = int
    elif annotation is float:
        kind = float
    elif annotation is Path:
        kind = click.Path(path_type=Path, file_okay=False)
    # No click default: an absent flag leaves the environment (or the field default) in force.
    return click.option(flag, name, type=kind, default=None, help=help_text)


def _settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for name, field in reversed(list(Settings.model_fields.items())):
        command = _option(name, field)(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kakehashi-serve")
@_settings_options
def main(**options: Any) -> None:
    """Serve a model: /v1/predict, /v2 (Open Inference Protocol), /metrics.

    A verified compiled model (`kakehashi compile`) runs on LiteRT without TensorFlow;
    otherwise the SavedModel runs on TensorFlow (the full image).
    """
    from pydantic import ValidationError

    from kakehashi_inference import logs

    try:
        settings = Settings.from_env(**options)
    except ValidationError as error:
        raise click.UsageError(_first_errors(error)) from None
    logs.configure(settings.log_level)
    # The model starts loading before the web stack is imported: the two overlap.
    from kakehashi_inference.model import start_loading

    loading = start_loading(settings)
    import uvicorn

    from kakehashi_inference.app import create_app

    uvicorn.run(
        create_app(settings, loading=loading),
        host=settings.host,
        port=settings.port,
        workers=1,
        ws="none",  # no websocket routes: importing a websocket stack costs ~0.1 s of start-up
        log_config=None,  # keep our JSON handler
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
    )


def _first_errors(error: Any) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
        for item in error.errors()[:5]
    )
