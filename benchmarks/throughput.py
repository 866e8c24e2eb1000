"""One epoch of standard MNIST training several ways, timed in one run; prints the ratios.

    python benchmarks/throughput.py --data-dir ../shared/datasets

1. lipreg's CLI path (``LipRegCLI``, configs/mnist_standard.yaml with the 784-200-80-10 net), and
   the same with the callbacks ``lipreg fit`` adds (the divergence guard, which reads the loss
   every step on a CPU, the per-epoch line, and the latest checkpoint, saved after the timed part
   of each epoch);
2. a plain PyTorch loop over the same in-memory tensors (random permutation, slices);
3. a torchvision ``MNIST`` dataset with ``ToTensor`` behind a per-sample ``DataLoader``;
4. for reference, the floor of stock Lightning: a bare ``LightningModule`` whose step is only the
   forward and the loss, fed the same batches as the plain loop (no metrics, no lipreg code);
   also with ``Trainer(barebones=True)``, Lightning's own mode for measuring its loop's overhead.

All: batch 128, SGD(lr 0.1, momentum 0.9), training only (no validation, no checkpointing).
Each is timed over ``--epochs`` epochs after one warm-up epoch; the figure is seconds per epoch.
The paths take turns for ``--repeats`` rounds; the ratio is the median of the rounds' ratios to
the plain loop, with their range, and likewise to the bare LightningModule ("to bare": what lipreg
and the callbacks of ``lipreg fit`` add to stock Lightning). Target: lipreg ≤ 1.25× the plain loop.
"""

import argparse
import statistics
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from lipreg.callbacks import DivergenceGuard, EpochTimer, LatestCheckpoint, ProgressLine
from lipreg.cli import LipRegCLI
from lipreg.nets import MLP

REPO = Path(__file__).resolve().parents[1]
WIDTHS = [784, 200, 80, 10]


def lipreg_epoch(data_dir: str, epochs: int, root: str, as_fit: bool = False) -> float:
    cli = LipRegCLI(
        args=[
            "--config", str(REPO / "configs" / "mnist_standard.yaml"),
            "--data.init_args.data_dir", data_dir,
            "--model.init_args.net.init_args.widths", str(WIDTHS),
            "--model.init_args.net.init_args.activation", "relu",
            "--trainer.max_epochs", str(epochs + 1),
            "--trainer.limit_val_batches", "0",
            "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", root,
        ],
        run=False,
    )
    timer = EpochTimer()
    cli.trainer.callbacks.append(timer)
    if as_fit:  # what `lipreg fit` adds to a config's callbacks
        cli.trainer.callbacks += [DivergenceGuard(), ProgressLine(), LatestCheckpoint(dirpath=root)]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return sum(timer.times[1:]) / epochs


class BareModule(L.LightningModule):
    """Only forward, loss and SGD: what stock Lightning costs with nothing of lipreg in it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = MLP(WIDTHS)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class PermutedSlices:
    """Batches sliced from in-memory tensors in a fresh random order each epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return -(-len(self.x) // 128)

    def __iter__(self):
        order = torch.randperm(len(self.x))
        for i in range(0, len(self.x), 128):
            index = order[i : i + 128]
            yield self.x[index], self.y[index]


def bare_lightning_epoch(x: torch.Tensor, y: torch.Tensor, epochs: int, barebones: bool = False) -> float:
    torch.manual_seed(0)
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=epochs + 1, logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=False, callbacks=[timer], barebones=barebones,
    )
    trainer.fit(BareModule(), train_dataloaders=PermutedSlices(x, y))
    return sum(timer.times[1:]) / epochs


def plain_epoch(x: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    torch.manual_seed(0)
    net = MLP(WIDTHS)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    times = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            index = order[i : i + 128]
            loss = F.cross_entropy(net(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / epochs


def torchvision_epoch(data_dir: str, train_size: int, epochs: int) -> float:
    torch.manual_seed(0)
    dataset = datasets.MNIST(data_dir, train=True, transform=transforms.ToTensor())
    subset = torch.utils.data.Subset(dataset, range(train_size))
    loader = DataLoader(subset, batch_size=128, shuffle=True)
    net = MLP(WIDTHS)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    times = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        for xb, yb in loader:
            loss = F.cross_entropy(net(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    parser.add_argument("--repeats", type=int, default=3, help="rounds in which every path runs once")
    parser.add_argument("--root", default="/tmp/lipreg-benchmark", help="where the lipreg run writes its logs")
    args = parser.parse_args()

    from lipreg.data import MNISTDataModule

    dm = MNISTDataModule(data_dir=args.data_dir, val_size=6000)
    dm.setup()
    x, y = dm.splits.train

    paths = {
        "plain loop": lambda: plain_epoch(x, y, args.epochs),
        "lipreg": lambda: lipreg_epoch(args.data_dir, args.epochs, args.root),
        "lipreg, as `lipreg fit`": lambda: lipreg_epoch(args.data_dir, args.epochs, args.root, as_fit=True),
        "torchvision DataLoader": lambda: torchvision_epoch(args.data_dir, len(x), args.epochs),
        "bare Lightning (floor)": lambda: bare_lightning_epoch(x, y, args.epochs),
        "bare, barebones=True": lambda: bare_lightning_epoch(x, y, args.epochs, barebones=True),
    }
    # the paths take turns, so a slow spell of a noisy machine hits all of them alike; each
    # round's ratios are to that round's plain loop, and the table shows their median and range
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, path in paths.items():
            seconds[name].append(path())
    print(f"\nMNIST, 784-200-80-10, batch 128, {len(x)} images, {torch.get_num_threads()} threads, "
          f"{args.repeats} rounds of {args.epochs} timed epochs")
    print(f"{'path':<24}{'s/epoch':>10}{'ratio':>8}   range      {'to bare':>7}   range")
    for name, times in seconds.items():
        cells = [f"{name:<24}{statistics.median(times):>10.3f}"]
        for base in (seconds["plain loop"], seconds["bare Lightning (floor)"]):
            ratios = sorted(t / b for t, b in zip(times, base, strict=True))
            cells.append(f"{statistics.median(ratios):>8.2f}   {ratios[0]:.2f}–{ratios[-1]:.2f}")
        print("".join(cells))


if __name__ == "__main__":
    main()
