"""How every `meterwatch` command reports a refused request: one ``error:`` line, a non-zero exit.

Deliberate errors (:mod:`meterwatch.core.errors`) carry what was wrong and where; a configuration
error with a single problem is printed on one line as ``<field path>: <message>``.
"""

from __future__ import annotations

import sys
from typing import NoReturn

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
