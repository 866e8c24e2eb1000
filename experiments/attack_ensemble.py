"""How close lipreg's robust accuracy comes to the worst case over every attack that runs here.

    python -m experiments.attack_ensemble --checkpoint CKPT [CKPT …] --data-dir ../shared/datasets \
        --images 1000 --epsilon 2 --out docs/results/attack_ensemble.json

For each checkpoint (an MNIST or Fashion-MNIST classifier), on the first ``--images`` test images:
every attack is run on **all** images, independently, and its per-image outcome kept — lipreg's
PGD (cross-entropy and margin), APGD-CE, APGD-DLR, APGD-T, Square, and torchattacks' APGD-CE,
APGD-DLR, APGD-T, FAB-T, Square and the AutoAttack ensemble (standard version) as independent
oracles. Then the worst case per image over all of them, and the robust accuracy of every prefix
of lipreg's ensemble, so the defaults can be chosen by what they add. Writes one JSON file.
"""

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchattacks
from torch import Tensor

from lipreg.data import FashionMNISTDataModule, MNISTDataModule
from lipreg.evaluation.registry import build_attack
from lipreg.functional import pgd
from lipreg.functional.ensemble import EnsembleBudget
from lipreg.functional.losses import margin_loss
from lipreg.methods.base import LipRegModule


def correct_under(net: torch.nn.Module, attack: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
                  batch: int) -> tuple[Tensor, float]:
    """Per-image correctness under the attack, in batches, and the seconds it took."""
    start = time.perf_counter()
    masks = []
    for i in range(0, len(x), batch):
        adversarial = attack(x[i : i + batch], y[i : i + batch])
        with torch.no_grad():
            masks.append(net(adversarial).argmax(1) == y[i : i + batch])
    return torch.cat(masks), time.perf_counter() - start


def evaluate(checkpoint: str, args: argparse.Namespace) -> dict:
    module = LipRegModule.load_from_checkpoint(checkpoint, map_location="cpu")
    net = module.net.eval()
    data_cls = FashionMNISTDataModule if args.dataset == "fmnist" else MNISTDataModule
    data = data_cls(data_dir=args.data_dir)
    data.setup()
    x, y = (t[: args.images] for t in data.splits.test)
    eps, budget = args.epsilon, EnsembleBudget()
    generator = torch.Generator().manual_seed(0)

    def ours(name: str) -> Callable[[Tensor, Tensor], Tensor]:
        return build_attack(name, net, eps, "l2", budget, (0.0, 1.0), generator)

    attacks: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "lipreg PGD-CE": lambda a, b: pgd(net, a, b, eps, 0.25, 100),
        "lipreg PGD-margin": lambda a, b: pgd(net, a, b, eps, 0.25, 100, loss_fn=margin_loss),
        "lipreg APGD-CE": ours("apgd-ce"),
        "lipreg APGD-DLR": ours("apgd-dlr"),
        "lipreg APGD-T": ours("apgd-t"),
        "lipreg Square": ours("square"),
        "torchattacks APGD-CE": torchattacks.APGD(net, norm="L2", eps=eps, steps=100, loss="ce", seed=0),
        "torchattacks APGD-DLR": torchattacks.APGD(net, norm="L2", eps=eps, steps=100, loss="dlr", seed=0),
        "torchattacks APGD-T": torchattacks.APGDT(net, norm="L2", eps=eps, steps=100, n_classes=10, seed=0),
        "torchattacks FAB-T": torchattacks.FAB(net, norm="L2", eps=eps, multi_targeted=True, n_classes=10, seed=0),
        "torchattacks Square": torchattacks.Square(net, norm="L2", eps=eps, n_queries=5000, seed=0),
        "torchattacks AutoAttack": torchattacks.AutoAttack(net, norm="L2", eps=eps, version="standard",
                                                           n_classes=10, seed=0),
    }
    with torch.no_grad():
        clean = net(x).argmax(1) == y
    correct, seconds = {}, {}
    for name, attack in attacks.items():
        if args.only and not any(part in name for part in args.only):
            continue
        correct[name], seconds[name] = correct_under(net, attack, x, y, args.batch)
        print(f"{checkpoint}: {name}: {100 * correct[name].float().mean():.1f} % in {seconds[name]:.0f} s", flush=True)
    worst = torch.stack([clean, *correct.values()]).all(dim=0)
    prefixes, robust = {}, clean & correct.get("lipreg PGD-CE", clean)
    for name in ("lipreg PGD-CE", "lipreg APGD-CE", "lipreg APGD-T", "lipreg Square", "lipreg APGD-DLR",
                 "lipreg PGD-margin"):
        if name in correct:
            robust = robust & correct[name]
            prefixes[name] = 100 * robust.float().mean().item()
    return {
        "checkpoint": checkpoint, "images": len(x), "epsilon": eps, "norm": "l2",
        "clean": 100 * clean.float().mean().item(),
        "accuracy": {name: 100 * mask.float().mean().item() for name, mask in correct.items()},
        "seconds": seconds,
        "worst_case_over_all": 100 * worst.float().mean().item(),
        "lipreg_ensemble_prefixes": prefixes,
        "missed_by_lipreg_default": int(
            ((clean & correct.get("lipreg PGD-CE", clean) & correct.get("lipreg APGD-CE", clean)
              & correct.get("lipreg APGD-T", clean) & correct.get("lipreg Square", clean)) & ~worst).sum()),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", nargs="+", required=True)
    parser.add_argument("--dataset", choices=("mnist", "fmnist"), default="mnist")
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--epsilon", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--only", nargs="*", default=None, help="only attacks whose name contains one of these")
    parser.add_argument("--out", type=Path, default=Path("results/attack_ensemble.json"))
    args = parser.parse_args(argv)
    torch.set_grad_enabled(True)
    results = []
    for checkpoint in args.checkpoint:
        results.append(evaluate(checkpoint, args))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
