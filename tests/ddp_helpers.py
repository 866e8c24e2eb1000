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


class InterruptOnRankZero(L.Callback):
    """Ctrl-C as it reaches a DDP run: in one process, in the middle of an epoch, while the others train on.

    Rank 0 raises ``KeyboardInterrupt`` before training step ``at_step`` (13: the second batch of the third
    epoch at 6 batches an epoch); rank 1 is then in its own
    step (or waiting in the gradient all-reduce), not at the same point of the program.
    """

    def __init__(self, at_step: int = 13) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object,
                             batch_idx: int) -> None:
        if trainer.global_rank == 0 and trainer.global_step == self.at_step:
            raise KeyboardInterrupt
