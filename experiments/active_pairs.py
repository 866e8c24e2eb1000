"""CLIP's active pair set against ascending every pair, over seeds (issue 21).

    python -m experiments.active_pairs --dataset mnist --data-dir ../shared/datasets --out results/active_pairs

Each arm trains ``configs/<dataset>_clip.yaml`` (CLIP90: α = 0.9, dλ = 0.05 an epoch, the held-out
Lipschitz set) with one pair-set rule, once per seed (``seed_everything``; the data split stays
the config's):

- ``full``: every pair is ascended every step (CLIP paper, Algorithm 1, as written);
- ``active K/R``: the K pairs with the largest last-known quotients plus a rotating 1/R of the set
  (``--model.init_args.active_pairs K --model.init_args.revisit_every R``).

The best-validation-PGD checkpoint of each run is tested: clean accuracy on all test images, the
worst-case robust accuracy at L2 ε = 1 and 2 (``lipreg test``'s ensemble) on the first
``--sample-size`` test images. Beside them, for the tested checkpoint's epoch: the logged
``train/lip`` (the mean over the epoch's steps of the maximum over the pairs that step moved, read
from TensorBoard) and the maximum quotient over the checkpoint's *whole* saved pair set, before and
after ``--refine-steps`` adaptive ascent steps of every pair — so an active run's logged maximum can
be read against what the full set says.
Cost: the training wall time, seconds per step, and the pairs ascended per step (exact: a count,
immune to a shared machine's noise).

Every run writes ``OUT/<arm>/seed<k>/run.json``; a run already there is skipped, an interrupted one
resumes from its latest checkpoint. Several invocations may share one OUT (for example one per
seed, in parallel). ``OUT/summary.md`` and ``summary.json`` give each arm's mean, standard
deviation and range over the seeds found.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from experiments.common import configured_run, evaluation_of, fit, publish, set_target
from lipreg.callbacks import EpochTimer
from lipreg.functional import ascend_pairs, pair_quotients
from lipreg.methods import CLIP
from lipreg.runs import latest_checkpoint, resume_logger

#: Arm name → (active_pairs, revisit_every); ``None``: every pair every step.
ARMS: dict[str, tuple[int, int] | None] = {"full": None, "active 32/200": (32, 200), "active 300/20": (300, 20)}
RADII = (1.0, 2.0)
EVALUATION = [
    "--evaluation.noise_sigmas", "[]", "--evaluation.fgsm_epsilons", "[]",
    "--evaluation.pgd_epsilons", json.dumps(list(RADII)), "--evaluation.sign_pgd", "false",
    "--evaluation.certified_radii", "[]", "--evaluation.train_accuracy", "false",
    "--evaluation.time_budget", "null",  # every row attacks the same images, however long it takes
]
#: The figures summarised per arm.
FIGURES = ("test", "robust@1", "robust@2", "logged_lip_best", "pair_set_max", "pair_set_max_refined",
           "train_minutes", "seconds_per_step", "pairs_per_step")


def arm_directory(arm: str) -> str:
    return arm.replace(" ", "_").replace("/", "-")


def pairs_per_step(num_pairs: int, arm: str) -> int:
    """Pairs one training step ascends (``CLIP.active_index``'s length; the first step ascends all)."""
    setting = ARMS[arm]
    if setting is None:
        return num_pairs
    top, revisit = setting
    return min(-(-num_pairs // revisit) + top, num_pairs)


@torch.no_grad()
def largest_quotient(model: CLIP, pairs: torch.Tensor) -> float:
    """``max ‖f(u) − f(v)‖ / ‖u − v‖`` over the pairs ``[2, P, ...]`` (eq. (5)'s maximum)."""
    return float(pair_quotients(model.net, pairs, model.p).max())


def refined_pairs(model: CLIP, steps: int) -> torch.Tensor:
    """The model's whole pair set after ``steps`` adaptive ascent steps of every pair (a copy)."""
    return ascend_pairs(model.net, model.pairs.clone(), model.pair_step.clone(), steps=steps, p=model.p,
                        box=model.input_box, adaptive=True).pairs


def run_arm(dataset: str, arm: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    overrides = ["--data.init_args.data_dir", args.data_dir, "--trainer.max_epochs", str(args.epochs),
                 "--seed_everything", str(seed), "--data.init_args.lipschitz_size", str(args.lipschitz_size),
                 "--evaluation.sample_size", str(args.sample_size), *EVALUATION]
    setting = ARMS[arm]
    if setting is not None:
        overrides += ["--model.init_args.active_pairs", str(setting[0]),
                      "--model.init_args.revisit_every", str(setting[1])]
    if args.limit_batches:  # a smoke run
        overrides += ["--trainer.limit_train_batches", str(args.limit_batches), "--trainer.limit_val_batches", "1",
                      "--trainer.limit_test_batches", "1", "--evaluation.lipschitz_pairs", "20",
                      "--evaluation.apgd_steps", "5", "--evaluation.square_queries", "20",
                      "--evaluation.pgd_steps", "5"]
    for key, value in args.set or []:
        overrides += [f"--{key}", value]
    resume = latest_checkpoint(out)
    if resume is not None:
        print(f"resuming {out} from {resume}", flush=True)
        overrides += ["--trainer.logger", json.dumps(resume_logger(resume))]
    cli = configured_run(f"{dataset}_clip", out, *overrides)
    set_target(cli.trainer, args.target, args.lambda_step)
    timer = EpochTimer()
    cli.trainer.callbacks.append(timer)
    started = time.perf_counter()
    diverged = fit(cli, resume)
    wall = time.perf_counter() - started
    logged_lip = float(cli.trainer.callback_metrics.get("train/lip", float("nan")))
    steps = cli.trainer.global_step - (0 if resume is None else int(torch.load(resume, weights_only=False,
                                                                                map_location="cpu")["global_step"]))
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
    result = evaluation_of(cli.trainer).result
    robust = result.curve("robust")
    model = cli.model
    num_pairs = model.pairs.shape[1]
    return {
        "arm": arm, "seed": seed, "epochs": args.epochs, "lipschitz_size": args.lipschitz_size,
        "test": 100 * result.clean, **{f"robust@{r:g}": 100 * robust[r] for r in RADII},
        "sample_size": args.sample_size, "logged_lip": logged_lip,
        "pair_set_max": largest_quotient(model, model.pairs),
        "pair_set_max_refined": largest_quotient(model, refined_pairs(model, args.refine_steps)),
        "lip_lower": result.lipschitz.lower, "lam": float(model.lam),
        "train_minutes": sum(timer.times) / 60, "wall_minutes_this_invocation": wall / 60,
        "seconds_per_step": sum(timer.times) / max(steps, 1), "pairs_per_step": pairs_per_step(num_pairs, arm),
        "resumed": resume is not None, "checkpoint": result.checkpoint, "diverged": diverged,
        "settings": {key: value for key, value in args.set or []},
    }


def logged_at_best_epoch(run: dict) -> float:
    """The ``train/lip`` the run logged in the epoch of its tested (best) checkpoint, from TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    checkpoint = Path(run["checkpoint"])
    epoch = int(checkpoint.name.split("epoch=")[1].split("-")[0])
    values: dict[int, float] = {}
    for events in sorted(checkpoint.parents[1].glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags = accumulator.Tags()["scalars"]
        if "train/lip" in tags and "epoch" in tags:
            epoch_at_step = {event.step: int(event.value) for event in accumulator.Scalars("epoch")}
            for event in accumulator.Scalars("train/lip"):
                values[epoch_at_step.get(event.step, -1)] = event.value
    return values.get(epoch, float("nan"))


def summary(runs: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Per arm and figure: mean, standard deviation (0 for one seed), min, max and the number of seeds."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        if not mine:
            continue
        table[arm] = {}
        for figure in FIGURES:
            values = [r[figure] for r in mine]
            table[arm][figure] = {"mean": statistics.fmean(values),
                                  "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                                  "min": min(values), "max": max(values), "seeds": len(values)}
    return table


def markdown(table: dict[str, dict[str, dict[str, float]]]) -> str:
    headers = ["test", "robust ε=1", "robust ε=2", "logged max quotient", "whole-set max", "whole-set max refined",
               "train min", "s/step", "pairs/step"]
    lines = ["| arm | seeds | " + " | ".join(headers) + " |", "| --- | --- |" + " --- |" * len(headers)]
    for arm, figures in table.items():
        cells = []
        for figure in FIGURES:
            f = figures[figure]
            digits = 0 if figure == "pairs_per_step" else (2 if figure in ("seconds_per_step",) else 1)
            if figure.startswith(("logged", "pair_set")):
                digits = 3
            cells.append(f"{f['mean']:.{digits}f} ± {f['std']:.{digits}f}")
        lines.append(f"| {arm} | {figures['test']['seeds']} | " + " | ".join(cells) + " |")
    return ("\n".join(lines) + "\n\nMean ± standard deviation over seeds; accuracies in %; robust: the worst case "
            "over lipreg test's ensemble (L2) on the first sample_size test images.\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("mnist", "fmnist"), default="mnist")
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--out", type=Path, default=Path("results/active_pairs"))
    parser.add_argument("--arms", nargs="*", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's (MNIST 50, FMNIST 30)")
    parser.add_argument("--lipschitz-size", type=int, default=6000, help="held-out images in the pair set")
    parser.add_argument("--target", type=float, default=0.9, help="target training accuracy α")
    parser.add_argument("--lambda-step", type=float, default=0.05, help="dλ an epoch")
    parser.add_argument("--sample-size", type=int, default=1000, help="test images attacked")
    parser.add_argument("--refine-steps", type=int, default=20, help="ascent steps of the whole set at the end")
    parser.add_argument("--limit-batches", type=int, default=None, help="training batches per epoch (smoke runs)")
    parser.add_argument("--set", nargs=2, action="append", metavar=("KEY", "VALUE"), help="any lipreg fit option")
    parser.add_argument("--summary-only", action="store_true", help="only rebuild OUT/summary.* from the runs")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 50 if args.dataset == "mnist" else 30
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in [] if args.summary_only else args.seeds:
        for arm in args.arms:
            directory = args.out / arm_directory(arm) / f"seed{seed}"
            saved = directory / "run.json"
            if saved.exists():
                continue
            directory.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(run_arm(args.dataset, arm, seed, args, directory), indent=2))
    runs = [json.loads(p.read_text()) for p in sorted(args.out.glob("*/seed*/run.json"))]
    for run in runs:
        run["logged_lip_best"] = logged_at_best_epoch(run)
    table = summary(runs)
    (args.out / "summary.json").write_text(json.dumps({"runs": runs, "summary": table}, indent=2))
    publish(args.out / "summary.md", markdown(table))
    return table


if __name__ == "__main__":
    main()
