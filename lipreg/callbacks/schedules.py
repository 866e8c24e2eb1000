"""Callbacks that drive λ (or μ) and ε between steps; the rules are plain functions of the core."""

from typing import Any, Literal

import lightning as L
import torch

from lipreg.errors import LipregError
from lipreg.functional import decay_epsilon, discrepancy_step, discrepancy_step_tensor, warmup_finished
from lipreg.methods.base import LipRegModule


def _lipreg_module(pl_module: L.LightningModule, callback: L.Callback) -> LipRegModule:
    if not isinstance(pl_module, LipRegModule):
        raise LipregError(f"{type(callback).__name__} works with lipreg methods, not {type(pl_module).__name__}")
    return pl_module


def epoch_accuracy(pl_module: LipRegModule, stage: Literal["train", "val"]) -> float | None:
    """The running accuracy of the current epoch, reduced over all processes (``None`` before any batch)."""
    metric = pl_module.metrics[f"{stage}_score"]
    if not pl_module.task_spec.classification or metric.update_count == 0:
        return None
    return float(metric.compute())


class Warmup(L.Callback):
    """No regularisation until the training accuracy reaches ``target`` α, or for ``epochs`` epochs.

    (FLIP slides, "Warm-up Phase".) Given both, the first that happens ends the warm-up, checked at
    the end of each epoch; regularisation starts with the next epoch. While it lasts the
    method's penalty is not computed at all, so warm-up epochs cost what standard training costs.
    Logs ``train/warmup`` (1 for an epoch trained without regularisation).
    """

    def __init__(self, target: float | None = None, epochs: int | None = None) -> None:
        if target is None and epochs is None:
            raise LipregError("Warmup needs a target accuracy, a number of epochs, or both")
        if target is not None and not 0 < target <= 1:
            raise LipregError(f"Warmup target is an accuracy in (0, 1], got {target}")
        if epochs is not None and epochs < 0:
            raise LipregError(f"Warmup epochs must be >= 0, got {epochs}")
        self.target = target
        self.epochs = epochs
        self.epochs_done = 0
        self.finished = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        module = _lipreg_module(pl_module, self)
        if self.target is not None and not module.task_spec.classification:
            raise LipregError("Warmup by target accuracy needs a classification task; use Warmup(epochs=…)")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the decision of the last epoch's end takes effect for a whole epoch, so the
        # discrepancy rule never reads an epoch that was trained without the penalty
        if not self.finished and self.epochs == 0:
            self.finished = True
        pl_module.regularise = self.finished

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = _lipreg_module(pl_module, self)
        pl_module.log("train/warmup", float(not self.finished), sync_dist=True)
        if self.finished:
            return
        self.epochs_done += 1
        accuracy = epoch_accuracy(module, "train")
        self.finished = warmup_finished(accuracy, self.epochs_done, self.target, self.epochs)

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_done": self.epochs_done, "finished": self.finished}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs_done = state_dict["epochs_done"]
        self.finished = state_dict["finished"]


class LambdaDiscrepancy(L.Callback):
    """The discrepancy principle for λ (CLIP paper, Algorithm 2): raise λ by dλ while the accuracy
    exceeds the target α, lower it (not below ``minimum``) otherwise.

    ``monitor="train"`` reads the epoch's training accuracy (the paper), ``"val"`` the validation
    accuracy; both are torchmetrics values reduced over all processes, so every process applies
    the same update. With ``every_n_steps`` the rule acts every N training steps on the running
    accuracy of the epoch (the pTV algorithm acts every minibatch) instead of once an epoch, on
    the device (no host synchronisation a step). N counts optimiser steps: with N processes an
    epoch has N× fewer of them, and so N× fewer updates.
    ``step_decay`` multiplies dλ after every update; ``maximum`` caps λ. It drives whatever
    coefficient the method has (λ, or μ for ``WeightDecay``) and waits while a warm-up runs.
    """

    def __init__(
        self,
        target: float,
        step: float,
        minimum: float = 0.0,
        maximum: float | None = None,
        step_decay: float = 1.0,
        monitor: Literal["train", "val"] = "train",
        every_n_steps: int | None = None,
    ) -> None:
        if not 0 < target <= 1:
            raise LipregError(f"LambdaDiscrepancy target is an accuracy in (0, 1], got {target}")
        if step <= 0 or minimum < 0 or not 0 < step_decay <= 1:
            raise LipregError(f"need step > 0, minimum >= 0, 0 < step_decay <= 1; got {step}, {minimum}, {step_decay}")
        if maximum is not None and maximum < minimum:
            raise LipregError(f"maximum ({maximum}) must be >= minimum ({minimum})")
        if monitor not in ("train", "val"):
            raise LipregError(f"monitor must be 'train' or 'val', got {monitor!r}")
        if every_n_steps is not None and (every_n_steps < 1 or monitor != "train"):
            raise LipregError("every_n_steps must be >= 1 and goes with monitor 'train'")
        self.target = target
        self.step = step
        self.minimum = minimum
        self.maximum = maximum
        self.step_decay = step_decay
        self.monitor = monitor
        self.every_n_steps = every_n_steps

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        module = _lipreg_module(pl_module, self)
        if not module.task_spec.classification:
            raise LipregError("LambdaDiscrepancy compares an accuracy with its target: it needs a classification task")
        if not module.is_regularised:
            raise LipregError(f"{type(module).__name__} has no regularisation coefficient for LambdaDiscrepancy")

    def update(self, module: LipRegModule, accuracy: float) -> None:
        """Apply one discrepancy step to the module's coefficient for the given accuracy."""
        current = float(module.lam)
        new = discrepancy_step(current, accuracy, self.target, self.step, self.minimum, self.maximum)
        module.lam.fill_(new)
        self.step *= self.step_decay

    def _maybe_update(self, pl_module: L.LightningModule, stage: Literal["train", "val"]) -> None:
        module = _lipreg_module(pl_module, self)
        accuracy = epoch_accuracy(module, stage)
        if module.regularise and accuracy is not None:
            self.update(module, accuracy)

    def update_on_device(self, module: LipRegModule) -> None:
        """One discrepancy step on the running training accuracy, without reading it on the host.

        The accuracy is the sum and count of the epoch's ``train_score`` metric (all-reduced under
        DDP: one small collective, no host synchronisation), and λ is updated where it lives.
        """
        metric = module.metrics["train_score"]
        totals = torch.stack([metric.mean_value, metric.weight]).float()
        if module.distributed:
            torch.distributed.all_reduce(totals)
        accuracy = totals[0] / totals[1].clamp_min(1.0)
        updated = discrepancy_step_tensor(module.lam, accuracy, self.target, self.step, self.minimum, self.maximum)
        module.lam.copy_(torch.where(totals[1] > 0, updated, module.lam))
        self.step *= self.step_decay

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.every_n_steps is not None and trainer.global_step % self.every_n_steps == 0:
            module = _lipreg_module(pl_module, self)
            if module.regularise:
                self.update_on_device(module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.monitor == "train" and self.every_n_steps is None:
            self._maybe_update(pl_module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.monitor == "val" and not trainer.sanity_checking:
            self._maybe_update(pl_module, "val")

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.step = state_dict["step"]


class EpsilonDecay(L.Callback):
    """ε ← max(γ·ε, ε_min) after every training epoch, for methods with an ε-ball (TV, pTV).

    ε is the method's buffer ``epsilon``, so checkpoints restore it; this callback holds no state.
    """

    def __init__(self, factor: float = 0.9, minimum: float = 0.0) -> None:
        if not 0 < factor <= 1 or minimum < 0:
            raise LipregError(f"need 0 < factor <= 1 and minimum >= 0; got {factor}, {minimum}")
        self.factor = factor
        self.minimum = minimum

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(getattr(pl_module, "epsilon", None), torch.Tensor):
            raise LipregError(f"EpsilonDecay needs a method with an ε-ball (TV, PTV), not {type(pl_module).__name__}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.epsilon.fill_(decay_epsilon(float(pl_module.epsilon), self.factor, self.minimum))
