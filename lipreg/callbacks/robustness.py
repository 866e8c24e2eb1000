"""Robustness evaluation at test time: the callback behind ``lipreg test`` over ``lipreg.evaluation``."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from lipreg.callbacks.attack_support import require_gradients
from lipreg.callbacks.figure_logging import log_figure
from lipreg.errors import LipregError
from lipreg.evaluation import (
    EvaluationPlan,
    EvaluationProgress,
    EvaluationSuite,
    ImageSchedule,
    RobustnessResult,
    ScoreAccumulator,
    lower_bound,
    split_scores,
    upper_bound,
)
from lipreg.evaluation.result import LipschitzEstimates
from lipreg.functional.attacks import Norm
from lipreg.functional.progress import reporting
from lipreg.methods.base import LipRegModule, epoch_mean
from lipreg.report import RESULT_FILE, publish_interrupted, publish_result, robustness_figure
from lipreg.stopping import is_interrupt, stop_if_requested


class RobustnessEvaluation(L.Callback):
    """Everything ``lipreg test`` reports besides clean accuracy (CLIP paper Table 1, FLIP slides Figs. 13–15).

    First, at each of ``pgd_epsilons`` (norm ``pgd_norm``), the **robust accuracy**: the share of
    samples classified correctly that every attack fails on — the PGD columns below at that ε and
    then the ``ensemble`` (run in turn on the samples still robust; Croce & Hein, 2020). For
    regression it is the worst-case MSE: per sample the largest squared error over PGD and APGD.

    Then, on the first ``sample_size`` test samples (all when ``None``): accuracy (regression: MSE)
    under Gaussian noise for each σ (clamped to the input range unless ``noise_clamp`` is false),
    FGSM for each ε, PGD for each ε (``pgd_steps`` steps of size ``pgd_step_size``,
    normalised-gradient steps for L2) and, with ``sign_pgd``, the CLIP paper's
    eq. (13) variant (sign steps, L2-ball projection). Then the Lipschitz lower bound (adaptive pair
    ascent from ``lipschitz_pairs`` test points and noisy copies), the layer-product upper bound
    (every factor a proven bound: exact SVD norms of ``Linear`` layers, the DFT bound of each
    convolution), and, per image, the **certified radius** ``min_{j≠y} (f_y − f_j) / B[y, j]`` with
    ``B[y, j]`` a bound of the class pair's logit difference (``class_pair_bounds``): certified
    accuracy at each of ``certified_radii`` and the mean certified radius. With ``train_accuracy``
    the accuracy on the training split is reported too (the paper's "Train" column).

    Work goes only where it can change the answer (classification): every attack stops on an image
    at its first adversarial iterate and keeps it, so an image counts as broken if any step broke
    it; the radii run from small to large and each attacks only the images still robust at the
    radius below (an adversarial inside the smaller ball lies inside the larger one; Square, which
    closes the ensemble, runs once over every radius on what APGD left at each); images a
    certificate proves robust at ε are not attacked at ε, and APGD-T skips the rival classes it
    rules out. Every accuracy from the attacked sample carries a 95 % Wilson interval
    (``intervals`` in the JSON); where one is wider than ±1 point the test says how many images
    ±1 point needs, and the ``sample_size`` or ``time_budget`` that attacks them.
    A progress line comes at the start and then at least every ``progress_every`` seconds, inside
    long attacks too: the stage (attack, ε), images done and the time left. The result records
    where the time went (``seconds``: per attack over every ε, the clean pass and certificate of
    each chunk, the bounds), printed as a ``time:`` line under the table.

    Results are logged (``test/pgd_acc@2`` …), printed as a table, and written as
    ``robustness.json``, ``.csv`` and ``.png`` (curves against ε) into ``output_dir`` (default: the
    run's log directory); the curves also go to TensorBoard. All metrics are reduced over processes;
    only rank 0 writes files. A test stopped before the end (Ctrl-C, SIGTERM, an error) leaves an
    ``INCOMPLETE`` file in that folder instead, and says so in one line; in one process the chunks
    it finished go to ``robustness.partial.json``.

    The callback only schedules, accumulates and publishes: the plan (``lipreg.evaluation.EvaluationPlan``)
    holds the options, ``EvaluationSuite`` scores each chunk of images, ``ScoreAccumulator`` sums the
    chunks over the epoch and the processes, and the result is a ``RobustnessResult`` (``self.result``).

    Args:
        ensemble: the attacks behind the robust accuracy besides the PGD columns, in the order they
            run: ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``square``, ``pgd-margin`` (classification;
            regression always uses APGD on the squared error). Empty: the PGD columns alone.
        apgd_steps: steps of every APGD run.
        apgd_targets: rival classes APGD-T attacks in turn (the top ones by clean logit).
        square_queries: queries of the Square attack per image.
        certificate: how certified radii are proven: ``class-pair`` (the margins to each rival class
            over that pair's proven logit-difference bound; a deterministic certificate of the network) or
            ``smoothing`` (randomized smoothing, Cohen et al. 2019: CERTIFY with ``smoothing_selection``
            = n₀ and ``smoothing_samples`` = n noisy copies of std ``smoothing_sigma``, failure
            probability ``smoothing_alpha`` per image; a probabilistic certificate of the smoothed
            classifier, for any network, labelled so in the table).
        smoothing_sigma: the noise std σ of the smoothing certificate.
        smoothing_selection: n₀, the noisy copies that choose the smoothed prediction.
        smoothing_samples: n, the noisy copies that bound its probability (the largest radius it can
            certify is σ·Φ⁻¹(α^{1/n})).
        smoothing_alpha: α, the failure probability per image.
        progress_every: seconds between progress lines (0: none).
        time_budget: minutes the evaluation may take (null: no limit). The first ``sample_size``
            test images (all when null) are attacked in turn, in chunks gathered over test batches
            (each about a quarter of the budget at the measured pace), until the next chunk would
            not fit into 80 % of the budget; the table and the JSON say how many were, with the 95 %
            intervals that gives. The Lipschitz lower bound's ascent stops when the whole budget is
            spent (it is a bound after any step). Images a certificate already proves robust at ε
            are not attacked at ε.
    """

    #: read by ``TestProgress``: only the first ``sample_size`` test images are attacked
    attacks_test_images = True

    def __init__(
        self,
        noise_sigmas: list[float] = [0.25, 0.5, 1.0],  # noqa: B006  (jsonargparse shows list defaults)
        noise_clamp: bool = True,
        fgsm_epsilons: list[float] = [0.05, 0.1, 0.2, 0.3],  # noqa: B006
        fgsm_norm: Norm = "linf",
        pgd_epsilons: list[float] = [0.5, 1.0, 1.5, 2.0],  # noqa: B006
        pgd_norm: Norm = "l2",
        pgd_steps: int = 100,
        pgd_step_size: float = 0.25,
        pgd_restarts: int = 1,
        sign_pgd: bool = True,
        ensemble: list[str] = ["apgd-ce", "apgd-t", "square"],  # noqa: B006
        apgd_steps: int = 100,
        apgd_targets: int = 9,
        square_queries: int = 5000,
        certificate: str = "class-pair",
        certified_radii: list[float] = [0.1, 0.3, 0.5, 1.0, 1.58, 2.0],  # noqa: B006
        smoothing_sigma: float = 0.25,
        smoothing_selection: int = 100,
        smoothing_samples: int = 1000,
        smoothing_alpha: float = 0.001,
        lipschitz_pairs: int = 1000,
        lipschitz_steps: int = 50,
        train_accuracy: bool = True,
        sample_size: int | None = None,
        seed: int = 0,
        output_dir: str | None = None,
        progress_every: float = 30.0,
        time_budget: float | None = 15.0,
    ) -> None:
        self.plan = EvaluationPlan(noise_sigmas, noise_clamp, fgsm_epsilons, fgsm_norm, pgd_epsilons, pgd_norm,
                                   pgd_steps, pgd_step_size, pgd_restarts, sign_pgd, list(ensemble), apgd_steps,
                                   apgd_targets, square_queries, certificate, list(certified_radii),
                                   smoothing_sigma, smoothing_selection, smoothing_samples, smoothing_alpha, seed)
        if lipschitz_pairs < 1 or lipschitz_steps < 0:
            raise LipregError(f"need lipschitz_pairs >= 1 and lipschitz_steps >= 0; got {lipschitz_pairs}, "
                              f"{lipschitz_steps}")
        if sample_size is not None and sample_size < 1:
            raise LipregError(f"evaluation.sample_size must be >= 1, got {sample_size}")
        if time_budget is not None and time_budget <= 0:
            raise LipregError(f"evaluation.time_budget must be > 0 minutes (or null: no limit), got {time_budget}")
        self.lipschitz_pairs, self.lipschitz_steps = lipschitz_pairs, lipschitz_steps
        self.train_accuracy, self.sample_size, self.seed = train_accuracy, sample_size, seed
        self.output_dir, self.progress_every, self.time_budget = output_dir, progress_every, time_budget
        self.result: RobustnessResult | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, LipRegModule):
            raise LipregError(f"RobustnessEvaluation works with lipreg methods, not {type(pl_module).__name__}")
        require_gradients(self, "testing")
        task, shape = pl_module.task_spec, getattr(trainer.datamodule, "input_shape", None)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed + trainer.global_rank)
        self.suite = suite = EvaluationSuite.for_network(self.plan, pl_module.net, task, shape, pl_module.input_box,
                                                         generator)
        self.upper = upper_bound(pl_module.net, shape)
        self.described = self.plan.describe_ensemble(task, suite.image_inputs)
        self.scores = ScoreAccumulator(self.plan, task, self.plan.members(task, suite.image_inputs),
                                       suite.certifier is not None, pl_module.device, suite.prunes_rivals)
        self.schedule = ImageSchedule(self.sample_size, trainer.global_rank, trainer.world_size, self.time_budget)
        work = self.plan.stage_work(task, suite.image_inputs, certified=suite.certifier is not None)
        self.progress = EvaluationProgress(self._attacked_images(trainer), work, self.progress_every,
                                           enabled=trainer.is_global_zero, budget_minutes=self.time_budget)
        suite.stage = self.progress.stage
        self.progress.start(self.described)

    def _attacked_images(self, trainer: L.Trainer) -> int | None:
        """How many test images the evaluation attacks (for the progress line; ``None``: unknown)."""
        splits = getattr(trainer.datamodule, "splits", None)
        total = None if splits is None else len(splits.test[0])
        batches = sum(trainer.num_test_batches) if trainer.num_test_batches else None
        eval_batch = getattr(trainer.datamodule, "eval_batch_size", None)
        if total is not None and batches is not None and eval_batch:  # limit_test_batches
            total = min(total, int(batches) * eval_batch)
        return total if self.sample_size is None or total is None else min(self.sample_size, total)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.scores.count_test_samples(len(x), x.device)
        self._attack(self.schedule.chunks(x, y))

    def _attack(self, chunks: Iterator[tuple[Tensor, Tensor]]) -> None:
        for x_chunk, y_chunk in chunks:
            self.progress.begin_batch(len(x_chunk))
            with reporting(self._heartbeat):
                self.scores.add(self.suite.score(x_chunk, y_chunk))
            self.progress.end_batch()

    def _heartbeat(self) -> None:
        """Every attack step: a SIGTERM's stop is taken here (``lipreg.stopping``), then the progress line."""
        stop_if_requested()
        self.progress.step()

    def build_result(self, trainer: L.Trainer, module: LipRegModule, finished: bool = True) -> RobustnessResult:
        """The result of the chunks done; ``finished=False`` (an interrupted test) leaves out the
        Lipschitz lower bound and the training accuracy, which need passes of their own."""
        scores, splits = self.scores, getattr(trainer.datamodule, "splits", None)
        train = lower = None
        if finished and splits is not None:
            if self.train_accuracy:
                with self.progress.timed("train split"):
                    train_scores = epoch_mean().to(module.device)
                    train_scores.update(split_scores(module.net, module.task_spec, *splits.train,
                                                     trainer.global_rank, trainer.world_size))
                    train = float(train_scores.compute())
            with self.progress.timed("lipschitz lower bound"):
                lower = lower_bound(module.net, splits.test[0][: self.lipschitz_pairs].to(module.device),
                                    module.input_box, self.lipschitz_steps, self.seed, self.schedule.spent)
        certified, mean_radius = scores.certified_computed()
        return RobustnessResult(
            method=type(module).__name__, task=module.task, metric=module.task_spec.metric,
            checkpoint=trainer.ckpt_path, samples=int(scores.test_samples.compute()),
            attack_samples=int(scores.attacked.compute()), clean=float(module.metrics["test_score"].compute()),
            clean_subset=float(scores.clean_subset.compute()), train=train, curves=scores.curves_computed(),
            ensemble=scores.ensemble_record(self.described), lipschitz=LipschitzEstimates(lower, self.upper),
            certified=certified, mean_certified_radius=mean_radius,
            coefficient={module.coefficient_name: float(module.lam)} if module.is_regularised else {},
            settings=self.plan.settings(), time_budget_minutes=self.time_budget if self.schedule.reached else None,
            seconds={kind: round(seconds, 3) for kind, seconds in self.progress.seconds.items()},
            incomplete=not finished)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._attack(self.schedule.rest())  # the images still waiting for a chunk to fill
        self.result = result = self.build_result(trainer, pl_module)
        short = pl_module.task_spec.short
        logged = {f"test/{curve}_{short}@{parameter:g}": value
                  for curve, points in result.curves.items() for parameter, value in points}
        logged |= {f"test/certified_acc@{radius:g}": value for radius, value in result.certified}
        extras = {"test/lip_lower": result.lipschitz.lower, "test/lip_upper": result.lipschitz.upper,
                  "test/mean_certified_radius": result.mean_certified_radius, f"test/train_{short}": result.train}
        logged |= {key: value for key, value in extras.items() if value is not None}
        pl_module.log_dict(logged, sync_dist=True)
        directory = Path(self.output_dir or trainer.log_dir or "robustness")  # log_dir: a collective under DDP
        if trainer.is_global_zero:
            print(publish_result(result, directory), flush=True)
            log_figure(trainer, "test/robustness", lambda: robustness_figure([result]))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """An interrupted ``lipreg test`` leaves its folder marked ``INCOMPLETE`` and keeps what was
        finished: in one process, the chunks done go to ``robustness.partial.json`` (and the table)."""
        if not trainer.testing or not trainer.is_global_zero:
            return
        log_dir = trainer.loggers[0].log_dir if trainer.loggers else None  # no collective: the others may be gone
        directory = Path(self.output_dir or log_dir or "robustness")
        if not directory.is_dir() or (directory / RESULT_FILE).is_file():
            return
        reason = "interrupted" if is_interrupt(exception) else f"stopped by {type(exception).__name__}"
        scores = getattr(self, "scores", None)
        finished_any = trainer.world_size == 1 and scores is not None and scores.any_attacked
        partial = self.build_result(trainer, pl_module, finished=False) if finished_any else None
        print(publish_interrupted(partial, directory, reason), flush=True)
