"""Tiny synthetic data modules and trainer settings for fast tests."""

from typing import Any

import lightning as L
import torch
from torch import nn

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


class HostSyncCounter(torch.overrides.TorchFunctionMode):
    """Counts the calls that make the host wait for a CUDA device, by name, while it is active.

    On a CPU nothing waits, so the operations are counted by what they would do on a GPU: read a
    value back (``item``, ``bool``, ``tolist``, ``cpu``), size an output by its data (``nonzero``,
    boolean-mask indexing, ``unique``, ``masked_select``), or copy a Python number from pageable
    host memory (``torch.tensor`` / ``torch.as_tensor`` of non-tensor data).
    """

    SYNCING = {
        torch.Tensor.item: "item", torch.Tensor.__bool__: "bool", torch.Tensor.tolist: "tolist",
        torch.Tensor.__int__: "int", torch.Tensor.__float__: "float", torch.Tensor.__index__: "index",
        torch.Tensor.cpu: "cpu", torch.Tensor.numpy: "numpy", torch.Tensor.nonzero: "nonzero",
        torch.nonzero: "nonzero", torch.argwhere: "nonzero", torch.Tensor.unique: "unique", torch.unique: "unique",
        torch.masked_select: "masked_select", torch.Tensor.masked_select: "masked_select",
    }

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = self.SYNCING.get(func)
        if name is not None:
            self._count(name)
        elif func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
            index = args[1] if len(args) > 1 else None
            indices = index if isinstance(index, tuple) else (index,)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
                self._count("boolean mask")
        elif func in (torch.tensor, torch.as_tensor) and args and not isinstance(args[0], torch.Tensor):
            self._count("tensor from host data")
        return func(*args, **kwargs)


class SetupPassed(Exception):
    """Raised after Lightning's setup hooks ran (with a faked device) to stop a run there."""


def fake_setup_device(monkeypatch: Any, device: str = "meta", stop: bool = True) -> None:
    """Run Lightning's setup hooks as they run on a GPU: ``LightningModule.device`` already reports
    the accelerator (here ``device``, by default ``meta``) while the weights are still on the CPU.

    ``lightning.pytorch.trainer.call._call_setup_hook`` sets every module's ``_device`` to
    ``trainer.strategy.root_device`` before calling the data module's, the callbacks' and the
    module's ``setup``; that root device is faked for exactly that call. With ``stop`` the run then
    ends with :class:`SetupPassed`; otherwise it goes on, on the CPU.
    """
    from unittest import mock

    from lightning.pytorch.trainer import call

    original = call._call_setup_hook

    def faked(trainer: L.Trainer) -> None:
        with mock.patch.object(type(trainer.strategy), "root_device", new_callable=mock.PropertyMock,
                               return_value=torch.device(device)):
            original(trainer)
        if stop:
            raise SetupPassed

    monkeypatch.setattr(call, "_call_setup_hook", faked)


class CountingNet(nn.Module):
    """A network that counts the samples it is run on (the work an attack does)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.samples = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.samples += len(x)
        return self.net(x)
