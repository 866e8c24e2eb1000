"""A TensorBoard figure of a 1-D regression fit (the look of the CLIP paper's Figure 2)."""

from typing import TYPE_CHECKING

import lightning as L
import torch
from torch import nn

from lipreg.callbacks.figure_logging import log_figure
from lipreg.data.regression import RegressionDataModule
from lipreg.report.figures import pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def regression_figure(net: nn.Module, datamodule: RegressionDataModule, title: str = "") -> "Figure":
    """Ground truth (red), noisy training samples (blue) and the network (green) on the domain."""
    splits = datamodule._require_splits()
    grid = splits.test[0]
    device = next(net.parameters()).device
    with torch.no_grad():
        fitted = net(grid.to(device)).cpu()
    figure, axes = pyplot().subplots(figsize=(5, 3.5))
    axes.plot(grid.cpu(), datamodule.ground_truth(grid).cpu(), color="tab:red", label="ground truth")
    axes.scatter(splits.train[0].cpu(), splits.train[1].cpu(), s=8, color="tab:blue", label="samples")
    axes.plot(grid.cpu(), fitted, color="tab:green", label="network")
    axes.set_xlabel("x")
    axes.set_title(title)
    axes.legend(loc="upper center", fontsize="small")
    figure.tight_layout()
    return figure


class RegressionPlot(L.Callback):
    """Every ``every_n_epochs`` validation epochs, log the fit as ``val/fit`` to TensorBoard."""

    def __init__(self, every_n_epochs: int = 50) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs

    def _due(self, trainer: L.Trainer) -> bool:
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0 or last

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if trainer.sanity_checking or not isinstance(datamodule, RegressionDataModule) or not self._due(trainer):
            return
        if not trainer.is_global_zero:
            return
        log_figure(trainer, "val/fit",
                   lambda: regression_figure(pl_module.net, datamodule, f"epoch {trainer.current_epoch + 1}"))
