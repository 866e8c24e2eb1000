"""Always a checkpoint to resume from: the newest finite weights."""

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from lipreg.callbacks.divergence_guard import parameters_finite
from lipreg.stopping import is_interrupt


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
        self.every = every_n_epochs
        self.saved_step: int | None = None
        # Lightning reads ``state_key`` at every hook call; ModelCheckpoint rebuilds it from its settings
        # each time, and these settings never change
        self._state_key = super().state_key

    @property
    def state_key(self) -> str:
        return self._state_key

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Nothing: this checkpoint is never saved within an epoch."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: this checkpoint is saved at the end of training epochs, validated or not."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fast_dev_run and (trainer.current_epoch + 1) % self.every == 0:
            self.save_latest(trainer, pl_module)

    def save_latest(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Save the current weights (unless this step is saved already or a weight is not finite) and
        remove the previous latest checkpoint of this run; returns whether it saved. Only Lightning's
        public checkpoint API is used (``format_checkpoint_name``, ``Trainer.save_checkpoint``,
        ``Strategy.remove_checkpoint``)."""
        if self.saved_step == trainer.global_step or not parameters_finite(pl_module):
            return False
        # after the last epoch Lightning's epoch counter is already one past it: name the epoch trained
        epoch = max(trainer.fit_loop.epoch_progress.current.started - 1, 0)
        path = self.format_checkpoint_name({"epoch": torch.tensor(epoch), "step": torch.tensor(trainer.global_step)})
        previous, self.best_model_path = self.best_model_path, path  # part of the saved state
        trainer.save_checkpoint(path, self.save_weights_only)
        self.saved_step = trainer.global_step
        if previous and self._own_earlier_file(trainer, previous, path):
            trainer.strategy.remove_checkpoint(previous)
        return True

    def _own_earlier_file(self, trainer: L.Trainer, previous: str, current: str) -> bool:
        """Whether ``previous`` is this run's earlier latest file: in this checkpoint's folder, not the
        file just written, and not the checkpoint the run resumed from (kept, as Lightning keeps it)."""
        previous_path = Path(previous).absolute()
        if previous == current or self.dirpath is None:
            return False
        if trainer.ckpt_path is not None and previous_path == Path(trainer.ckpt_path).absolute():
            return False
        return Path(self.dirpath).absolute() in previous_path.parents

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save_latest(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not is_interrupt(exception):
            return
        if trainer.world_size > 1:
            # Ctrl-C reaches every process at a different point of its step: a save now (a barrier,
            # CLIP's all-gathers) would meet the others in mismatched collectives and hang. The last
            # checkpoint written at an epoch's end, when all processes were in step, is the one to resume.
            latest = self.best_model_path or "none yet (interrupted in the first epoch)"
            rank_zero_only(print)(f"interrupted: under DDP no checkpoint is saved at the interrupt; the latest is "
                                  f"{latest}", flush=True)
            return
        self.save_latest(trainer, pl_module)
        if self.saved_step == trainer.global_step:  # saved now, or already at this step's epoch end
            rank_zero_only(print)(f"interrupted: saved {self.best_model_path}", flush=True)
