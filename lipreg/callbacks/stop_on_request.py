"""Taking a stop asked for by a signal (``lipreg.stopping``) at the next batch boundary."""

from typing import Any

import lightning as L

from lipreg.stopping import stop_if_requested


class StopOnRequest(L.Callback):
    """Raises ``KeyboardInterrupt`` at the first batch boundary after ``lipreg.stopping.request_stop``
    (SIGTERM under ``lipreg``), so the run stops as on Ctrl-C but never from inside a logger's
    queue. ``lipreg`` puts it first in every run's callbacks, so the stop comes before an epoch's
    end-of-epoch work. Where Lightning's own SIGTERM flag stops the loop first (its ``SIGTERMException``),
    ``lipreg.stopping.is_interrupt`` makes that an interrupt too."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        stop_if_requested()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stop_if_requested()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stop_if_requested()  # before the loop ends the run as finished (Lightning's own SIGTERM flag)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stop_if_requested()  # the loop ended on Lightning's own SIGTERM flag: still an interrupt, not a finished run

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        stop_if_requested()

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        stop_if_requested()

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        stop_if_requested()
