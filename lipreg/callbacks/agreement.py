"""A guard for distributed training: every process must hold the same λ, ε, warm-up state and weights."""

import lightning as L
import torch

from lipreg.errors import LipregError
from lipreg.methods.base import LipRegModule


def training_state(module: LipRegModule) -> dict[str, float]:
    """The numbers every process must agree on: coefficient, ε, warm-up flag, a checksum of the weights."""
    parameters = torch.cat([p.detach().double().flatten() for p in module.net.parameters()])
    state = {
        module.coefficient_name: float(module.lam),
        "regularise": float(module.regularise),
        "weight sum": float(parameters.sum()),
        "weight sum of squares": float(parameters.square().sum()),
    }
    if isinstance(getattr(module, "epsilon", None), torch.Tensor):
        state["epsilon"] = float(module.epsilon)
    return state


class ProcessAgreement(L.Callback):
    """After every training epoch, check that all processes agree on the training state.

    Gathers λ (or μ), ε, the warm-up flag and two checksums of the network's weights from every
    process and stops the run with a ``LipregError`` naming the quantity and the per-process values
    if they differ by more than ``tolerance``. Costs one small all-gather an epoch; does nothing in a
    single process.
    """

    def __init__(self, tolerance: float = 0.0) -> None:
        if tolerance < 0:
            raise LipregError(f"tolerance must be >= 0, got {tolerance}")
        self.tolerance = tolerance

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size == 1 or not isinstance(pl_module, LipRegModule):
            return
        state = training_state(pl_module)
        values = torch.tensor(list(state.values()), dtype=torch.float64, device=pl_module.device)
        gathered = pl_module.all_gather(values)  # [world, quantities]
        spread = gathered.max(dim=0).values - gathered.min(dim=0).values
        scale = gathered.abs().max(dim=0).values.clamp_min(1.0)
        for index, name in enumerate(state):
            if spread[index] > self.tolerance * scale[index]:
                per_process = ", ".join(f"{v:.10g}" for v in gathered[:, index].tolist())
                raise LipregError(
                    f"processes disagree on {name} after epoch {trainer.current_epoch}: {per_process}"
                )
