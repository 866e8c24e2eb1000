"""MNIST and Fashion-MNIST, read once with torchvision and kept in memory as ``[N, 1, 28, 28]`` floats."""

import os
from pathlib import Path

import torch
from torch import Tensor
from torchvision import datasets

from lipreg.data.base import InMemoryDataModule, Splits
from lipreg.errors import LipregError

#: Where the data lives when neither ``data_dir`` nor the environment says otherwise.
DEFAULT_DATA_DIR = "data"
DATA_DIR_VARIABLE = "LIPREG_DATA_DIR"


def idx_problem(path: Path) -> str | None:
    """Why an IDX file (MNIST's format) cannot be read, or ``None`` if its size matches its header.

    The header is two zero bytes, a type code (``0x08``: unsigned bytes), the number of dimensions
    and each dimension as a big-endian 32-bit integer; the data follows, one byte per entry.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or head[2] != 0x08:
            return f"{path} is damaged: not an IDX file of bytes ({size} bytes)"
        dims_raw = handle.read(4 * head[3])
    if len(dims_raw) < 4 * head[3]:
        return f"{path} is damaged: {size} bytes, shorter than its own header"
    dims = [int.from_bytes(dims_raw[i : i + 4], "big") for i in range(0, len(dims_raw), 4)]
    expected = 4 + 4 * len(dims) + int(torch.tensor(dims).prod())
    if size != expected:
        return f"{path} is damaged: {size} bytes, but its header ({' × '.join(map(str, dims))}) needs {expected}"
    return None


def resolve_data_dir(data_dir: str | None) -> Path:
    """``data_dir`` if given, else ``$LIPREG_DATA_DIR``, else ``data/``."""
    return Path(data_dir or os.environ.get(DATA_DIR_VARIABLE) or DEFAULT_DATA_DIR)


class MNISTDataModule(InMemoryDataModule):
    """MNIST: 60,000 training and 10,000 test images, pixels in [0, 1].

    The training images are split, seeded, into ``val_size`` validation images,
    ``lipschitz_size`` held-out images for the Lipschitz pair set (the CLIP paper uses 6,000)
    and the rest for training. Files are read from ``<data_dir>/<Name>/raw/`` in torchvision's
    layout; ``download=True`` lets torchvision fetch them.
    """

    dataset_class: type[datasets.MNIST] = datasets.MNIST
    task = "classification"
    num_outputs = 10
    input_shape = (1, 28, 28)
    input_box = (0.0, 1.0)

    def __init__(
        self,
        data_dir: str | None = None,
        val_size: int = 6000,
        lipschitz_size: int = 0,
        batch_size: int = 128,
        eval_batch_size: int | None = 1000,
        seed: int = 0,
        download: bool = False,
        on_device: bool = True,
        global_batch_size: int | None = None,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed, on_device, global_batch_size)
        if val_size < 0 or lipschitz_size < 0 or val_size + lipschitz_size >= 60000:
            raise ValueError(
                f"val_size ({val_size}) and lipschitz_size ({lipschitz_size}) must be >= 0 and leave "
                "training images out of the 60,000"
            )
        self.data_dir = resolve_data_dir(data_dir)
        self.val_size = val_size
        self.lipschitz_size = lipschitz_size
        self.download = download

    def _read(self, train: bool) -> tuple[Tensor, Tensor]:
        raw = self.data_dir / self.dataset_class.__name__ / "raw"
        for url, _ in self.dataset_class.resources:
            path = raw / Path(url).stem
            problem = idx_problem(path) if path.is_file() else None
            if problem:
                raise LipregError(f"{problem}; copy the file again (or delete it and use --data.download true)")
        try:
            dataset = self.dataset_class(str(self.data_dir), train=train, download=self.download)
        except RuntimeError as error:
            name = self.dataset_class.__name__
            files = ", ".join(Path(url).stem for url, _ in self.dataset_class.resources)
            raise LipregError(
                f"{name} files not found in {self.data_dir.resolve() / name / 'raw'} (expected {files}); "
                f"set --data.data_dir (or ${DATA_DIR_VARIABLE}) to the folder that holds {name}/raw, "
                f"or --data.download true to fetch them ({error})"
            ) from None
        images = dataset.data.unsqueeze(1).float().div_(255.0)  # [N, 1, 28, 28] in [0, 1]
        return images, dataset.targets.long()

    def load_splits(self) -> Splits:
        train_x, train_y = self._read(train=True)
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(self.seed))
        val_idx = order[: self.val_size]
        lip_idx = order[self.val_size : self.val_size + self.lipschitz_size]
        train_idx = order[self.val_size + self.lipschitz_size :]
        return Splits(
            train=(train_x[train_idx], train_y[train_idx]),
            val=(train_x[val_idx], train_y[val_idx]),
            test=self._read(train=False),
            lipschitz=train_x[lip_idx] if self.lipschitz_size else None,
        )

    def prepare_data(self) -> None:
        if self.download:
            self.dataset_class(str(self.data_dir), train=True, download=True)
            self.dataset_class(str(self.data_dir), train=False, download=True)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: the same layout and splits as :class:`MNISTDataModule`."""

    dataset_class = datasets.FashionMNIST
