"""Callbacks that only the distributed tests load into `lipreg` subprocesses (by class path)."""

import lightning as L
import torch


class SkewWeightsOnRankOne(L.Callback):
    """Breaks the agreement of the processes on purpose, to show that ProcessAgreement notices.

    (λ and ε are buffers, which DDP re-broadcasts from rank 0 at every forward pass; weights are not.)
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank == 1:
            with torch.no_grad():
                next(pl_module.parameters()).add_(0.01)
