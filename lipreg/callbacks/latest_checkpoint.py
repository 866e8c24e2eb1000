"""Always a checkpoint to resume from: the newest finite weights."""

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from lipreg.callbacks.divergence_guard import parameters_finite


class LatestCheckpoint(ModelCheckpoint):
    """The newest weights as ``latest-{epoch}-{step}.ckpt``, to resume from: saved every
    ``every_n_epochs`` training epochs (whether or not validation ran), at the end of training
    and when a single-process run is interrupted (Ctrl-C), never with non-finite weights. Under
    DDP an interrupt saves nothing (the processes are not in step); the last epoch's file stays. ``lipreg fit`` adds
    one (every epoch, or every validation interval for configs that validate rarely) when the
    config has none.

    Args:
        every_n_epochs: epochs between checkpoints (the last epoch is always saved).
    """

    def __init__(self, every_n_epochs: int = 1, dirpath: str | None = None,
                 filename: str = "latest-{epoch}-{step}") -> None:
        super().__init__(dirpath=dirpath, filename=filename, every_n_epochs=every_n_epochs,
                         save_on_train_epoch_end=True)
        # Lightning reads ``state_key`` at every hook call; ModelCheckpoint rebuilds it from its settings
        # each time, and these settings never change
        self._state_key = super().state_key

    @property
    def state_key(self) -> str:
        return self._state_key

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Nothing: this checkpoint is never saved within an epoch (ModelCheckpoint's step bookkeeping is skipped)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if parameters_finite(pl_module):
            super().on_train_epoch_end(trainer, pl_module)

    def _save_now(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        if self._last_global_step_saved == trainer.global_step or not parameters_finite(pl_module):
            return False
        candidates = self._monitor_candidates(trainer)
        # after the last epoch Lightning's epoch counter is already one past it: name the epoch trained
        started = trainer.fit_loop.epoch_progress.current.started
        candidates["epoch"] = torch.tensor(max(started - 1, 0))
        self._save_none_monitor_checkpoint(trainer, candidates)
        return True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_now(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt):
            return
        if trainer.world_size > 1:
            # Ctrl-C reaches every process at a different point of its step: a save now (a barrier,
            # CLIP's all-gathers) would meet the others in mismatched collectives and hang. The last
            # checkpoint written at an epoch's end, when all processes were in step, is the one to resume.
            latest = self.best_model_path or "none yet (interrupted in the first epoch)"
            rank_zero_only(print)(f"interrupted: under DDP no checkpoint is saved at the interrupt; the latest is "
                                  f"{latest}", flush=True)
            return
        if self._save_now(trainer, pl_module):
            rank_zero_only(print)(f"interrupted: saved {self.best_model_path}", flush=True)
