"""A stop asked for by a signal, taken at the next safe point of the run.

Raising ``KeyboardInterrupt`` from a signal handler lands wherever the main thread happens to be,
also inside TensorBoard's queue to its writer thread, whose lock it can leave unreleased (the run
then hangs in the logger's ``close``). Instead the handler calls :func:`request_stop`, and the run
calls :func:`stop_if_requested` where an interrupt is harmless: at every batch boundary
(``lipreg.callbacks.StopOnRequest``) and at every step of a long attack (the evaluation's
progress heartbeat). It then raises ``KeyboardInterrupt``, so the run stops as on Ctrl-C.

Lightning notes the same signal in its own handler and may stop first, at a batch's or an epoch's
end, with its ``SIGTERMException`` (a ``SystemExit`` whose exit status is 0). :func:`is_interrupt`
counts both as an interrupt, so either way the run saves, marks and exits as interrupted.
"""

from lightning.pytorch.utilities.exceptions import SIGTERMException

_requested: list[str] = []


def request_stop(reason: str) -> None:
    """Ask the run to stop at its next safe point."""
    if not _requested:
        _requested.append(reason)


def stop_requested() -> bool:
    """Whether a stop has been asked for."""
    return bool(_requested)


def stop_if_requested() -> None:
    """Raise ``KeyboardInterrupt`` if a stop has been asked for (once: the run is then shutting down)."""
    if _requested and _requested[0] != "raised":
        _requested[0] = "raised"
        raise KeyboardInterrupt


def is_interrupt(exception: BaseException) -> bool:
    """Whether ``exception`` stops the run as Ctrl-C does: ``KeyboardInterrupt``, or Lightning's
    ``SIGTERMException`` when its SIGTERM flag ended the loop before a safe point of ours did."""
    return isinstance(exception, KeyboardInterrupt | SIGTERMException)


def clear() -> None:
    """Forget a request (a new run in the same process)."""
    _requested.clear()
