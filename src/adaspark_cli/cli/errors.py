"""The CLI's one error boundary: library errors become one line on stderr and exit code 1."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape

from ..errors import AdasparkError
from .render import err_console

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _debug() -> bool:
    return os.environ.get("ADASPARK_DEBUG", "") not in ("", "0") or hasattr(sys, "_called_from_test")


def handle_errors(command: F) -> F:
    """Wrap a command: AdasparkError -> 'error: ...' exit 1; Ctrl-C -> exit 130; others re-raise when debugging."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except AdasparkError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            sys.stdout.flush()
            err_console.print("interrupted", style="yellow")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:  # an adaspark bug: one line unless debugging
            if _debug():
                raise
            err_console.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc).splitlines()[0]) if str(exc) else ''} "
                "(set ADASPARK_DEBUG=1 for the traceback and please report it)",
                markup=True,
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]
