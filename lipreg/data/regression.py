"""Synthetic 1-D regression problems of the CLIP paper (§4.1) and the FLIP slides."""

from typing import Literal

import torch
from torch import Tensor

from lipreg.data.base import InMemoryDataModule, Splits

Problem = Literal["clip", "polynomial"]

#: Where each problem draws its training inputs (a union of intervals) and its domain.
SAMPLE_INTERVALS: dict[str, list[tuple[float, float]]] = {
    "clip": [(-4.0, -3.0), (-0.3, 0.3), (3.0, 4.0)],
    "polynomial": [(-3.0, -2.0), (2.0, 3.0)],
}
DOMAINS: dict[str, tuple[float, float]] = {"clip": (-4.0, 4.0), "polynomial": (-3.0, 3.0)}


def clip_target(x: Tensor) -> Tensor:
    """The CLIP paper's §4.1 function ``f(x) = ½·max(|x| − 3, 0)``."""
    return 0.5 * (x.abs() - 3.0).clamp_min(0.0)


def polynomial_target(x: Tensor, scale: float) -> Tensor:
    """The FLIP slides' polynomial ``P(x) = s·(0.5 + 0.01·x + x⁶)``."""
    return scale * (0.5 + 0.01 * x + x.pow(6))


def uniform_on_intervals(
    count: int, intervals: list[tuple[float, float]], generator: torch.Generator
) -> Tensor:
    """``count`` points uniform on a union of disjoint intervals (weighted by their lengths)."""
    lengths = torch.tensor([high - low for low, high in intervals])
    lows = torch.tensor([low for low, _ in intervals])
    which = torch.multinomial(lengths / lengths.sum(), count, replacement=True, generator=generator)
    return lows[which] + lengths[which] * torch.rand(count, generator=generator)


class RegressionDataModule(InMemoryDataModule):
    """Noisy samples of a 1-D function; validation and test on a dense grid against the clean function.

    ``problem="clip"``: ``f(x) = ½·max(|x| − 3, 0)``, samples uniform on
    ``[−4,−3] ∪ [−0.3,0.3] ∪ [3,4]`` (CLIP paper §4.1, 100 samples), domain ``[−4, 4]``.
    ``problem="polynomial"``: ``P(x) = s·(0.5 + 0.01x + x⁶)``, samples uniform on
    ``[−3,−2] ∪ [2,3]`` (FLIP slides), domain ``[−3, 3]``.
    Targets get Gaussian noise of standard deviation ``noise_std``. Inputs and targets are
    ``[N, 1]``.
    """

    task = "regression"
    num_outputs = 1
    input_shape = (1,)

    def __init__(
        self,
        problem: Problem = "clip",
        num_samples: int = 100,
        noise_std: float = 0.05,
        polynomial_scale: float = 1e-3,
        grid_size: int = 801,
        batch_size: int = 100,
        seed: int = 0,
        on_device: bool = True,
        global_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size, grid_size, seed, on_device, global_batch_size)
        if problem not in DOMAINS:
            raise ValueError(f"unknown regression problem {problem!r}; choose one of {sorted(DOMAINS)}")
        if num_samples < 1 or grid_size < 2 or noise_std < 0:
            raise ValueError(
                f"need num_samples >= 1, grid_size >= 2, noise_std >= 0; got {num_samples}, {grid_size}, {noise_std}"
            )
        self.problem = problem
        self.num_samples = num_samples
        self.noise_std = noise_std
        self.polynomial_scale = polynomial_scale
        self.grid_size = grid_size
        self.input_box = DOMAINS[problem]

    def ground_truth(self, x: Tensor) -> Tensor:
        """The clean target function of the chosen problem."""
        return clip_target(x) if self.problem == "clip" else polynomial_target(x, self.polynomial_scale)

    def load_splits(self) -> Splits:
        generator = torch.Generator().manual_seed(self.seed)
        x = uniform_on_intervals(self.num_samples, SAMPLE_INTERVALS[self.problem], generator).unsqueeze(1)
        y = self.ground_truth(x) + self.noise_std * torch.randn(x.shape, generator=generator)
        grid = torch.linspace(*self.input_box, self.grid_size).unsqueeze(1)  # [G, 1]
        clean = (grid, self.ground_truth(grid))
        return Splits(train=(x, y), val=clean, test=clean)
