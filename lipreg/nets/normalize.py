"""Input standardisation as a layer, so attacks and Lipschitz pairs live in pixel space."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (or one value for all); Lipschitz constant ``1 / min(std)``."""

    def __init__(self, mean: float | Sequence[float] = 0.0, std: float | Sequence[float] = 1.0) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32)
        std_t = torch.as_tensor(std, dtype=torch.float32)
        if (std_t <= 0).any():
            raise ValueError(f"std must be positive, got {std}")
        # [C] -> [C, 1, 1] so a per-channel statistic broadcasts over images
        shape = (-1, 1, 1) if mean_t.dim() == 1 else ()
        self.register_buffer("mean", mean_t.reshape(shape) if shape else mean_t)
        self.register_buffer("std", std_t.reshape(shape) if shape else std_t)
        self.is_identity = bool((mean_t == 0).all() and (std_t == 1).all())

    def forward(self, x: Tensor) -> Tensor:
        return x if self.is_identity else (x - self.mean) / self.std

    def elementwise_affine(self) -> tuple[Tensor, Tensor]:
        """``(a, c)`` with ``(x − mean) / std = x ⊙ a + c``: ``a = 1 / std``, ``c = −mean / std``
        (used by :func:`lipreg.functional.stem.affine_stem`)."""
        return 1.0 / self.std, -self.mean / self.std

    def lipschitz_constant(self) -> float:
        """``1 / min(std)``: used by :func:`lipreg.functional.lipschitz_upper_bound`."""
        return 1.0 / self.std.min().item()

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def spectrally_normalised(layers: nn.Sequential) -> nn.Sequential:
    """``layers`` with every ``Linear`` and ``Conv2d`` wrapped in PyTorch's ``spectral_norm``
    parametrisation (``weight / σ_max(weight as a matrix)``, σ by power iteration)."""
    for index, layer in enumerate(layers):
        if isinstance(layer, nn.Linear | nn.Conv2d):
            layers[index] = parametrizations.spectral_norm(layer)
    return layers
