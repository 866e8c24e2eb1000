"""PGD cost against plain forward+backward passes, the robust-accuracy ensemble against the same
ensemble built from torchattacks, and the time of a full ``lipreg test`` on MNIST.

    python benchmarks/attacks.py --data-dir ../shared/datasets
    python benchmarks/attacks.py --data-dir ../shared/datasets --ensemble-checkpoint CKPT --skip-pgd --skip-test-run

1. PGD-L2 (ε = 2, α = 0.25, 100 steps, lipreg's ``pgd``) on the 10,000 MNIST test images with a
   784-200-80-10 ReLU network, in batches of 1,000, against 100 plain forward+backward passes
   (input gradient of the summed cross-entropy) over the same batches, taking turns for
   ``--repeats`` rounds; prints the median ratio and its range (target ≤ 1.2: the attack's
   projection and bookkeeping cost little beside the passes).
2. With ``--ensemble-checkpoint`` (a 784-64-64-10 MNIST checkpoint, e.g. CLIP90's): lipreg's
   worst-case ensemble (APGD-CE and APGD-T at 100 steps, Square at 5,000 queries, L2 ε = 2) against
   the same ensemble of torchattacks' ``APGD``, ``APGDT`` and ``Square``, each attack run only on
   the images still robust, on the same 10,000 test images in batches of 1,000, in turn for
   ``--ensemble-repeats`` rounds; prints both times, their ratio (target ≤ 0.7) and both robust
   accuracies.
3. The wall time of ``lipreg test`` with the default evaluation suite on a checkpoint of
   ``configs/mnist_standard.yaml`` trained for one epoch (trained first, not timed).
4. With ``--old-tree DIR`` (a git worktree of an earlier lipreg, e.g. ``git worktree add /tmp/old
   9b23389``) and ``--checkpoints CONFIG=CKPT …``: ``lipreg test`` with the defaults of each tree on
   each checkpoint, new and old in turn (one process each, the same threads), with the wall time,
   its ratio and each tree's robust accuracy per ε, the images attacked and certified accuracy::

       python benchmarks/attacks.py --skip-pgd --skip-test-run --old-tree /tmp/old \\
           --checkpoints configs/mnist_standard.yaml=CKPT [--test-args --evaluation.sample_size 1000]

   Each row also prints the **pass floor** of the new tree's test: the seconds that the forward and
   forward+backward passes alone take which no schedule can skip (per radius, each robust image
   that the certificate does not prove robust goes through APGD-CE's steps, at least one APGD-T
   run and Square's queries; each robust image through both PGD columns' steps), at the per-image
   cost of one pass over a batch of 1,000 measured in the same process (a Square query on an MLP:
   its affine stem's move by two 3 × 3 windows and the layers after it, Square's cheapest query);
   0.2× the old time below that floor cannot be reached without a smaller ensemble.

   A ``CONFIG`` given relative to the repository is each tree's own file of that name (where the old
   tree has it). ``--old-drop KEY …`` names hyperparameters of the checkpoints that the old tree's
   methods do not take (``input_noise``, CLIP's ``active_pairs``): the old tree then tests a copy of
   the checkpoint without them, the same weights. With ``--old-on-attacked`` the old tree attacks
   only as many images as the new test did (``--evaluation.sample_size`` set to them, the same first
   test images): for a new test that its time budget cut short, such as the default test of a CNN.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lipreg.cli import run
from lipreg.data import MNISTDataModule
from lipreg.evaluation import RobustnessResult
from lipreg.evaluation.registry import build_attack
from lipreg.functional import pgd
from lipreg.functional.ensemble import EnsembleBudget, robust_under_ensemble
from lipreg.functional.stem import affine_stem
from lipreg.methods.base import LipRegModule
from lipreg.nets import MLP
from lipreg.report.table import time_summary

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


Batches = list[tuple[torch.Tensor, torch.Tensor]]


def lipreg_ensemble(net: torch.nn.Module, batches: Batches, epsilon: float) -> tuple[float, float]:
    """Seconds and robust accuracy (%) of lipreg's ensemble: APGD-CE, APGD-T, Square, in turn."""
    start, robust = time.perf_counter(), 0
    budget, generator = EnsembleBudget(), torch.Generator().manual_seed(0)
    for x, y in batches:
        attacks = [(n, build_attack(n, net, epsilon, "l2", budget, generator=generator))
                   for n in ("apgd-ce", "apgd-t", "square")]
        robust += int(robust_under_ensemble(net, x, y, attacks)[0].sum())
    return time.perf_counter() - start, 100 * robust / sum(len(x) for x, _ in batches)


def torchattacks_ensemble(net: torch.nn.Module, batches: Batches, epsilon: float) -> tuple[float, float]:
    """The same protocol with torchattacks' APGD (CE), APGDT and Square at the same budgets."""
    import torchattacks  # the test extra's oracle, installed with --no-deps

    attacks = [torchattacks.APGD(net, norm="L2", eps=epsilon, steps=100, loss="ce", seed=0),
               torchattacks.APGDT(net, norm="L2", eps=epsilon, steps=100, n_classes=10, seed=0),
               torchattacks.Square(net, norm="L2", eps=epsilon, n_queries=5000, seed=0)]
    start, robust = time.perf_counter(), 0
    for x, y in batches:
        with torch.no_grad():
            still = net(x).argmax(1) == y
        for attack in attacks:
            index = still.nonzero().squeeze(1)
            if len(index) == 0:
                break
            adversarial = attack(x[index], y[index])
            with torch.no_grad():
                still[index[net(adversarial).argmax(1) != y[index]]] = False
        robust += int(still.sum())
    return time.perf_counter() - start, 100 * robust / sum(len(x) for x, _ in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="rounds in which both run once")
    parser.add_argument("--root", default="/tmp/lipreg-attack-benchmark")
    parser.add_argument("--skip-test-run", action="store_true", help="no full `lipreg test` run")
    parser.add_argument("--skip-pgd", action="store_true", help="no PGD ratio")
    parser.add_argument("--ensemble-checkpoint", default=None, help="a 784-64-64-10 MNIST checkpoint to attack")
    parser.add_argument("--ensemble-repeats", type=int, default=1, help="rounds in which both ensembles run once")
    parser.add_argument("--epsilon", type=float, default=2.0, help="L2 radius of the ensembles")
    parser.add_argument("--old-tree", type=Path, default=None, help="a worktree of an earlier lipreg to time against")
    parser.add_argument("--checkpoints", nargs="*", default=[], metavar="CONFIG=CKPT",
                        help="config and checkpoint pairs for the old-against-new lipreg test")
    parser.add_argument("--old-drop", nargs="*", default=[], metavar="KEY",
                        help="hyperparameters left out of the old tree's copy of each checkpoint")
    parser.add_argument("--old-on-attacked", action="store_true",
                        help="the old tree attacks only as many (first) test images as the new test attacked")
    parser.add_argument("--test-args", nargs=argparse.REMAINDER, default=[],
                        help="options for both trees' lipreg test (the rest of the command line)")
    args = parser.parse_args()
    if args.old_tree is not None:
        for pair in args.checkpoints:
            config, checkpoint = pair.split("=", 1)
            compare_test_runs(args, Path(config), Path(checkpoint).resolve())
        return

    data = MNISTDataModule(data_dir=args.data_dir)
    data.setup()
    x, y = data.splits.test
    batches = [(x[i : i + 1000], y[i : i + 1000]) for i in range(0, len(x), 1000)]
    if args.ensemble_checkpoint:
        compare_ensembles(args, batches)
    if not args.skip_pgd:
        compare_pgd(args, batches)
    if not args.skip_test_run:
        time_test_run(args)


def compare_ensembles(args: argparse.Namespace, batches: Batches) -> None:
    net = LipRegModule.load_from_checkpoint(args.ensemble_checkpoint, map_location="cpu").net.eval()
    rounds = []
    for _ in range(args.ensemble_repeats):  # in turn, so a slow spell of the machine hits both alike
        rounds.append((torchattacks_ensemble(net, batches, args.epsilon), lipreg_ensemble(net, batches, args.epsilon)))
    ratios = sorted(ours[0] / theirs[0] for theirs, ours in rounds)
    (theirs_time, theirs_robust), (ours_time, ours_robust) = rounds[len(rounds) // 2]
    images = sum(len(x) for x, _ in batches)
    print(f"\nrobust-accuracy ensemble, L2 ε = {args.epsilon:g}, {images} MNIST test images, "
          f"{torch.get_num_threads()} threads, {args.ensemble_repeats} round(s), {args.ensemble_checkpoint}")
    print(f"{'torchattacks APGD-CE+APGD-T+Square':<38}{theirs_time:>8.1f} s  1.00  robust {theirs_robust:.2f} %")
    print(f"{'lipreg APGD-CE+APGD-T+Square':<38}{ours_time:>8.1f} s  {statistics.median(ratios):.2f}  "
          f"robust {ours_robust:.2f} %  (ratio range {ratios[0]:.2f}–{ratios[-1]:.2f}; target ≤ 0.7)")


def compare_pgd(args: argparse.Namespace, batches: Batches) -> None:
    torch.manual_seed(0)
    net = MLP([784, 200, 80, 10]).eval()
    plain_passes(net, batches[:1], 5)  # warm-up
    # the two take turns, so a slow spell of a noisy machine hits both alike
    rounds = [(plain_passes(net, batches, args.steps), pgd_time(net, batches, args.steps)) for _ in range(args.repeats)]
    ratios = sorted(attack / plain for plain, attack in rounds)
    plain = statistics.median(plain for plain, _ in rounds)
    attack = statistics.median(attack for _, attack in rounds)
    print(f"\nMNIST test set ({sum(len(x) for x, _ in batches)} images), 784-200-80-10, {torch.get_num_threads()} "
          f"threads, {args.steps} steps, {args.repeats} rounds")
    print(f"{'plain forward+backward':<28}{plain:>8.2f} s  1.00")
    print(f"{'PGD-L2 (lipreg)':<28}{attack:>8.2f} s  {statistics.median(ratios):.2f}  "
          f"(range {ratios[0]:.2f}–{ratios[-1]:.2f})")


def time_test_run(args: argparse.Namespace) -> None:
    config = str(REPO / "configs" / "mnist_standard.yaml")
    common = ["--config", config, "--data.init_args.data_dir", args.data_dir, "--trainer.default_root_dir", args.root]
    fit = run(["fit", *common, "--trainer.max_epochs", "1"])
    checkpoint = fit.trainer.checkpoint_callback.best_model_path
    start = time.perf_counter()
    run(["test", *common, "--ckpt_path", checkpoint])
    print(f"\nfull `lipreg test` (default evaluation suite, 10,000 test images): {time.perf_counter() - start:.1f} s")


def timed_test(tree: Path, config: Path, checkpoint: Path, args: argparse.Namespace,
               extra: tuple[str, ...] = ()) -> tuple[float, dict]:
    """``python -m lipreg test`` of ``tree`` (its working directory first on the path) with ``args.test_args``
    and then ``extra``: seconds and result."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "lipreg", "test", "--config", str(config), "--ckpt_path", str(checkpoint),
                   "--data.init_args.data_dir", str(Path(args.data_dir).resolve()), "--trainer.logger", "false",
                   "--evaluation.output_dir", out, *args.test_args, *extra]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=tree, capture_output=True, text=True, env=os.environ)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"lipreg test in {tree} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return seconds, json.loads((Path(out) / "robustness.json").read_text())


def compare_test_runs(args: argparse.Namespace, config: Path, checkpoint: Path) -> None:
    """The default ``lipreg test`` of this tree against ``args.old_tree`` on one checkpoint."""
    old_tree = args.old_tree.resolve()
    own_config = old_tree / config if not config.is_absolute() and (old_tree / config).is_file() else config
    new_time, new = timed_test(REPO, config.resolve(), checkpoint, args)
    with tempfile.TemporaryDirectory() as copy:
        old_checkpoint = without_hyperparameters(checkpoint, args.old_drop, Path(copy))
        same_images = ("--evaluation.sample_size", str(new["attack_samples"])) if args.old_on_attacked else ()
        old_time, old = timed_test(old_tree, own_config.resolve(), old_checkpoint, args, same_images)
    print(f"\nlipreg test, defaults{' + ' + ' '.join(args.test_args) if args.test_args else ''}: {checkpoint}")
    if same_images:
        print(f"  the old tree with {' '.join(same_images)} (the images the new test attacked)")
    print(f"  {os.environ.get('OMP_NUM_THREADS', 'all')} threads; attacked images new {new['attack_samples']}, "
          f"old {old['attack_samples']} (of {new['samples']})")
    print(f"  new {new_time:8.1f} s   old {old_time:8.1f} s   ratio {new_time / old_time:.2f}")
    old_robust = dict(old["curves"].get("robust", []))
    for epsilon, value in new["curves"].get("robust", []):
        before = 100 * old_robust.get(epsilon, float("nan"))
        print(f"  robust ε={epsilon:g}: new {100 * value:.2f} %  old {before:.2f} %")
    for radius, value in new.get("certified", []):
        old_value = dict(old.get("certified", [])).get(radius)
        print(f"  certified ε={radius:g}: new {100 * value:.2f} %" + (
            "" if old_value is None else f"  old {100 * old_value:.2f} %"))
    if new.get("mean_certified_radius") is not None:
        print(f"  mean certified radius (new): {new['mean_certified_radius']:.4g}")
    if new.get("seconds"):
        print(f"  where the new test's time went: {time_summary(RobustnessResult.from_dict(new))}")
    floor = pass_floor(checkpoint, new)
    print(f"  pass floor of the new test: {floor:.1f} s (the new test takes {new_time / floor:.1f}× it; "
          f"0.2× the old time is {0.2 * old_time:.1f} s)")


def without_hyperparameters(checkpoint: Path, keys: list[str], folder: Path) -> Path:
    """``checkpoint``, or where ``keys`` name some of its hyperparameters a copy in ``folder`` without them."""
    if not keys:
        return checkpoint
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    for key in keys:
        state["hyper_parameters"].pop(key, None)
    copy = folder / checkpoint.name
    torch.save(state, copy)
    return copy


def pass_seconds(net: torch.nn.Module, shape: tuple[int, ...] = (1, 28, 28), batch: int = 1000,
                 repeats: int = 20) -> tuple[float, float]:
    """Seconds per image of Square's cheapest query and of one forward+backward pass (input gradient).

    A query is a forward pass; on a network with an affine stem (an MLP:
    ``lipreg.functional.stem.affine_stem``) it is the stem's move by two 3 × 3 windows (Square's
    smallest, those of most of its queries) and the layers after the stem."""
    x = torch.rand(batch, *shape)
    stem = affine_stem(net, x)
    with torch.no_grad():
        if stem is None:
            def query() -> torch.Tensor:
                return net(x)
        else:
            hidden = stem.pre_activation(x)
            indices, changes = torch.randint(0, x[0].numel(), (batch, 18)), torch.rand(batch, 18)

            def query() -> torch.Tensor:
                return stem.tail(stem.moved(hidden, indices, changes))
        query()
        start = time.perf_counter()
        for _ in range(repeats):
            query()
        query_seconds = (time.perf_counter() - start) / (repeats * batch)
    start = time.perf_counter()
    for _ in range(repeats):
        x_in = x.detach().requires_grad_(True)
        torch.autograd.grad(net(x_in).logsumexp(dim=1).sum(), x_in)
    return query_seconds, (time.perf_counter() - start) / (repeats * batch)


def pass_floor(checkpoint: Path, result: dict) -> float:
    """A lower bound on the pass time of a ``lipreg test`` result on ``checkpoint`` (its network's passes timed)."""
    net = LipRegModule.load_from_checkpoint(checkpoint, map_location="cpu").net.eval()
    return floor_seconds(result, *pass_seconds(net))


def floor_seconds(result: dict, query: float, backward: float) -> float:
    """The pass floor of a ``robustness.json`` at ``query`` seconds per image and Square query
    (:func:`pass_seconds`) and ``backward`` per image and forward+backward pass.

    Per ε: ``R`` robust images, ``C`` an upper bound of those certified at ε (the certified accuracy
    at the largest certified radius ≤ ε; ``C = R`` with none ≤ ε, ``C = 0`` without a certificate):
    ``(R − C)·(apgd_steps·2·t_fb + queries·t_q) + R·k·pgd_steps·t_fb`` for the ``k`` PGD columns it has."""
    settings, attacked = result["settings"], result["attack_samples"]
    certified = sorted((radius, value) for radius, value in result.get("certified", []))
    columns = sum(1 for curve in ("pgd", "pgd_sign") if result["curves"].get(curve))
    seconds = 0.0
    for epsilon, value in result["curves"].get("robust", []):
        robust = value * attacked
        below = [share for radius, share in certified if radius <= epsilon]
        if not certified:
            uncertified = robust  # no certificate: every robust image is attacked
        else:
            uncertified = robust - min(robust, below[-1] * attacked) if below else 0.0
        seconds += uncertified * (2 * settings["apgd_steps"] * backward + settings["square_queries"] * query)
        seconds += robust * columns * settings["pgd_steps"] * backward
    return seconds


if __name__ == "__main__":
    main()
