"""Plain empirical risk minimisation: the unregularised baseline."""

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lipreg.methods.base import LipRegModule, Task


class Standard(LipRegModule):
    """``min_θ mean loss(f_θ(x), y)``: eq. (2) of the CLIP paper with λ = 0, no penalty."""

    def __init__(
        self,
        net: nn.Module,
        task: Task = "classification",
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(net, task, 0.0, optimizer, lr_scheduler, seed)
