"""How every `meterwatch` command reports a refused request: one ``error:`` line, a non-zero exit.

Deliberate errors (:mod:`meterwatch.core.errors`) carry what was wrong and where; a configuration
error with a single problem is printed on one line as ``<field path>: <message>``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

import click
from rich.console import Console

from meterwatch.core.errors import ConfigError

err_console = Console(stderr=True, soft_wrap=True)  # one line, however long


def error_text(exc: BaseException) -> str:
    """The text after ``error:`` for ``exc``."""
    if isinstance(exc, ConfigError) and len(exc.problems) == 1:
        ((path, msg),) = exc.problems
        if path.startswith("("):  # "(file)", "(yaml)": about the file as a whole
            where = exc.source
        else:
            where = path if path.startswith(exc.source) else f"{exc.source}: {path}"
        return f"{where}: {msg}"
    return str(exc)


def fail(exc: BaseException, code: int = 2) -> NoReturn:
    """Print ``error: <what and where>`` on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {error_text(exc)}", highlight=False)
    sys.exit(code)


class LazyGroup(click.Group):
    """A command group whose ``lazy`` commands (name -> ``"module:attribute"``) are imported
    when they are run or listed, not when the group is (click's documented recipe for lazily
    loaded subcommands): a command pays only for its own imports."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attr = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)
