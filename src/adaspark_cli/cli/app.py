"""The `adaspark` entry point (console script and `python -m adaspark_cli.cli.app`).

This module imports nothing heavy itself: the Typer app (typer, click, rich) loads inside `main`, under
the Ctrl-C guard, and each command imports torch and the library only when it runs. `--help`,
`--version` and usage errors therefore answer without loading torch.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import Any, NoReturn

from .interrupt import EXIT_INTERRUPTED, exit_interrupted

EXIT_ERROR = 1


def _say(message: str) -> None:
    if sys.stderr is not None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


def _exit_code(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    _say(str(code))  # what sys.exit("text") would print
    return EXIT_ERROR


def _ignore_sigint() -> None:
    """The last atexit handler: the interpreter's teardown that follows (freeing torch, about a second) would
    otherwise die on a Ctrl-C with the system's default action, losing the exit code. It cannot hang."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _finish(code: int) -> NoReturn:
    """Flush, then exit with `code`; a Ctrl-C while the atexit handlers run ends the process at once with
    the same code, since the command's work is done (and after them, _ignore_sigint)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(code))
    sys.exit(code)


def main() -> None:
    """Run the `adaspark` command line and exit with its code."""
    if sys.stdout is None:  # started with stdout closed (>&-): answers and JSON would have nowhere to go
        _say("error: stdout is closed; adaspark writes its answers and JSON there: redirect it to a file or "
             "/dev/null instead of closing it")
        sys.exit(EXIT_ERROR)
    atexit.register(_ignore_sigint)  # registered first, so it runs last
    try:
        signal.signal(signal.SIGINT, exit_interrupted)  # until a command starts (cli/errors.handle_errors)
        from .commands import app

        app(prog_name="adaspark")
        code: Any = 0
    except SystemExit as exc:  # Typer always ends this way: Click's usage errors with 2, commands with theirs
        code = exc.code
    except KeyboardInterrupt:  # raised (not signalled) while the app loads
        _say("interrupted")
        _finish(EXIT_INTERRUPTED)
    if code == EXIT_INTERRUPTED:
        code = _late_interrupt()
    _finish(_exit_code(code))


def _late_interrupt() -> int:
    """Typer turns a Ctrl-C that lands while its command returns into a silent 130: say `interrupted`
    unless the command did, or give the command's note and 0 when its work was already done."""
    errors = sys.modules.get("adaspark_cli.cli.errors")
    if errors is not None and errors.complete_message() is not None:
        _say(errors.complete_message())
        return 0
    if errors is None or not errors.interrupt_reported():
        _say("interrupted")
    return EXIT_INTERRUPTED


def __getattr__(name: str) -> Any:
    """`from adaspark_cli.cli.app import app`, as before this module became a light entry point."""
    if name == "app":
        from .commands import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
