"""The SIGINT handler for the stretches where nothing needs cleaning up: the app and the libraries loading.

A module of its own, so that `python -m adaspark_cli.cli.app` (app.py run as __main__) and cli/errors.py
share one function object.
"""

from __future__ import annotations

import os
import sys
from typing import Any

EXIT_INTERRUPTED = 130


def exit_interrupted(signum: int, frame: Any) -> None:
    """One line and exit 130 at once. A KeyboardInterrupt raised inside import code can surface as an
    unrelated error (a RecursionError) or be swallowed, and nothing is open or written yet."""
    if sys.stderr is not None:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)
