"""Which checkpoint "most robust on validation" picks with a cross-entropy or a margin PGD, and how
robust each pick really is on the test split.

    python -m experiments.table1 --dataset mnist --data-dir ../shared/datasets --epochs 6 --lambda-step 0.4 \
        --rows CLIP90 --keep-every-epoch --out results/table1_mnist_clip90_margin
    python -m experiments.checkpoint_choice --data-dir ../shared/datasets \
        --checkpoints results/table1_mnist_clip90_margin/CLIP90/lightning_logs/version_0/checkpoints/every-*.ckpt \
        --out docs/results/checkpoint_choice.json

For every epoch's checkpoint: PGDValidation's criterion as the configs set it (PGD-L2, ε = 2, 7
steps of 0.5, the first 2,000 validation images), once on cross-entropy and once on the margin
loss; then clean and robust accuracy on the test split (the worst case over PGD-CE at 100 steps,
APGD-CE, APGD-T and Square, as ``lipreg test`` reports it).
"""

import argparse
import json
from pathlib import Path

import torch

from lipreg.data import MNISTDataModule
from lipreg.evaluation.registry import build_attack
from lipreg.functional import pgd
from lipreg.functional.ensemble import EnsembleBudget, robust_under_ensemble
from lipreg.functional.losses import margin_loss, per_sample_cross_entropy
from lipreg.methods.base import LipRegModule


def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100 * (net(x).argmax(1) == y).float().mean().item()


def evaluate(path: Path, data: MNISTDataModule, test_images: int) -> dict:
    net = LipRegModule.load_from_checkpoint(str(path), map_location="cpu").net.eval()
    val_x, val_y = (t[:2000] for t in data.splits.val)
    criteria = {
        name: accuracy(net, pgd(net, val_x, val_y, 2.0, 0.5, 7, loss_fn=loss), val_y)
        for name, loss in (("ce", per_sample_cross_entropy), ("margin", margin_loss))
    }
    x, y = (t[:test_images] for t in data.splits.test)
    budget, generator = EnsembleBudget(), torch.Generator().manual_seed(0)
    robust = torch.zeros(len(x), dtype=torch.bool)
    for start in range(0, len(x), 1000):
        xb, yb = x[start : start + 1000], y[start : start + 1000]
        with torch.no_grad():
            survived_pgd = net(pgd(net, xb, yb, 2.0, 0.25, 100)).argmax(1) == yb
        attacks = [(n, build_attack(n, net, 2.0, "l2", budget, generator=generator))
                   for n in ("apgd-ce", "apgd-t", "square")]
        robust[start : start + 1000] = robust_under_ensemble(net, xb, yb, attacks, survived_pgd)[0]
    return {"checkpoint": str(path), "val_pgd_ce": criteria["ce"], "val_pgd_margin": criteria["margin"],
            "test_clean": accuracy(net, x, y), "test_robust": 100 * robust.float().mean().item()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", type=Path, required=True)
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--out", type=Path, default=Path("results/checkpoint_choice.json"))
    args = parser.parse_args(argv)
    data = MNISTDataModule(data_dir=args.data_dir, val_size=6000, lipschitz_size=6000, seed=0)
    data.setup()
    rows = [evaluate(path, data, args.test_images) for path in sorted(args.checkpoints)]
    picks = {criterion: max(rows, key=lambda r, c=criterion: r[f"val_pgd_{c}"])["checkpoint"]
             for criterion in ("ce", "margin")}
    result = {"epochs": rows, "picked_by": picks}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("| checkpoint | val PGD-CE | val PGD-margin | test clean | test robust |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {Path(r['checkpoint']).name} | {r['val_pgd_ce']:.1f} | {r['val_pgd_margin']:.1f} "
              f"| {r['test_clean']:.1f} | {r['test_robust']:.1f} |")
    print(f"picked by cross-entropy: {Path(picks['ce']).name}; by margin: {Path(picks['margin']).name}")
    return result


if __name__ == "__main__":
    main()
