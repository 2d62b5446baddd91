"""Progress bars for long management commands, drawn on a terminal only.

A pipe or a log file gets no bar (and no carriage-return noise): only what the command
prints at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

ProgressCallback = Callable[[int], None]


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` (a command's ``self.stdout`` or a file) is a terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextmanager
def terminal_progress(
    stdout: Any, *, total: Callable[[], int], desc: str, unit: str
) -> Iterator[ProgressCallback | None]:
    """Yield ``on_progress(done)`` drawing a bar on ``stdout``, or ``None`` off a terminal.

    ``total`` is called only when a bar is drawn: counting may cost a query.
    """
    if not is_terminal(stdout):
        yield None
        return
    bar = tqdm(
        total=total(),
        desc=desc,
        unit=f" {unit}",
        # The raw stream: Django's OutputWrapper would end each redraw with a newline.
        file=getattr(stdout, "_out", stdout),
        mininterval=0.2,
        dynamic_ncols=True,
    )
    try:
        yield lambda done: bar.update(done - bar.n)
    finally:
        bar.close()
