"""Command-line options generated from a pydantic-settings class: one declaration per setting.

Each field of the settings class becomes `--field-name`, with the field's description as its
help and the field's default shown; an option left out falls through to the environment
(`KAKEHASHI_FIELD_NAME`) and then to the default, so `--help`, the environment and the code can
never disagree about a default.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import click
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)
F = TypeVar("F", bound=Callable[..., Any])


def _base(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base(args[0]) if len(args) == 1 else str
    if origin is typing.Annotated:
        return _base(typing.get_args(annotation)[0])
    return annotation


def _env_name(settings: type[BaseSettings], name: str) -> str:
    prefix = str(settings.model_config.get("env_prefix", ""))
    return f"{prefix}{name}".upper()


def _option(settings: type[BaseSettings], name: str, field: FieldInfo) -> Callable[[F], F]:
    flag = "--" + name.replace("_", "-")
    base = _base(field.annotation)
    origin = typing.get_origin(base)
    default = field.get_default(call_default_factory=True)
    shown = ", ".join(map(str, default)) if isinstance(default, list) else default
    suffix = f"; default: {shown}" if default not in (None, [], (), {}) else ""
    help_text = f"{field.description or ''} [env {_env_name(settings, name)}{suffix}]"
    kwargs: dict[str, Any] = {"default": None, "help": help_text}
    if base is bool:
        return click.option(f"{flag}/--no-{name.replace('_', '-')}", name, **kwargs)
    if origin is list:
        return click.option(flag, name, multiple=True, **{**kwargs, "default": ()})
    if origin is Literal:
        return click.option(flag, name, type=click.Choice([str(v) for v in typing.get_args(base)]), **kwargs)
    return click.option(flag, name, type=base if base in (int, float) else str, **kwargs)


def options(settings: type[BaseSettings]) -> Callable[[F], F]:
    """Decorate a click command with one option per settings field."""

    def decorate(function: F) -> F:
        for name, field in reversed(settings.model_fields.items()):
            function = _option(settings, name, field)(function)
        return function

    return decorate


def load(settings: type[S], cli_values: dict[str, Any]) -> S:
    """The settings: options given on the command line, then the environment, then defaults."""
    given = {
        name: value for name, value in cli_values.items()
        if name in settings.model_fields and value is not None and value != ()
    }
    return settings(**given)
