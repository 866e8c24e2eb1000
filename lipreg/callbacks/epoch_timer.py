"""The wall time of every training epoch."""

import time

import lightning as L

from lipreg.devices import synchronize


class EpochTimer(L.Callback):
    """Wall time of every training epoch in ``times`` (seconds), validation excluded.

    Lightning validates inside the training epoch (before ``on_train_epoch_end``), so the clock is
    paused from ``on_validation_start`` to ``on_validation_end``. On a GPU every reading first
    waits for the queued kernels (``torch.cuda.synchronize``), so the time is that of the work,
    not of its launches.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start: float | None = None  # set while the clock runs
        self._paused = False
        self._elapsed = 0.0

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float:
        synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._elapsed, self._start, self._paused = 0.0, self._now(pl_module), False

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self._elapsed += self._now(pl_module) - self._start
            self._start, self._paused = None, True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._paused:
            self._start, self._paused = self._now(pl_module), False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self._elapsed += self._now(pl_module) - self._start
        self._start, self._paused = None, False
        self.times.append(self._elapsed)
