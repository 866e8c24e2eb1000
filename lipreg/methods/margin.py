"""Lipschitz-margin training for a target certified radius (Tsuzuku et al., 2018; Leino et al., 2021)."""

from typing import Any, Literal

import torch
from torch import Tensor, nn

from lipreg.errors import LipregError
from lipreg.functional import lipschitz_upper_bound
from lipreg.functional.losses import hkr_loss, lipschitz_margin_cross_entropy
from lipreg.methods.base import LipRegModule

MarginLoss = Literal["ce", "hkr"]


class LipschitzMargin(LipRegModule):
    """``min_θ mean CE(τ · (f(x) + ε · B[y, :]), y)``: every rival logit raised by the most a perturbation
    of norm ε can move it towards the label's (Lipschitz-margin training, Tsuzuku et al., 2018, eq. (9);
    GloRo, Leino et al., 2021, with the class-pair bound), or with ``loss: hkr`` the
    hinge–Kantorovich–Rubinstein loss (Serrurier et al., 2021) with the class pairs' margins ``ε · B``.

    ``B[y, j] = ‖w_y − w_j‖₂ · L(body)`` bounds the Lipschitz constant of ``f_y − f_j`` (the last
    layer's rows over the layer-product bound of the layers below, as ``lipreg test`` certifies;
    ``B[y, y] = 0``). It is differentiable in the last layer, and the body's bound is recomputed
    (exactly, and held fixed) at every epoch start — 1 by construction for ``LipschitzMLP``. A
    sample whose raised logits are still won by its label is certified at ε: the loss pushes the
    margins to the target radius. ε rises linearly over the first ``warmup_epochs`` (GloRo's
    annealing), then stays. Accuracy metrics are on the clean logits. There is no λ.

    Args:
        epsilon: the target L2 radius ε.
        warmup_epochs: epochs over which ε rises from ε/warmup_epochs to ε (0: ε from the start).
        loss: ``ce`` (the Lipschitz-margin cross-entropy) or ``hkr``.
        temperature: ``τ`` of the cross-entropy (a 1-Lipschitz network's logits cannot grow to sharpen it).
        hkr_alpha: the weight of the hinge in the HKR loss.
    """

    def __init__(self, net: nn.Module, epsilon: float = 1.58, warmup_epochs: int = 0, loss: MarginLoss = "ce",
                 temperature: float = 1.0, hkr_alpha: float = 10.0, **kwargs: Any) -> None:
        """``kwargs``: the options every method has but λ (``task``, ``optimizer``, …; see LipRegModule)."""
        super().__init__(net, lam=0.0, **kwargs)
        self.hparams.pop("lam", None)
        if epsilon < 0 or warmup_epochs < 0:
            raise LipregError(f"need epsilon >= 0 and warmup_epochs >= 0, got {epsilon}, {warmup_epochs}")
        if loss not in ("ce", "hkr"):
            raise LipregError(f"LipschitzMargin loss must be 'ce' or 'hkr', got {loss!r}")
        if temperature <= 0 or hkr_alpha < 0:
            raise LipregError(f"need temperature > 0 and hkr_alpha >= 0, got {temperature}, {hkr_alpha}")
        if not self.task_spec.classification:
            raise LipregError("LipschitzMargin is for classification (it raises rival logits)")
        chain = list(getattr(net, "layers", []))
        if not chain or not isinstance(chain[-1], nn.Linear):
            raise LipregError(f"LipschitzMargin needs a network with a `layers` chain ending in nn.Linear; "
                              f"{type(net).__name__} has none")
        self.epsilon = epsilon
        self.warmup_epochs = warmup_epochs
        self.margin_loss = loss
        self.temperature = temperature
        self.hkr_alpha = hkr_alpha
        self.body_bound = 1.0

    def current_epsilon(self) -> float:
        """ε of the current epoch (rising over ``warmup_epochs``)."""
        if self.warmup_epochs == 0 or self._trainer is None:
            return self.epsilon
        return self.epsilon * min(1.0, (self.current_epoch + 1) / self.warmup_epochs)

    def on_train_epoch_start(self) -> None:
        shape = getattr(self.trainer.datamodule, "input_shape", None)
        if shape is None:
            raise LipregError("LipschitzMargin needs a data module with an input_shape")
        with torch.no_grad():
            self.body_bound = lipschitz_upper_bound(self.net.layers[:-1], tuple(shape))

    def pair_bounds(self) -> Tensor:
        """``B`` as a ``[C, C]`` tensor, differentiable in the last layer's weight."""
        rows = self.net.layers[-1].weight  # [C, d]
        squared = (rows[:, None, :] - rows[None, :, :]).pow(2).sum(dim=2)  # [C, C], 0 on the diagonal
        eye = torch.eye(len(rows), device=rows.device, dtype=rows.dtype)
        return (squared + eye).sqrt() * (1 - eye) * self.body_bound  # +eye: no sqrt'(0) on the diagonal

    def data_term(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        output = self.net(x)
        offsets = self.current_epsilon() * self.pair_bounds()
        if self.margin_loss == "hkr":
            return output, hkr_loss(output, y, offsets, self.hkr_alpha)
        return output, lipschitz_margin_cross_entropy(output, y, offsets, self.temperature)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.log("train/epsilon", self.current_epsilon())
