"""CLIP against what a robustness researcher compares it with, on MNIST (784-64-64-10 sigmoid MLP).

    python -m experiments.method_comparison --data-dir ../shared/datasets --out results/method_comparison

Rows: Standard, Weight Reg.90, FGSM training, PGD training, a spectrally normalised network,
the input-gradient penalty and CLIP90, each trained from ``configs/mnist_<method>.yaml``. Methods
with a coefficient (weight decay, gradient penalty, CLIP) move it by the discrepancy rule towards a
training accuracy of 90 %, so those rows sit at matched clean accuracy; adversarial training's
knob is its radius ε (the configs': FGSM L∞ 0.1, PGD L2 1.0), the spectral network has none.
Each row's best-validation-PGD checkpoint is tested by ``lipreg test`` (the worst-case ensemble at
L2 ε = 0.5, 1, 2; certified accuracy at those radii from the layer-product bound; the Lipschitz
lower and upper bounds) and the row records its median training seconds per epoch. The table goes
to ``OUT/comparison.md`` and ``.json``; ``lipreg compare OUT`` draws robust against clean accuracy.
``--epochs`` and ``--sample-size`` give a budget for CPUs; rows already in ``comparison.json``
are kept when the command runs again. A method's knob is set with ``--set KEY VALUE`` (any
``lipreg fit`` option) and the row then stored under ``--label``, e.g. PGD training at a larger
radius::

    python -m experiments.method_comparison --rows "PGD training" --label "PGD training, ε=2.5" \
        --set model.init_args.epsilon 2.5 --set model.init_args.step_size 0.625
"""

import argparse
import json
import statistics
from pathlib import Path

from experiments.common import configured_run, divergences, evaluation_of, fit, publish, row_label, set_target
from lipreg.callbacks import EpochTimer

#: Row name → (config, target accuracy of the discrepancy rule or None).
ROWS = {
    "Standard": ("mnist_standard", None),
    "Weight Reg.90": ("mnist_weight_decay", 0.9),
    "FGSM training": ("mnist_fgsm", None),
    "PGD training": ("mnist_pgd", None),
    "Spectral norm": ("mnist_spectral", None),
    "Gradient penalty 90": ("mnist_gradient_penalty", 0.9),
    "CLIP90": ("mnist_clip", 0.9),
}
RADII = [0.5, 1.0, 2.0]
EVALUATION = [
    "--evaluation.noise_sigmas", "[]", "--evaluation.fgsm_epsilons", "[]",
    "--evaluation.pgd_epsilons", json.dumps(RADII), "--evaluation.certified_radii", json.dumps(RADII),
    "--evaluation.sign_pgd", "false",
    "--evaluation.time_budget", "null",  # every row attacks the same images, however long it takes
]


def run_row(name: str, args: argparse.Namespace, out: Path) -> dict:
    config, target = ROWS[name]
    overrides = ["--data.init_args.data_dir", args.data_dir, "--trainer.max_epochs", str(args.epochs), *EVALUATION]
    if args.sample_size:
        overrides += ["--evaluation.sample_size", str(args.sample_size)]
    if args.limit_batches:  # a smoke run
        overrides += ["--trainer.limit_train_batches", str(args.limit_batches), "--trainer.limit_val_batches", "1",
                      "--trainer.limit_test_batches", "1", "--evaluation.lipschitz_pairs", "20",
                      "--evaluation.train_accuracy", "false", "--evaluation.apgd_steps", "5",
                      "--evaluation.square_queries", "20", "--evaluation.pgd_steps", "5"]
    if config == "mnist_clip":
        overrides += ["--data.init_args.lipschitz_size", str(args.lipschitz_size)]
    for key, value in args.set or []:
        overrides += [f"--{key}", value]
    cli = configured_run(config, out, *overrides)
    if target is not None:
        set_target(cli.trainer, target, args.lambda_step * (2e-3 if config == "mnist_weight_decay" else 1.0))
    timer = EpochTimer()
    cli.trainer.callbacks.append(timer)
    diverged = fit(cli)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    result = evaluation_of(cli.trainer).result
    robust = result.curve("robust")
    certified = dict(result.certified)
    return {
        "test": 100 * result.clean,
        **{f"robust@{r:g}": 100 * robust[r] for r in RADII},
        **{f"certified@{r:g}": 100 * certified[r] for r in RADII if r in certified},
        "lip_lower": result.lipschitz.lower, "lip_upper": result.lipschitz.upper,
        "coefficient": result.coefficient,
        "seconds_per_epoch": statistics.median(timer.times), "checkpoint": result.checkpoint,
        "settings": {key: value for key, value in args.set or []}, "diverged": diverged,
    }


def run_directory_name(label: str) -> str:
    """A row's directory below OUT: its label with spaces as underscores, dots, commas and '=' dropped."""
    return "".join("_" if c == " " else c for c in label if c not in ".,=")


def markdown(results: dict[str, dict]) -> str:
    radii = " | ".join(f"robust ε={r:g}" for r in RADII)
    certified = " | ".join(f"certified ε={r:g}" for r in RADII)
    lines = [f"| row | test | {radii} | {certified} | Lip lower | Lip upper | s/epoch |",
             "| --- |" + " --- |" * (2 * len(RADII) + 4)]
    for name, r in results.items():
        cells = [f"{r['test']:.1f}", *(f"{r[f'robust@{e:g}']:.1f}" for e in RADII),
                 *(f"{r.get(f'certified@{e:g}', 0.0):.1f}" for e in RADII), f"{r['lip_lower']:.3g}",
                 "-" if r["lip_upper"] is None else f"{r['lip_upper']:.3g}", f"{r['seconds_per_epoch']:.1f}"]
        lines.append(f"| {row_label(name, r)} | " + " | ".join(cells) + " |")
    return ("\n".join(lines) + "\n\nAccuracies in %; robust: the worst case over lipreg test's ensemble (L2).\n"
            + divergences(results))


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--out", type=Path, default=Path("results/method_comparison"))
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lambda-step", type=float, default=0.05, help="dλ per epoch (dμ: 2e-3 of it)")
    parser.add_argument("--lipschitz-size", type=int, default=6000, help="CLIP's held-out pair set")
    parser.add_argument("--sample-size", type=int, default=None, help="test images attacked (default: all)")
    parser.add_argument("--limit-batches", type=int, default=None, help="training batches per epoch (smoke runs)")
    parser.add_argument("--rows", nargs="*", default=None, choices=list(ROWS), help="only these rows")
    parser.add_argument("--set", nargs=2, action="append", metavar=("KEY", "VALUE"),
                        help="a lipreg fit option for the rows run, e.g. --set model.init_args.epsilon 2.5")
    parser.add_argument("--label", default=None, help="store the (single) row run under this name")
    args = parser.parse_args(argv)
    if args.label is not None and len(args.rows or []) != 1:
        parser.error("--label names one row: give exactly one --rows")
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "comparison.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    for name in ROWS:
        label = args.label or name
        if (args.rows and name not in args.rows) or label in results:
            continue
        results[label] = run_row(name, args, args.out / run_directory_name(label))
        saved.write_text(json.dumps(results, indent=2))
    publish(args.out / "comparison.md", markdown(results))
    return results


if __name__ == "__main__":
    main()
