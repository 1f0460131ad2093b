"""The CLI's one error boundary: every failure of a command becomes one line on stderr and an exit code.

- a bad flag value or combination (UsageError, or a library error raised inside `usage()`): exit 2, as
  Typer's own usage errors (an unknown option, a missing argument, a value Typer cannot parse, a flag's
  parser refusing it: FlagError), which `OneLineUsageGroup` prints as one line too, not Click's usage block;
- a library error (AdasparkError: the video, the model, the disk): exit 1;
- Ctrl-C: "interrupted", exit 130; once the work is done and cannot be undone (mark_complete: convert's
  OUT in place), the command's note and exit 0;
- stdout that cannot be written: its reader went away (EPIPE, e.g. `| head -c1`): no message, exit 141,
  what a shell reports for a program killed by SIGPIPE; any other write error (a full disk): one line
  naming stdout, exit 1;
- anything else is an adaspark bug: one line, with the traceback only when ADASPARK_DEBUG=1.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import typer
from rich.markup import escape
from typer.core import TyperGroup

from ..api import AdasparkError
from .interrupt import EXIT_INTERRUPTED, exit_interrupted
from .render import StdoutError, discard_stdout, end_partial_line, err_console

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE

DEBUG_ENV = "ADASPARK_DEBUG"


class UsageError(AdasparkError):
    """A flag value or combination is invalid; the message names the flag and a valid value."""


class FlagError(typer.BadParameter):
    """A flag's parser refused its value (options.choice / options.checked); the message is the whole line."""


def _usage_line(exc: typer.TyperException) -> str:
    if isinstance(exc, FlagError):
        return exc.message
    ctx = getattr(exc, "ctx", None)  # Typer's own message names the flag, not a fix: point at the help
    return exc.format_message().rstrip(".") + (f" (see {ctx.command_path} -h)" if ctx is not None else "")


@contextmanager
def _one_line_usage() -> Iterator[None]:
    try:
        yield
    except typer.TyperException as exc:
        if exc.exit_code != EXIT_USAGE:
            raise
        print_error(_usage_line(exc))
        raise typer.Exit(EXIT_USAGE) from None


class OneLineUsageGroup(TyperGroup):
    """The app's group: a usage error found while Typer parses the command line (an unknown command or
    option, a missing argument, a bad value) is one line on stderr with exit 2, as the commands' own."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        if not args:  # no_args_is_help: the help, as Typer prints it
            return super().make_context(info_name, args, parent, **extra)
        with _one_line_usage():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage():  # the command is resolved and its flags parsed in here
            return super().invoke(ctx)


@contextmanager
def usage() -> Iterator[None]:
    """Library errors raised inside this block come from checking a flag: they become usage errors (exit 2)."""
    try:
        yield
    except UsageError:
        raise
    except AdasparkError as exc:
        raise UsageError(str(exc)) from None


@contextmanager
def loading() -> Iterator[None]:
    """Around importing torch, transformers and the library, and loading the model: a Ctrl-C ends the
    process at once with one line and exit 130 (interrupt.exit_interrupted), since nothing needs cleaning
    up and a KeyboardInterrupt inside their import code can turn into an unrelated error."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, exit_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


@dataclass
class CommandState:
    """What the running command has told the boundary (reset when a command starts)."""

    complete: str | None = None  # set by mark_complete: the command's work is done
    interrupt_reported: bool = False  # interrupted() has printed its line


state = CommandState()


def mark_complete(message: str) -> None:
    """The command's work is done and cannot be undone (convert's OUT is in place): a Ctrl-C from now on
    prints `message` and exits 0, here and in `main`, instead of 130."""
    state.complete = message


def complete_message() -> str | None:
    return state.complete


def interrupt_reported() -> bool:
    return state.interrupt_reported


def interrupted(message: str = "interrupted", code: int = EXIT_INTERRUPTED) -> NoReturn:
    """One line on stderr and exit `code` (130 unless the work was already complete)."""
    err_console.print(escape(message), style="yellow", soft_wrap=True)
    state.interrupt_reported = True
    raise typer.Exit(code)


def _stdout_message(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "cannot write to stdout: no space left on the disk or device it goes to; free some space or redirect it elsewhere"
    if exc.errno == errno.EBADF:
        return "cannot write to stdout: it is closed; redirect it to a file or /dev/null instead of closing it"
    return f"cannot write to stdout: {exc.strerror or exc}; redirect it to a file or /dev/null"


def _broken_pipe() -> NoReturn:
    discard_stdout()  # nothing more reaches the reader; the final flush must not fail again
    raise typer.Exit(EXIT_BROKEN_PIPE)


def handle_errors(command: F) -> F:
    """Wrap a command so that every failure is one line on stderr and an exit code (see the module docstring)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state.complete, state.interrupt_reported = None, False
        if signal.getsignal(signal.SIGINT) is exit_interrupted:  # set by main while the app loaded
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a Ctrl-C is a KeyboardInterrupt again
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except StdoutError as exc:
            if exc.error.errno == errno.EPIPE:
                _broken_pipe()
            discard_stdout()
            print_error(_stdout_message(exc.error))
            raise typer.Exit(EXIT_ERROR) from None
        except BrokenPipeError:  # stderr's reader went away (2>&1 | head): nobody is left to tell
            _broken_pipe()
        except UsageError as exc:
            print_error(str(exc))
            raise typer.Exit(EXIT_USAGE) from None
        except AdasparkError as exc:
            print_error(str(exc))
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            _end_partial_line()
            if state.complete is not None:
                interrupted(state.complete, code=0)
            interrupted()
        except Exception as exc:  # an adaspark bug: one line unless debugging
            if _debug():
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            err_console.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {escape(first)} (set {DEBUG_ENV}=1 for the "
                "traceback and please report it)", markup=True, highlight=False, soft_wrap=True,
            )
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]


def _end_partial_line() -> None:
    try:
        end_partial_line()
    except StdoutError:
        discard_stdout()
