"""Durations as a person reads them."""


def duration(seconds: float) -> str:
    """``45 s``, ``4.1 min``, ``3.2 h`` or ``5.2 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
