"""A heartbeat from inside long loops (attack steps, queries) to whoever reports progress.

The functional core stays free of printing and clocks: a loop calls :func:`report_step` once per
iteration, which does nothing unless a caller installed a hook with :func:`reporting` (the
evaluation's progress line does, to print within a long attack on a large batch).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_hook: ContextVar[Callable[[], None] | None] = ContextVar("lipreg_progress_hook", default=None)


def report_step() -> None:
    """One iteration of a long loop is done (calls the installed hook, if any)."""
    hook = _hook.get()
    if hook is not None:
        hook()


@contextmanager
def reporting(hook: Callable[[], None]) -> Iterator[None]:
    """Call ``hook`` at every :func:`report_step` inside the ``with`` block."""
    token = _hook.set(hook)
    try:
        yield
    finally:
        _hook.reset(token)
