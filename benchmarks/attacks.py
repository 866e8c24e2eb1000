"""PGD cost against plain forward+backward passes, and the time of a full ``lipreg test`` on MNIST.

    python benchmarks/attacks.py --data-dir ../shared/datasets

1. PGD-L2 (ε = 2, α = 0.25, 100 steps, lipreg's ``pgd``) on the 10,000 MNIST test images with a
   784-200-80-10 ReLU network, in batches of 1,000, against 100 plain forward+backward passes
   (input gradient of the summed cross-entropy) over the same batches, taking turns for
   ``--repeats`` rounds; prints the median ratio and its range (target ≤ 1.2: the attack's
   projection and bookkeeping cost little beside the passes).
2. The wall time of ``lipreg test`` with the default evaluation suite on a checkpoint of
   ``configs/mnist_standard.yaml`` trained for one epoch (trained first, not timed).
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lipreg.cli import run
from lipreg.data import MNISTDataModule
from lipreg.functional import pgd
from lipreg.nets import MLP

REPO = Path(__file__).resolve().parents[1]


def plain_passes(net: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int) -> float:
    start = time.perf_counter()
    for x, y in batches:
        for _ in range(steps):
            x_in = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(net(x_in), y, reduction="sum"), x_in)
    return time.perf_counter() - start


def pgd_time(net: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int) -> float:
    start = time.perf_counter()
    for x, y in batches:
        pgd(net, x, y, epsilon=2.0, step_size=0.25, steps=steps, norm="l2")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="rounds in which both run once")
    parser.add_argument("--root", default="/tmp/lipreg-attack-benchmark")
    parser.add_argument("--skip-test-run", action="store_true", help="only the PGD ratio")
    args = parser.parse_args()

    data = MNISTDataModule(data_dir=args.data_dir)
    data.setup()
    x, y = data.splits.test
    batches = [(x[i : i + 1000], y[i : i + 1000]) for i in range(0, len(x), 1000)]
    torch.manual_seed(0)
    net = MLP([784, 200, 80, 10]).eval()
    plain_passes(net, batches[:1], 5)  # warm-up
    # the two take turns, so a slow spell of a noisy machine hits both alike
    rounds = [(plain_passes(net, batches, args.steps), pgd_time(net, batches, args.steps)) for _ in range(args.repeats)]
    ratios = sorted(attack / plain for plain, attack in rounds)
    plain = statistics.median(plain for plain, _ in rounds)
    attack = statistics.median(attack for _, attack in rounds)
    print(f"\nMNIST test set ({len(x)} images), 784-200-80-10, {torch.get_num_threads()} threads, {args.steps} steps, "
          f"{args.repeats} rounds")
    print(f"{'plain forward+backward':<28}{plain:>8.2f} s  1.00")
    print(f"{'PGD-L2 (lipreg)':<28}{attack:>8.2f} s  {statistics.median(ratios):.2f}  "
          f"(range {ratios[0]:.2f}–{ratios[-1]:.2f})")

    if args.skip_test_run:
        return
    config = str(REPO / "configs" / "mnist_standard.yaml")
    common = ["--config", config, "--data.init_args.data_dir", args.data_dir, "--trainer.default_root_dir", args.root]
    fit = run(["fit", *common, "--trainer.max_epochs", "1"])
    checkpoint = fit.trainer.checkpoint_callback.best_model_path
    start = time.perf_counter()
    run(["test", *common, "--ckpt_path", checkpoint])
    print(f"\nfull `lipreg test` (default evaluation suite, 10,000 test images): {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
