"""The shared base of lipreg's data modules: splits kept as tensors, batches served as slices."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from lipreg.errors import LipregError
from lipreg.task import Task


class TensorBatches(Dataset):
    """A dataset over equally long tensors whose batches are single index operations.

    ``DataLoader`` calls ``__getitems__`` with a whole batch of indices, so a batch costs one
    gather per tensor instead of one Python call and one collate per sample.
    """

    def __init__(self, *tensors: Tensor) -> None:
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("TensorBatches needs one or more tensors of the same length")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, ...]:
        index = torch.as_tensor(indices, device=self.tensors[0].device)
        return tuple(t.index_select(0, index) for t in self.tensors)


class ShuffledBatches:
    """Training batches sliced from in-memory tensors in the order a sampler gives, without a ``DataLoader``.

    Each epoch turns the sampler's order into one index tensor; a batch is then a slice of it and
    one ``index_select`` per tensor. On a small network this saves a measurable share of each step
    (``benchmarks/throughput.py``) over a ``DataLoader`` of :class:`TensorBatches`, which builds a
    list of indices per batch. Lightning calls ``sampler.set_epoch`` before every epoch, as it does
    for a ``DataLoader``'s sampler, so a ``DistributedSampler`` shuffles and shards as usual.
    The last batch may be smaller (no samples are dropped).
    """

    def __init__(self, tensors: Sequence[Tensor], batch_size: int, sampler: Sampler[int],
                 pin_memory: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors = tuple(tensors)
        self.batch_size = batch_size
        self.sampler = sampler
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def _gather(self, tensor: Tensor, index: Tensor) -> Tensor:
        if not self.pin_memory:
            return tensor.index_select(0, index)
        # gathered straight into page-locked memory: the copy to the GPU is then asynchronous
        out = torch.empty((len(index), *tensor.shape[1:]), dtype=tensor.dtype, pin_memory=True)
        return torch.index_select(tensor, 0, index, out=out)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        order = torch.tensor(list(self.sampler), dtype=torch.long, device=self.tensors[0].device)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield tuple(self._gather(t, index) for t in self.tensors)


class ShardSampler(DistributedSampler):
    """Process ``rank`` of ``num_replicas`` takes samples ``rank, rank + num_replicas, …`` in order.

    Unlike ``DistributedSampler`` it never pads with repeated samples, so metrics reduced over the
    processes equal a single-process evaluation on the same data.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self):  # noqa: ANN204
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


def keep_batch(batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """``collate_fn`` for :class:`TensorBatches`: the batch is already stacked."""
    return batch


@dataclass
class Splits:
    """Inputs and targets of every split, plus the optional held-out Lipschitz set."""

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    lipschitz: Tensor | None = None

    def to(self, device: torch.device) -> "Splits":
        def move(pair: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            return pair[0].to(device), pair[1].to(device)

        lipschitz = None if self.lipschitz is None else self.lipschitz.to(device)
        return Splits(move(self.train), move(self.val), move(self.test), lipschitz)


class InMemoryDataModule(L.LightningDataModule):
    """Base class: subclasses implement :meth:`load_splits`; this class serves the batches.

    Training batches (:class:`ShuffledBatches`) follow a ``DistributedSampler`` seeded with ``seed`` and the epoch
    number, which shards the data across processes under DDP (each sample once per epoch) and
    makes a resumed run draw the same batches as an uninterrupted one. Validation and test data
    are sharded without padding (:class:`ShardSampler`). With ``on_device`` the tensors move to the GPU once, so
    batches never cross the PCIe bus; without it, batches bound for a GPU are gathered into pinned memory.

    ``batch_size`` is per process (Lightning's convention): N processes train on a global batch
    of N·``batch_size`` and take N× fewer optimiser steps an epoch. ``global_batch_size`` instead
    fixes the global batch, each process taking ``global_batch_size / N`` (N must divide it), so an
    N-process run takes the optimiser steps of one process.

    Attributes set by subclasses: ``task``, ``num_outputs``, ``input_shape`` and ``input_box``
    (the valid input range, used to clamp attacks and Lipschitz pairs; ``None`` for unbounded).
    """

    task: Task = "classification"
    num_outputs: int
    input_shape: tuple[int, ...]
    input_box: tuple[float, float] | None = None

    def __init__(self, batch_size: int, eval_batch_size: int | None, seed: int, on_device: bool,
                 global_batch_size: int | None = None) -> None:
        super().__init__()
        if batch_size < 1 or (global_batch_size is not None and global_batch_size < 1):
            raise ValueError(f"batch sizes must be >= 1, got batch_size {batch_size}, global_batch_size "
                             f"{global_batch_size}")
        self.batch_size = batch_size
        self.global_batch_size = global_batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed = seed
        self.on_device = on_device
        self.splits: Splits | None = None

    def load_splits(self) -> Splits:
        """Read or generate all splits (called once, in :meth:`setup`)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        splits = self.load_splits()
        strategy = self.trainer.strategy if self.trainer is not None else None
        if self.on_device and strategy is not None and strategy.root_device.type == "cuda":
            splits = splits.to(strategy.root_device)
        self.splits = splits

    def _require_splits(self) -> Splits:
        if self.splits is None:
            self.setup()
        assert self.splits is not None
        return self.splits

    @property
    def lipschitz_inputs(self) -> Tensor | None:
        """The held-out inputs the CLIP paper builds its Lipschitz pair set from (or ``None``)."""
        return self._require_splits().lipschitz

    def process_batch_size(self) -> int:
        """The training batch of one process: ``batch_size``, or ``global_batch_size`` / processes."""
        if self.global_batch_size is None:
            return self.batch_size
        world, _ = self._process_layout()
        if self.global_batch_size % world:
            raise LipregError(f"global_batch_size {self.global_batch_size} is not divisible by the {world} processes; "
                              f"choose a multiple of {world}")
        return self.global_batch_size // world

    def _pin_memory(self, tensor: Tensor) -> bool:
        """Whether batches of ``tensor`` (kept on the CPU) are bound for a CUDA device."""
        strategy = self.trainer.strategy if self.trainer is not None else None
        return (tensor.device.type == "cpu" and strategy is not None and strategy.root_device.type == "cuda"
                and torch.cuda.is_available())

    def train_dataloader(self) -> ShuffledBatches:
        dataset = TensorBatches(*self._require_splits().train)
        world, rank = self._process_layout()
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        return ShuffledBatches(dataset.tensors, self.process_batch_size(), sampler,
                               pin_memory=self._pin_memory(dataset.tensors[0]))

    def _eval_loader(self, split: tuple[Tensor, Tensor]) -> DataLoader:
        dataset = TensorBatches(*split)
        world, rank = self._process_layout()
        sampler = ShardSampler(dataset, num_replicas=world, rank=rank)
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=sampler, collate_fn=keep_batch,
                          pin_memory=self._pin_memory(split[0]))

    def _process_layout(self) -> tuple[int, int]:
        """``(world size, global rank)`` of this process; ``(1, 0)`` without a trainer."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._require_splits().val)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._require_splits().test)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self._require_splits().test)
