"""CLIP paper Table 1: Standard, weight regularisation and CLIP at target accuracies 85/90/95 %.

    python -m experiments.table1 --dataset mnist --data-dir ../shared/datasets --out results/table1_mnist

Each row trains ``configs/<dataset>_<method>.yaml`` (α set per row; λ and μ by the discrepancy
rule; 6,000 held-out images and their noisy copies as CLIP's Lipschitz set; checkpoint chosen by
validation PGD), then tests that checkpoint: train and test accuracy, Gaussian noise σ = 1, PGD-L2
ε = 2 with α = 0.25 and 100 iterations (both the paper's sign-step eq. (13) and the standard
normalised-step attack) and the robust accuracy at ε = 2 (the worst case per image over those two
PGD attacks, APGD-CE, APGD-T and Square; ``lipreg test``'s default ensemble), and reports the final
λ/μ next to the paper's numbers. ``--epochs`` and
``--lipschitz-size`` give a reduced budget for CPUs; ``--lambda-step`` sets dλ (and dμ in the
configs' proportion, ``MU_STEP``) so that λ can move far enough in fewer epochs. Run the same
command again after an interruption: rows already in ``OUT/table1.json`` are kept, and an
interrupted row resumes from its latest checkpoint in its own run directory.
"""

import argparse
import json
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from experiments.common import configured_run, divergences, evaluation_of, fit, row_label, set_target
from lipreg.runs import latest_checkpoint, resume_logger

#: The paper's Table 1: train, test, noise, PGD accuracies in % and the final μ or λ.
PAPER = {
    "mnist": {
        "Standard": (95.6, 89.8, 71.8, 25.3, 0.0),
        "Weight Reg.95": (93.1, 89.0, 71.4, 25.4, 0.0003),
        "Weight Reg.90": (89.8, 89.7, 71.9, 24.8, 0.0015),
        "Weight Reg.85": (84.8, 87.2, 72.3, 24.9, 0.0031),
        "CLIP95": (95.3, 90.7, 70.3, 24.4, 0.01),
        "CLIP90": (91.8, 91.6, 78.0, 36.2, 3.91),
        "CLIP85": (87.6, 87.2, 74.5, 37.7, 9.82),
    },
    "fmnist": {
        "Standard": (98.5, 92.0, 25.7, 1.9, 0.0),
        "Weight Reg.95": (94.8, 91.2, 26.9, 3.5, 0.0011),
        "Weight Reg.90": (89.8, 89.6, 28.1, 6.0, 0.0023),
        "Weight Reg.85": (85.3, 85.4, 34.2, 10.2, 0.0091),
        "CLIP95": (94.6, 91.9, 19.8, 9.1, 0.18),
        "CLIP90": (90.6, 88.9, 23.3, 13.0, 0.74),
        "CLIP85": (85.9, 83.1, 31.9, 14.9, 4.18),
    },
}
ROWS = [("Standard", "standard", None)] + [
    (f"{label}{int(100 * target)}", method, target)
    for label, method in (("Weight Reg.", "weight_decay"), ("CLIP", "clip"))
    for target in (0.95, 0.90, 0.85)
]
#: dμ as a fraction of dλ (the configs: dλ = 0.05, dμ = 1e-4).
MU_STEP = 1e-4 / 0.05
EVALUATION = [
    "--evaluation.noise_sigmas", "[1.0]", "--evaluation.fgsm_epsilons", "[]", "--evaluation.pgd_epsilons", "[2.0]",
    "--evaluation.pgd_steps", "100", "--evaluation.pgd_step_size", "0.25", "--evaluation.sign_pgd", "true",
    "--evaluation.certified_radii", "[]",
    "--evaluation.time_budget", "null",  # every row attacks the same images, however long it takes
]


def run_row(dataset: str, method: str, target: float | None, args: argparse.Namespace, out: Path) -> dict:
    overrides = ["--data.init_args.data_dir", args.data_dir, "--trainer.max_epochs", str(args.epochs), *EVALUATION]
    if method == "clip":
        overrides += ["--data.init_args.lipschitz_size", str(args.lipschitz_size)]
    if args.train_batches:
        overrides += ["--trainer.limit_train_batches", str(args.train_batches)]
    if args.sample_size:
        overrides += ["--evaluation.sample_size", str(args.sample_size)]
    for key, value in args.set or []:
        overrides += [f"--{key}", value]
    if args.precision:
        overrides += ["--trainer.precision", args.precision]
    if args.seed is not None:
        overrides += ["--seed_everything", str(args.seed)]
    if args.bound_pairs:
        overrides += ["--evaluation.lipschitz_pairs", str(args.bound_pairs)]
    if args.limit_batches:  # a smoke run: few batches everywhere, no pass over the training split
        overrides += ["--trainer.limit_train_batches", str(args.limit_batches),
                      "--trainer.limit_val_batches", str(args.limit_batches),
                      "--trainer.limit_test_batches", str(args.limit_batches),
                      "--evaluation.sample_size", str(args.limit_batches * 10), "--evaluation.train_accuracy", "false",
                      "--evaluation.lipschitz_pairs", str(args.limit_batches * 10), "--evaluation.apgd_steps", "5",
                      "--evaluation.square_queries", "20", "--data.init_args.eval_batch_size", "100"]
    resume = latest_checkpoint(out) if args.resume else None
    if resume is not None:  # continue the interrupted run in its own directory
        print(f"resuming {out} from {resume}", flush=True)
        overrides += ["--trainer.logger", json.dumps(resume_logger(resume))]
    cli = configured_run(f"{dataset}_{method}", out, *overrides)
    if args.keep_every_epoch:  # for experiments.checkpoint_choice
        cli.trainer.callbacks.append(ModelCheckpoint(filename="every-{epoch}", save_top_k=-1, every_n_epochs=1))
    if target is not None:
        step = args.lambda_step * (MU_STEP if method == "weight_decay" else 1.0)
        set_target(cli.trainer, target, step)
    diverged = fit(cli, resume)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best")
    result = evaluation_of(cli.trainer).result
    return {
        "train": None if result.train is None else 100 * result.train, "test": 100 * result.clean,
        "noise": 100 * result.curve("noise")[1.0],
        "pgd_sign": 100 * result.curve("pgd_sign")[2.0],
        "pgd": 100 * result.curve("pgd")[2.0],
        "robust": 100 * result.curve("robust")[2.0],
        "coefficient": float(cli.model.lam), "checkpoint": result.checkpoint, "diverged": diverged,
    }


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def markdown(dataset: str, results: dict[str, dict]) -> str:
    lines = [
        "| row | train | test | noise σ=1 | PGD-L2 ε=2, eq. (13) | PGD-L2 ε=2, normalised | robust ε=2 (worst case) "
        "| μ, λ |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        paper = PAPER[dataset][name]
        lines.append(
            f"| {row_label(name, r)} | {_number(r['train'])} ({paper[0]}) | {r['test']:.1f} ({paper[1]}) "
            f"| {r['noise']:.1f} ({paper[2]}) | {r['pgd_sign']:.1f} ({paper[3]}) | {r['pgd']:.1f} | {r['robust']:.1f} "
            f"| {r['coefficient']:.4g} ({paper[4]}) |"
        )
    return "\n".join(lines) + "\n\nOurs, with the paper's number in brackets; accuracies in %.\n" + divergences(results)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(PAPER), default="mnist")
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lipschitz-size", type=int, default=6000)
    parser.add_argument("--lambda-step", type=float, default=0.05, help="dλ per epoch (dμ scaled alike)")
    parser.add_argument("--limit-batches", type=int, default=None, help="training batches per epoch (smoke runs)")
    parser.add_argument("--rows", nargs="*", default=None, help="only these rows, e.g. Standard CLIP90")
    parser.add_argument("--train-batches", type=int, default=None, help="training batches per epoch (reduced budget)")
    parser.add_argument("--sample-size", type=int, default=None, help="test images attacked (default: all 10,000)")
    parser.add_argument("--bound-pairs", type=int, default=None, help="pairs for the Lipschitz lower bound")
    parser.add_argument("--set", nargs=2, action="append", metavar=("KEY", "VALUE"),
                        help="any lipreg option, e.g. --set model.init_args.active_pairs 300 (repeatable)")
    parser.add_argument("--precision", default=None, help="trainer precision, e.g. bf16-mixed (default: the config's)")
    parser.add_argument("--seed", type=int, default=None, help="seed_everything (default: the config's, 0)")
    parser.add_argument("--keep-every-epoch", action="store_true", help="also keep a checkpoint of every epoch")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="start every row afresh (default: keep the rows in OUT/table1.json and resume an "
                             "interrupted row from its latest checkpoint)")
    args = parser.parse_args(argv)
    out = args.out or Path(f"results/table1_{args.dataset}")
    out.mkdir(parents=True, exist_ok=True)
    done = out / "table1.json"
    results = json.loads(done.read_text()) if args.resume and done.exists() else {}
    for name, method, target in ROWS:
        if (args.rows and name not in args.rows) or name in results:
            continue
        results[name] = run_row(args.dataset, method, target, args, out / name.replace(" ", "_").replace(".", ""))
        (out / "table1.json").write_text(json.dumps(results, indent=2))
    text = markdown(args.dataset, results)
    (out / "table1.md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
