"""Figures to TensorBoard (or any logger whose experiment has ``add_figure``)."""

from collections.abc import Callable
from typing import TYPE_CHECKING

import lightning as L

from lipreg.report.figures import close_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def log_figure(trainer: L.Trainer, tag: str, draw: Callable[[], "Figure"]) -> bool:
    """Draw a figure once, log it as ``tag`` at the trainer's global step to every logger that takes
    figures, and free it; nothing is drawn when none does. Returns whether it was logged."""
    experiments = [e for e in (getattr(logger, "experiment", None) for logger in trainer.loggers)
                   if hasattr(e, "add_figure")]
    if not experiments:
        return False
    figure = draw()
    for experiment in experiments:
        experiment.add_figure(tag, figure, global_step=trainer.global_step)
    close_figure(figure)
    return True
