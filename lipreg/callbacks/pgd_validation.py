"""PGD robustness on the validation split during training: the checkpoint criterion."""

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from lipreg.callbacks.attack_support import require_gradients
from lipreg.errors import LipregError
from lipreg.evaluation import ImageSchedule
from lipreg.functional import pgd
from lipreg.functional.attacks import Norm
from lipreg.functional.losses import margin_loss
from lipreg.methods.base import LipRegModule, epoch_mean

ValidationLoss = Literal["margin", "ce"]


class PGDValidation(L.Callback):
    """PGD accuracy on the validation split, logged as ``val/pgd_acc`` (regression: ``val/pgd_mse``).

    Runs at every validation (choose how often with ``trainer.check_val_every_n_epoch``), on the
    first ``sample_size`` validation samples. A ``ModelCheckpoint`` monitoring ``val/pgd_acc`` (mode
    ``max``) then keeps the most robust checkpoint, as the CLIP paper does. Needs
    ``trainer.inference_mode: false``.

    Args:
        epsilon: attack radius.
        step_size: PGD step size.
        steps: PGD steps.
        norm: ``l2`` or ``linf``.
        sign_steps: sign steps with L2 projection (the CLIP paper's eq. (13)).
        loss: the attack's objective for classification: ``margin`` (max_{j≠y} f_j − f_y, the
            default: cross-entropy overstates the robustness of networks with small logits) or
            ``ce``. Regression always attacks the squared error.
        sample_size: validation samples attacked (all when ``None``).
    """

    def __init__(
        self,
        epsilon: float = 2.0,
        step_size: float = 0.25,
        steps: int = 7,
        norm: Norm = "l2",
        sign_steps: bool = False,
        loss: ValidationLoss = "margin",
        sample_size: int | None = None,
    ) -> None:
        if epsilon < 0 or step_size <= 0 or steps < 1:
            raise LipregError(f"need epsilon >= 0, step_size > 0, steps >= 1; got {epsilon}, {step_size}, {steps}")
        if sample_size is not None and sample_size < 1:
            raise LipregError(f"sample_size must be >= 1, got {sample_size}")
        if loss not in ("margin", "ce"):
            raise LipregError(f"PGDValidation loss must be 'margin' or 'ce', got {loss!r}")
        self.epsilon = epsilon
        self.step_size = step_size
        self.steps = steps
        self.norm = norm
        self.sign_steps = sign_steps
        self.loss = loss
        self.sample_size = sample_size

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        require_gradients(self, "validation")
        self.metric = epoch_mean().to(pl_module.device)
        self.images = ImageSchedule(self.sample_size, trainer.global_rank, trainer.world_size)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = self.images.take(*batch)
        if len(x) == 0:
            return
        module: LipRegModule = pl_module
        task = module.task_spec
        loss = margin_loss if task.classification and self.loss == "margin" else task.per_sample_loss
        adversarial = pgd(module.net, x, y, self.epsilon, self.step_size, self.steps, self.norm,
                          "sign" if self.sign_steps else "steepest", loss, module.input_box)
        with torch.no_grad():
            self.metric.update(task.score(module.net(adversarial), y))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.metric.update_count == 0 and trainer.world_size == 1:
            return  # under DDP a process without samples (sample_size < processes) still joins the reduction
        pl_module.log(f"val/pgd_{pl_module.task_spec.short}", self.metric.compute(), sync_dist=True)
