"""Cost of each regulariser against standard training on MNIST, timed in one run; prints ratios.

    python benchmarks/regularisers.py --data-dir ../shared/datasets

784-200-80-10 ReLU network, batch 128, SGD; pair set = the batch and one ascent step for the
pair-based methods, plus CLIP at the reference code's settings (500 persistent pairs from a
held-out split, one ascent step with the adaptive step size). Also CLIP as
``configs/mnist_clip.yaml`` ships it (6,000 held-out pairs, adaptive step, 784-64-64-10 sigmoid),
against Standard on that same network, also with an active pair set (300 top pairs and a rotating
twentieth each step). For each method: seconds per epoch (the second of two
epochs), its ratio to its Standard baseline, the ratio of FLOPs of one training step (forward,
pair ascent and backward, counted with ``torch.utils.flop_counter``), and time ratio / FLOP
ratio (the FLOPs of a bf16-mixed row are counted in float32: the same arithmetic). Target: ≤ 1.3
for every float32 method, i.e. the extra time is the extra arithmetic and not
overhead. The 1-Lipschitz networks of ``configs/mnist_orthogonal.yaml`` and ``mnist_aol.yaml``
(LipschitzMargin, Adam) are compared with a ReLU network of their widths: their extra work is the
weights' parametrisation (the Cayley map's linear solve, which ``FlopCounterMode`` does not count,
so their time/FLOPs ratio overstates the overhead; AOL's ``WᵀW`` is counted). ``--repeats`` runs the
methods in turn for several rounds and reports the median ratio with its range; ``--methods``
times a subset.
"""

import argparse
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from lipreg.callbacks import EpochTimer
from lipreg.data import MNISTDataModule
from lipreg.methods import (
    CLIP,
    PTV,
    TV,
    AdversarialTraining,
    FGSMTraining,
    GradientPenalty,
    LipRegModule,
    LipschitzMargin,
    Standard,
    SumFLIP,
    WeightDecay,
)
from lipreg.nets import MLP, LipschitzMLP

REPO = Path(__file__).resolve().parents[1]


def sgd(parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=0.1, momentum=0.9)


def net() -> MLP:
    torch.manual_seed(0)
    return MLP([784, 200, 80, 10], activation="relu")


def spectral_net() -> MLP:
    torch.manual_seed(0)
    return MLP([784, 200, 80, 10], activation="relu", spectral_norm=True)


def paper_net() -> MLP:
    """The network of configs/mnist_*.yaml."""
    torch.manual_seed(0)
    return MLP([784, 64, 64, 10], activation="sigmoid")


def wide_net() -> MLP:
    """A ReLU network of configs/mnist_orthogonal.yaml's widths, the baseline of the 1-Lipschitz rows."""
    torch.manual_seed(0)
    return MLP([784, 512, 512, 512, 10], activation="relu")


def lipschitz_net(layer: str) -> LipschitzMLP:
    """configs/mnist_orthogonal.yaml's (``orthogonal``) or mnist_aol.yaml's (``aol``) network."""
    torch.manual_seed(0)
    return LipschitzMLP([784, 512, 512, 512, 10], layer=layer)


def adam(parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=1e-3)


METHODS: dict[str, Callable[[], LipRegModule]] = {
    "Standard": lambda: Standard(net(), optimizer=sgd),
    "CLIP": lambda: CLIP(net(), lam=0.01, pair_init="batch", step_size=0.1, optimizer=sgd),
    "SumFLIP": lambda: SumFLIP(net(), lam=0.01, pair_init="batch", step_size=0.1, optimizer=sgd),
    "TV": lambda: TV(net(), lam=0.01, epsilon=1.0, step_size=0.1, optimizer=sgd),
    "TV exact (3 power it.)": lambda: TV(net(), lam=0.01, exact=True, power_iterations=3, optimizer=sgd),
    "pTV": lambda: PTV(net(), lam=0.01, epsilon=1.0, step_size=0.1, optimizer=sgd),
    "WeightDecay": lambda: WeightDecay(net(), mu=1e-4, optimizer=sgd),
    "FGSMTraining": lambda: FGSMTraining(net(), epsilon=0.1, adversarial_weight=0.5, optimizer=sgd),
    "PGD training (10 steps)": lambda: AdversarialTraining(net(), epsilon=1.0, norm="l2", steps=10, step_size=0.25,
                                                           optimizer=sgd),
    "GradientPenalty": lambda: GradientPenalty(net(), lam=0.01, optimizer=sgd),
    "Standard, spectral norm": lambda: Standard(spectral_net(), optimizer=sgd),
    "CLIP reference (500, adaptive)": lambda: CLIP(
        net(), lam=0.01, pair_init="heldout", num_pairs=500, step_size=0.1, adaptive_step=True, optimizer=sgd
    ),
    "Standard 784-64-64-10 sigmoid": lambda: Standard(paper_net(), optimizer=sgd),
    "CLIP mnist_clip.yaml (6,000)": lambda: CLIP(
        paper_net(), lam=0.01, pair_init="heldout", step_size=0.1, adaptive_step=True, optimizer=sgd
    ),
    "CLIP mnist_clip.yaml, active 300 + 1/20": lambda: CLIP(
        paper_net(), lam=0.01, pair_init="heldout", step_size=0.1, adaptive_step=True, active_pairs=300,
        revisit_every=20, optimizer=sgd
    ),
    "CLIP mnist_clip.yaml, active 32 + 1/200 (the config's default)": lambda: CLIP(
        paper_net(), lam=0.01, pair_init="heldout", step_size=0.1, adaptive_step=True, active_pairs=32,
        revisit_every=200, optimizer=sgd
    ),
    "Standard 784-512-512-512-10 ReLU": lambda: Standard(wide_net(), optimizer=adam),
    "LipschitzMargin, orthogonal (mnist_orthogonal.yaml)": lambda: LipschitzMargin(
        lipschitz_net("orthogonal"), epsilon=1.58, temperature=3.0, optimizer=adam),
    "LipschitzMargin, AOL (mnist_aol.yaml)": lambda: LipschitzMargin(lipschitz_net("aol"), epsilon=1.58,
                                                                     optimizer=adam),
}
#: The same methods under ``Trainer(precision="bf16-mixed")``, against the float32 Standard baselines.
BF16 = {"CLIP reference (500, adaptive) bf16-mixed": "CLIP reference (500, adaptive)",
        "CLIP mnist_clip.yaml (6,000) bf16-mixed": "CLIP mnist_clip.yaml (6,000)"}
METHODS.update({name: METHODS[base] for name, base in BF16.items()})
#: The Standard run each method is compared with (default: "Standard", the 784-200-80-10 ReLU net).
BASELINES = {"Standard 784-64-64-10 sigmoid": "Standard 784-64-64-10 sigmoid",
             "CLIP mnist_clip.yaml (6,000)": "Standard 784-64-64-10 sigmoid",
             "CLIP mnist_clip.yaml (6,000) bf16-mixed": "Standard 784-64-64-10 sigmoid",
             "CLIP mnist_clip.yaml, active 300 + 1/20": "Standard 784-64-64-10 sigmoid",
             "CLIP mnist_clip.yaml, active 32 + 1/200 (the config's default)": "Standard 784-64-64-10 sigmoid",
             "Standard 784-512-512-512-10 ReLU": "Standard 784-512-512-512-10 ReLU",
             "LipschitzMargin, orthogonal (mnist_orthogonal.yaml)": "Standard 784-512-512-512-10 ReLU",
             "LipschitzMargin, AOL (mnist_aol.yaml)": "Standard 784-512-512-512-10 ReLU"}


def step_flops(module: LipRegModule, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    """FLOPs of one training step's forward, pair ascent and backward (not the optimiser update)."""
    with FlopCounterMode(display=False) as counter:
        module.training_step(batch, 0).backward()
    module.net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def epoch_time(
    build: Callable[[], LipRegModule], data: MNISTDataModule, limit_batches: int | None, precision: str = "32-true"
) -> tuple[float, LipRegModule]:
    """Seconds of the second of two training epochs, and the trained module."""
    L.seed_everything(0, verbose=False)
    module = build()
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=limit_batches, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        inference_mode=False, callbacks=[timer], precision=precision,
    )
    trainer.fit(module, data)
    return timer.times[-1], module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--limit-batches", type=int, default=None, help="batches per epoch (default: all)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="methods to time (default: all); their Standard baselines always run")
    parser.add_argument("--repeats", type=int, default=1, help="rounds in which every method runs once")
    args = parser.parse_args()

    data = MNISTDataModule(data_dir=args.data_dir, val_size=6000, lipschitz_size=6000, batch_size=128)
    data.setup()
    batch = tuple(t[:128] for t in data.splits.train)
    chosen = [name for name in args.methods if name != "Standard"]
    baselines = dict.fromkeys(BASELINES.get(name, "Standard") for name in chosen)
    names = ["Standard", *[b for b in baselines if b != "Standard"], *[n for n in chosen if n not in baselines]]
    times: dict[str, list[float]] = {name: [] for name in names}
    flops: dict[str, int] = {}
    # the methods take turns, so a slow spell of a noisy machine hits all alike
    for _ in range(args.repeats):
        for name in names:
            precision = "bf16-mixed" if name in BF16 else "32-true"
            seconds, module = epoch_time(METHODS[name], data, args.limit_batches, precision)
            times[name].append(seconds)
            flops.setdefault(name, step_flops(module, batch))
            print(f"{name}: {seconds:.2f} s/epoch", flush=True)

    print(f"\nMNIST, batch 128, {torch.get_num_threads()} threads, {args.repeats} rounds; ratios to Standard on "
          "the same network (784-200-80-10 ReLU unless named; median of the rounds, range)")
    print(f"{'method':<32}{'s/epoch':>9}{'time':>8}{'FLOPs':>8}{'time/FLOPs':>12}   range of time")
    for name in names:
        baseline = BASELINES.get(name, "Standard")
        ratios = sorted(t / base for t, base in zip(times[name], times[baseline], strict=True))
        time_ratio, flop_ratio = statistics.median(ratios), flops[name] / flops[baseline]
        print(f"{name:<32}{statistics.median(times[name]):>9.2f}{time_ratio:>8.2f}{flop_ratio:>8.2f}"
              f"{time_ratio / flop_ratio:>12.2f}   {ratios[0]:.2f}–{ratios[-1]:.2f}")


if __name__ == "__main__":
    main()
