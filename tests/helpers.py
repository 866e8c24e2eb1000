"""Tiny synthetic data modules and trainer settings for fast tests."""

from typing import Any

import lightning as L
import torch

from lipreg.data.base import InMemoryDataModule, Splits


class BlobsDataModule(InMemoryDataModule):
    """Three Gaussian blobs in the unit square (``[N, 2]`` inputs, 3 classes), with a held-out set."""

    task = "classification"
    num_outputs = 3
    input_shape = (2,)
    input_box = (0.0, 1.0)

    def __init__(self, size: int = 240, batch_size: int = 32, seed: int = 0, lipschitz_size: int = 40) -> None:
        super().__init__(batch_size, 120, seed, on_device=False)
        self.size = size
        self.lipschitz_size = lipschitz_size

    def load_splits(self) -> Splits:
        generator = torch.Generator().manual_seed(self.seed)
        centres = torch.tensor([[0.2, 0.2], [0.8, 0.3], [0.5, 0.8]])

        def draw(count: int) -> tuple[torch.Tensor, torch.Tensor]:
            labels = torch.randint(0, 3, (count,), generator=generator)
            points = centres[labels] + 0.08 * torch.randn(count, 2, generator=generator)
            return points.clamp(0, 1), labels

        lipschitz = draw(self.lipschitz_size)[0] if self.lipschitz_size else None
        return Splits(train=draw(self.size), val=draw(120), test=draw(120), lipschitz=lipschitz)


def quiet_trainer(**overrides: Any) -> L.Trainer:
    """A CPU trainer without logger, progress bar or checkpoints, with inference mode off."""
    settings: dict[str, Any] = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, inference_mode=False, num_sanity_val_steps=0,
    )
    settings.update(overrides)
    return L.Trainer(**settings)
