"""Stopping a run whose loss or weights stop being finite, before a checkpoint of them is written."""

import math
from typing import Any

import lightning as L
import torch

from lipreg.errors import LipregError, TrainingDiverged


def parameters_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter of ``module`` is finite (one reduction, one host read)."""
    flags = [torch.isfinite(p).all() for p in module.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


class DivergenceGuard(L.Callback):
    """Stops training at a non-finite or exploded loss, or a non-finite parameter, before any checkpoint of it
    is written. The loss has exploded when it exceeds ``explosion_factor`` × max(the run's first
    training loss, 1) (default 10⁴: a cross-entropy that starts at 2.3 is stopped above 23,000).

    In a single CPU process the training objective is read every step (a CPU tensor: reading it
    waits for nothing, and one read is cheaper than any bookkeeping). On an accelerator, under DDP,
    or with ``check_every`` above 1, every step instead records on the device the first step whose
    objective is not finite (no host synchronisation), and the record is read on the host every
    ``check_every`` steps (default 50), where DDP's processes also agree by one all-reduce so that
    they stop together. The parameters are checked for finiteness once before validation and at
    the end of each epoch.
    A divergence ends the run with ``lipreg: error: training diverged …`` naming the epoch, the
    step and the quantity. Checkpoint callbacks run after this one, so no checkpoint of the
    diverged weights is written and the last good one stays the newest. ``lipreg fit`` adds it.

    Args:
        check_every: steps between host reads (``None``: every step in a single CPU process, 50 otherwise).
        explosion_factor: how many times the first loss (at least 1) counts as exploded (``None``: never).
    """

    def __init__(self, check_every: int | None = None, explosion_factor: float | None = 1e4) -> None:
        if check_every is not None and check_every < 1:
            raise LipregError(f"DivergenceGuard check_every must be >= 1, got {check_every}")
        if explosion_factor is not None and explosion_factor <= 1:
            raise LipregError(f"DivergenceGuard explosion_factor must be > 1, got {explosion_factor}")
        self.check_every = check_every
        self.explosion_factor = explosion_factor
        self._first_bad: torch.Tensor | None = None
        self._first_value: torch.Tensor | None = None
        self._limit: torch.Tensor | None = None  # the exploded-loss threshold, set from the first step's loss
        self._read_every_step = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self._first_value = torch.zeros((), device=device)
        self._limit = torch.full((), float("nan"), device=device)
        single_cpu = device.type == "cpu" and trainer.world_size == 1
        self._read_every_step = single_cpu and self.check_every in (None, 1)
        if self.check_every is None:
            self.check_every = 1 if single_cpu else 50

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or self._first_bad is None:
            return
        if self._read_every_step:
            value = loss.item()
            if self.explosion_factor is not None and math.isnan(float(self._limit)) and math.isfinite(value):
                self._limit.fill_(self.explosion_factor * max(abs(value), 1.0))
            if not math.isfinite(value) or abs(value) > float(self._limit):
                self._first_bad.fill_(trainer.global_step)
                self._first_value.fill_(value)
                self._check(trainer, pl_module, parameters=False)
            return
        loss = loss.detach().float().reshape(())
        if self.explosion_factor is not None:
            first = self.explosion_factor * loss.abs().clamp_min(1.0)
            self._limit = torch.where(torch.isnan(self._limit) & torch.isfinite(loss), first, self._limit)
        new = (~torch.isfinite(loss) | (loss.abs() > self._limit)) & (self._first_bad < 0)
        self._first_bad = torch.where(new, trainer.global_step, self._first_bad)
        self._first_value = torch.where(new, loss, self._first_value)
        if trainer.global_step % self.check_every == 0:
            self._check(trainer, pl_module, parameters=False)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer, pl_module, parameters=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, pl_module, parameters=True)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule, parameters: bool) -> None:
        if self._first_bad is None:
            return
        step = int(self._first_bad)
        if step >= 0:
            value = float(self._first_value)
            quantity = f"the training loss is {value:.4g}"
            if math.isfinite(value):
                quantity += (f", over {self.explosion_factor:g}× its first value (the loss exploded; "
                             f"explosion_factor sets the bound)")
        elif parameters and not parameters_finite(pl_module):
            step, quantity = trainer.global_step, "a network parameter is not finite"
        else:
            quantity = ""
        if trainer.world_size > 1:  # every process stops together, or none waits for the others forever
            if not trainer.strategy.reduce_boolean_decision(bool(quantity), all=False):
                return
            quantity = quantity or "another process's training loss or parameters are not finite"
        elif not quantity:
            return
        raise TrainingDiverged(
            f"training diverged at epoch {trainer.current_epoch}, step {max(step, 0)}: {quantity}; no checkpoint of "
            "it was written. Lower the learning rate (--model.init_args.optimizer.init_args.lr) or the "
            "regularisation coefficient"
        )
