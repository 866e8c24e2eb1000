"""What the validation callbacks share: a measure of the first validation images, logged once an epoch."""

from typing import Any

import lightning as L
from torch import Tensor

from lipreg.errors import LipregError
from lipreg.evaluation import ImageSchedule


class SampledValidation(L.Callback):
    """A measure of the first ``sample_size`` validation images (all when ``None``), logged at the end of
    every validation.

    Subclasses prepare their metrics in :meth:`start`, measure each batch's share of the sample in
    :meth:`measure` and name what to log in :meth:`computed`. lipreg's data modules shard validation
    data, so each process takes its part of the sample (:class:`lipreg.evaluation.ImageSchedule`); a
    process left without images under DDP still joins the logging's reduction.
    """

    def __init__(self, sample_size: int | None = None) -> None:
        if sample_size is not None and sample_size < 1:
            raise LipregError(f"sample_size must be >= 1, got {sample_size}")
        self.sample_size = sample_size

    def start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Check what the measure needs and reset its metrics (at the start of each validation)."""

    def measure(self, pl_module: L.LightningModule, x: Tensor, y: Tensor) -> None:
        """Update the metrics with the batch's images of the sample (never empty)."""
        raise NotImplementedError

    def computed(self, pl_module: L.LightningModule) -> dict[str, Tensor]:
        """The logged values by name."""
        raise NotImplementedError

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start(trainer, pl_module)
        self.images = ImageSchedule(self.sample_size, trainer.global_rank, trainer.world_size)
        self.measured = False

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = self.images.take(*batch)
        if len(x):
            self.measure(pl_module, x, y)
            self.measured = True

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.measured and trainer.world_size == 1:
            return  # under DDP a process without samples (sample_size < processes) still joins the reduction
        pl_module.log_dict(self.computed(pl_module), sync_dist=True)
