"""The epoch timer the benchmark scripts share (imported as a sibling module)."""

import time

import lightning as L


class EpochTimer(L.Callback):
    """Records the wall time of every training epoch (validation excluded)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.times.append(time.perf_counter() - self.start)
