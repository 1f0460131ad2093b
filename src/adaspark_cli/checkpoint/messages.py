"""One-line error texts of the checkpoint loader: exceptions and lists shortened for a CheckpointError."""

from __future__ import annotations

MAX_DETAIL = 300  # characters of an exception's text kept in a message


def one_line(text: object, limit: int = MAX_DETAIL) -> str:
    """Collapse whitespace (tracebacks, multi-line hub messages) and cap the length."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def first_items(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def summary(exc: BaseException) -> str:
    detail = one_line(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
