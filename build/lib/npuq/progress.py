"""Progress on stderr, one mechanism for the whole package (stdout carries tables and ``--json``).

``counter`` is a context yielding ``advance(n=1)``; ``track`` wraps an iterable; ``progress_bar`` is
the rich bar itself for loops that show extra fields (the training loss). All are no-ops when
``enabled`` is false. Rich renders a live bar on a terminal and plain lines when stderr is a pipe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def progress_bar(label: str, *fields: str, transient: bool = False) -> Iterator[Any]:
    """A rich Progress on stderr: label, bar, n/total, ``fields`` (rich TextColumn formats), time left."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), *(TextColumn(f) for f in fields),
               TimeRemainingColumn())
    with Progress(*columns, console=stderr_console(), transient=transient) as bar:
        yield bar


@contextmanager
def counter(enabled: bool, total: int, label: str) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1)``: a bar of ``total`` steps when enabled, else a no-op."""
    if not enabled:
        yield lambda n=1: None
        return
    with progress_bar(label) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)


def track(items: Iterable[T], label: str, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a bar when enabled."""
    if not enabled:
        yield from items
        return
    items = list(items) if total is None else items
    with counter(True, total if total is not None else len(items), label) as advance:
        for item in items:
            yield item
            advance()
