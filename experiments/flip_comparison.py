"""FLIP slides: Standard, SumFLIP, TV, pTV and FGSM training on MNIST; robustness curves and times.

    python -m experiments.flip_comparison --data-dir ../shared/datasets --out results/flip

Trains ``configs/mnist_<method>.yaml`` for each method, measuring the training time of every epoch
(the slides' Table 1 as ratios to Standard, all in this one run), then tests the PGD-best
checkpoint over a range of ε for FGSM (L∞), PGD (L2) and Gaussian noise (the slides' Figures
13–15). Writes ``comparison.png``/``comparison.csv`` (``lipreg compare``), ``times.md`` and
``flip.json``.
"""

import argparse
import json
import time
from pathlib import Path

import lightning as L

from experiments.common import configured_run, evaluation_of
from lipreg.report import compare

METHODS = {"STA": "standard", "SUM FLIP": "sumflip", "TV": "tv", "pTV": "ptv", "ADV FGSM": "fgsm"}
#: The slides' Table 1: training accuracy and computation time in seconds (AMD EPYC 7402).
SLIDES = {"SUM FLIP": (0.979, 126), "ADV FGSM": (0.837, 116), "TV": (0.981, 95), "pTV": (0.978, 94), "STA": (0.979, 54)}
EVALUATION = [
    "--evaluation.noise_sigmas", "[0.1, 0.2, 0.3, 0.5]", "--evaluation.fgsm_epsilons", "[0.05, 0.1, 0.15, 0.2]",
    "--evaluation.pgd_epsilons", "[0.5, 1.0, 1.5, 2.0]", "--evaluation.pgd_steps", "40",
    "--evaluation.pgd_step_size", "0.1", "--evaluation.sign_pgd", "false", "--evaluation.certified_radii", "[]",
    "--evaluation.time_budget", "null",  # every row attacks the same images, however long it takes
]


class TrainingTimer(L.Callback):
    """Sums the wall time of the training epochs (validation excluded)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds += time.perf_counter() - self.start


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--out", type=Path, default=Path("results/flip"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sample-size", type=int, default=2000, help="test images attacked")
    parser.add_argument("--lipschitz-size", type=int, default=6000, help="held-out pair set of SumFLIP")
    parser.add_argument("--limit-batches", type=int, default=None, help="training batches per epoch (smoke runs)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, method in METHODS.items():
        overrides = ["--data.init_args.data_dir", args.data_dir, "--trainer.max_epochs", str(args.epochs),
                     "--evaluation.sample_size", str(args.sample_size), *EVALUATION,
                     "--evaluation.output_dir", str(args.out / "runs" / name.replace(" ", "_"))]
        if method == "sumflip":
            overrides += ["--data.init_args.lipschitz_size", str(args.lipschitz_size)]
        if args.limit_batches:  # a smoke run: few batches everywhere, a small attack budget
            overrides += ["--trainer.limit_train_batches", str(args.limit_batches),
                          "--trainer.limit_val_batches", str(args.limit_batches),
                          "--trainer.limit_test_batches", str(args.limit_batches),
                          "--evaluation.lipschitz_pairs", str(args.limit_batches * 10),
                          "--evaluation.apgd_steps", "5", "--evaluation.square_queries", "20"]
        cli = configured_run(f"mnist_{method}", args.out / "logs" / method, *overrides)
        timer = TrainingTimer()
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best")
        result = evaluation_of(cli.trainer).result
        results[name] = {"train_seconds": timer.seconds, "train_accuracy": result.train,
                         "test_accuracy": result.clean, "curves": result.curves}
        (args.out / "flip.json").write_text(json.dumps(results, indent=2))
    base = results["STA"]["train_seconds"]
    lines = ["| method | train accuracy (slides) | training time, s | ratio to STA (slides) |",
             "| --- | --- | --- | --- |"]
    for name, r in results.items():
        accuracy, seconds = SLIDES[name]
        lines.append(f"| {name} | {r['train_accuracy']:.3f} ({accuracy}) | {r['train_seconds']:.1f} "
                     f"| {r['train_seconds'] / base:.2f} ({seconds / SLIDES['STA'][1]:.2f}) |")
    (args.out / "times.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    compare([str(args.out / "runs"), "--output", str(args.out)])
    return results


if __name__ == "__main__":
    main()
