"""CLIP paper §4.1, Figure 2: CLIP fits of the regression problem for λ = 10, 1, 1e-10 and 0.

    python -m experiments.regression_figure2 --out results/regression

As in the paper: the unregularised network (λ = 0) is trained first; λ = 10 is warm-started from
it, λ = 1 from the λ = 10 network and λ = 1e-10 from the λ = 1 network. Writes ``figure2.png``
(four panels: ground truth, samples, network) and ``figure2.md`` / ``figure2.json`` with each
network's Lipschitz constant (exact on 1-D inputs: the largest slope on a fine grid of [−4, 4]) and
its training MSE.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from experiments.common import configured_run  # noqa: E402

STAGES = [("0", 0.0, None), ("10", 10.0, "0"), ("1", 1.0, "10"), ("1e-10", 1e-10, "1")]


def exact_lipschitz(net: torch.nn.Module, low: float = -4.0, high: float = 4.0, points: int = 8001) -> float:
    grid = torch.linspace(low, high, points).unsqueeze(1)
    with torch.no_grad():
        values = net(grid)
    return ((values[1:] - values[:-1]).abs() / (grid[1:] - grid[:-1])).max().item()


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/regression"))
    parser.add_argument("--epochs", type=int, default=1500, help="epochs per stage")
    parser.add_argument("--lambda-scale", type=float, default=1.0,
                        help="multiply every λ (e.g. 0.01 for a loss summed over the 100 samples instead of averaged)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    networks: dict[str, torch.nn.Module] = {}
    table: dict[str, dict[str, float]] = {}
    data = None
    for name, lam, warm_start in STAGES:
        lam = lam * args.lambda_scale
        cli = configured_run("regression_clip", args.out / f"lambda_{name}", "--model.init_args.lam", str(lam),
                             "--trainer.max_epochs", str(args.epochs))
        if warm_start is not None:
            cli.model.net.load_state_dict(networks[warm_start].state_dict())
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        data = cli.datamodule
        networks[name] = cli.model.net.eval()
        x, y = data.splits.train
        with torch.no_grad():
            mse = torch.nn.functional.mse_loss(networks[name](x), y).item()
        table[name] = {"lambda": lam, "lipschitz": exact_lipschitz(networks[name]), "train_mse": mse}

    figure, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharey=True)
    grid = data.splits.test[0]
    for axis, (name, _, _) in zip(axes, [STAGES[1], STAGES[2], STAGES[3], STAGES[0]], strict=True):
        with torch.no_grad():
            fitted = networks[name](grid)
        axis.plot(grid, data.ground_truth(grid), color="tab:red", label="ground truth")
        axis.scatter(*data.splits.train, s=8, color="tab:blue", label="samples")
        axis.plot(grid, fitted, color="tab:green", label="network")
        axis.set_title(f"λ = {table[name]['lambda']:g}  (Lip = {table[name]['lipschitz']:.3f})")
    axes[0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(args.out / "figure2.png", dpi=110)
    rows = ["| λ | Lipschitz constant (exact, grid) | training MSE |", "| --- | --- | --- |"]
    rows += [f"| {v['lambda']:g} | {v['lipschitz']:.4f} | {v['train_mse']:.5f} |" for v in table.values()]
    (args.out / "figure2.md").write_text("\n".join(rows) + "\n")
    (args.out / "figure2.json").write_text(json.dumps(table, indent=2))
    print("\n".join(rows))
    return table


if __name__ == "__main__":
    main()
