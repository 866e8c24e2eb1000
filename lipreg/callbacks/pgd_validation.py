"""PGD robustness on the validation split during training: the checkpoint criterion."""

from typing import Literal

import lightning as L
import torch
from torch import Tensor

from lipreg.callbacks.attack_support import require_gradients
from lipreg.callbacks.sampled_validation import SampledValidation
from lipreg.errors import LipregError
from lipreg.functional import pgd
from lipreg.functional.attacks import Norm
from lipreg.functional.losses import margin_loss
from lipreg.methods.base import LipRegModule, epoch_mean

ValidationLoss = Literal["margin", "ce"]


class PGDValidation(SampledValidation):
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
        if loss not in ("margin", "ce"):
            raise LipregError(f"PGDValidation loss must be 'margin' or 'ce', got {loss!r}")
        self.epsilon = epsilon
        self.step_size = step_size
        self.steps = steps
        self.norm = norm
        self.sign_steps = sign_steps
        self.loss = loss
        super().__init__(sample_size)

    def start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        require_gradients(self, "validation")
        self.metric = epoch_mean().to(pl_module.device)

    def measure(self, pl_module: L.LightningModule, x: Tensor, y: Tensor) -> None:
        module: LipRegModule = pl_module
        task = module.task_spec
        loss = margin_loss if task.classification and self.loss == "margin" else task.per_sample_loss
        adversarial = pgd(module.net, x, y, self.epsilon, self.step_size, self.steps, self.norm,
                          "sign" if self.sign_steps else "steepest", loss, module.input_box)
        with torch.no_grad():
            self.metric.update(task.score(module.net(adversarial), y))

    def computed(self, pl_module: L.LightningModule) -> dict[str, Tensor]:
        return {f"val/pgd_{pl_module.task_spec.short}": self.metric.compute()}
