"""``lipreg test`` works only where the answer can change, says how sure it is, and certifies soundly."""

import json
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from lipreg.callbacks import RobustnessEvaluation
from lipreg.data.base import InMemoryDataModule, Splits
from lipreg.errors import LipregError
from lipreg.evaluation import (
    CERTIFICATES,
    EvaluationPlan,
    EvaluationProgress,
    EvaluationSuite,
    ImageSchedule,
    RobustnessResult,
    wilson_interval,
)
from lipreg.evaluation.registry import Work
from lipreg.functional import lipschitz_lower_bound, lipschitz_upper_bound, logit_margin, noisy_pairs, pgd
from lipreg.functional.apgd import apgd, apgd_targeted
from lipreg.functional.bounds import certified_radius, class_pair_bounds, l2_reach, rival_radii
from lipreg.functional.losses import margin_loss, misclassified, targeted_dlr_loss
from lipreg.functional.progress import reporting
from lipreg.functional.smoothing import smoothed_certify
from lipreg.functional.square import square
from lipreg.methods import Standard
from lipreg.nets import MLP
from lipreg.report import INCOMPLETE_MARKER, PARTIAL_RESULT_FILE, format_table
from lipreg.report.table import time_summary
from lipreg.task import CLASSIFICATION

from .helpers import BlobsDataModule, CountingNet, quiet_trainer


class TinyImages(InMemoryDataModule):
    """Three classes of 1×8×8 images: a bright blob in one of three places, plus noise."""

    task = "classification"
    num_outputs = 3
    input_shape = (1, 8, 8)
    input_box = (0.0, 1.0)

    def __init__(self, per_class: int = 60) -> None:
        super().__init__(batch_size=32, eval_batch_size=64, seed=0, on_device=False)
        self.per_class = per_class

    def load_splits(self) -> Splits:
        generator = torch.Generator().manual_seed(0)
        y = torch.arange(3).repeat_interleave(self.per_class)
        x = 0.3 * torch.rand(len(y), 1, 8, 8, generator=generator)
        for label, (row, col) in enumerate([(1, 1), (1, 5), (5, 3)]):
            x[y == label, :, row : row + 2, col : col + 2] += 0.6
        x = x.clamp(0, 1)
        order = torch.randperm(len(y), generator=generator)
        x, y = x[order], y[order]
        half = len(y) // 2
        return Splits(train=(x[:half], y[:half]), val=(x[half:], y[half:]), test=(x[half:], y[half:]))


def small_cnn() -> nn.Module:
    net = nn.Module()
    net.layers = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                               nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    net.forward = net.layers.forward
    return net


def trained(net: nn.Module, data: InMemoryDataModule, epochs: int) -> nn.Module:
    module = Standard(net, optimizer=lambda p: torch.optim.Adam(p, lr=0.02))
    quiet_trainer(max_epochs=epochs).fit(module, data)
    return module.net.eval()


def test_a_linear_classifier_is_certified_exactly_to_its_decision_boundary():
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(5, 4))
    x = torch.randn(32, 5)
    with torch.no_grad():
        logits = layers(x)
    y = logits.argmax(dim=1)
    radius = certified_radius(logits, y, class_pair_bounds(layers, (5,)))
    # the exact distance to the nearest rival's boundary of an affine classifier
    w = layers[0].weight.double()
    gaps = (logits.double().gather(1, y[:, None]) - logits.double())
    norms = (w[y][:, None, :] - w[None, :, :]).norm(dim=2)
    exact = torch.where(norms > 0, gaps / norms, torch.inf).scatter(1, y[:, None], torch.inf).amin(dim=1)
    assert torch.allclose(radius, exact)
    # and just beyond it an attack succeeds: the certificate is tight here
    adversarial = pgd(layers, x, y, 1.001 * radius.max().item(), 0.05, 200, norm="l2", loss_fn=margin_loss, box=None)
    assert misclassified(layers(adversarial), y).any()


def test_the_class_pair_radius_is_never_below_the_global_certificate():
    torch.manual_seed(0)
    net = MLP([2, 32, 32, 3], activation="relu")
    trained(net, BlobsDataModule(), epochs=3)
    data = BlobsDataModule()
    data.setup()
    x, y = data.splits.test
    with torch.no_grad():
        logits = net(x)
    radius = certified_radius(logits, y, class_pair_bounds(net.layers, (2,)))
    global_radius = (logit_margin(logits, y) / (2**0.5 * lipschitz_upper_bound(net.layers, (2,)))).clamp_min(0)
    assert (radius >= global_radius.double() - 1e-9).all()
    assert (radius > global_radius.double() * 1.01).any()  # and strictly tighter somewhere


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_no_attack_of_the_ensemble_succeeds_inside_a_certified_radius(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        data, shape, net = BlobsDataModule(), (2,), MLP([2, 32, 32, 3], activation="relu")
        box = None
    else:
        data, shape, net = TinyImages(), (1, 8, 8), small_cnn()
        box = (0.0, 1.0)
    net = trained(net, data, epochs=8)
    data.setup()
    x, y = data.splits.test
    with torch.no_grad():
        radius = certified_radius(net(x), y, class_pair_bounds(net.layers, shape))
    assert (radius > 0).float().mean() > 0.3  # the networks certify a good share of the points
    generator = torch.Generator().manual_seed(0)
    for quantile in (0.5, 0.8, 0.95):
        epsilon = torch.quantile(radius[radius > 0], quantile).item()
        inside = radius > epsilon  # certified at ε: every attack at ε must fail on these
        xs, ys = x[inside], y[inside]
        attacks = [
            pgd(net, xs, ys, epsilon, epsilon / 4, 50, norm="l2", loss_fn=margin_loss, box=box, restarts=3,
                random_start=True, generator=generator),
            apgd(net, xs, ys, epsilon, "l2", 50, box=box, generator=generator),
            apgd_targeted(net, xs, ys, epsilon, "l2", 50, targets=2, box=box, generator=generator),
        ]
        if kind == "cnn":
            attacks.append(square(net, xs, ys, epsilon, "l2", queries=300, box=box, generator=generator))
        for adversarial in attacks:
            assert ((adversarial - xs).flatten(1).norm(dim=1) <= epsilon + 1e-5).all()
            with torch.no_grad():
                assert not misclassified(net(adversarial), ys).any()


def test_apgd_t_skips_only_rivals_that_cannot_win_and_breaks_the_same_images():
    torch.manual_seed(0)
    net = trained(MLP([2, 32, 32, 3], activation="relu"), BlobsDataModule(), epochs=3)
    data = BlobsDataModule()
    data.setup()
    x, y = data.splits.test
    bounds = class_pair_bounds(net.layers, (2,))
    with torch.no_grad():
        logits = net(x)
    radii = rival_radii(logits, y, bounds)
    assert torch.equal(radii.amin(dim=1).clamp_min(0), certified_radius(logits, y, bounds))
    epsilon = torch.quantile(radii[radii.isfinite()], 0.5).item()
    # sound per rival: no targeted run makes a class win that its radius rules out
    for target in range(3):
        closed = (radii[:, target] > epsilon) & (y != target)
        rival = torch.full_like(y[closed], target)
        adversarial = apgd(net, x[closed], y[closed], epsilon, "l2", 50, targeted_dlr_loss, rival, None, box=None,
                           generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert not (net(adversarial).argmax(dim=1) == target).any()
    counted = CountingNet(net)
    broken, rows = {False: 0, True: 0}, {False: 0, True: 0}
    for seed in range(3):
        for pruned in (False, True):
            counted.samples = 0
            reachable = (lambda lo, la: rival_radii(lo, la, bounds) <= epsilon) if pruned else None
            adversarial = apgd_targeted(counted, x, y, epsilon, "l2", 50, targets=2, box=None,
                                        generator=torch.Generator().manual_seed(seed), reachable=reachable)
            with torch.no_grad():
                broken[pruned] += int(misclassified(net(adversarial), y).sum())
            rows[pruned] += counted.samples
    # as strong (the random starts differ with the batches attacked, so counts may differ by an image
    # or two either way), for less work
    assert broken[False] > 10 and broken[True] >= broken[False] - 2, broken
    assert rows[True] < 0.8 * rows[False], rows


def test_an_l2_certificate_spares_an_linf_attack_only_beyond_the_l2_radius_of_its_ball():
    assert l2_reach(0.5, "l2", 784) == 0.5 and l2_reach(0.1, "linf", 784) == pytest.approx(2.8)
    torch.manual_seed(0)
    net = MLP([4, 3])
    x = torch.rand(64, 4)
    with torch.no_grad():
        y = net(x).argmax(dim=1)
    plan = EvaluationPlan(noise_sigmas=[], fgsm_epsilons=[], pgd_epsilons=[0.05], pgd_norm="linf", pgd_steps=5,
                          apgd_steps=5, ensemble=["apgd-ce"], certified_radii=[0.05], sign_pgd=False)
    certifier = CERTIFICATES["class-pair"].prepare(net, (4,), plan)
    radius = certifier(x, y, net(x))
    between = (radius > 0.05) & (radius <= 0.1)  # certified in L2 at ε, not for the L∞ ball (L2 radius 0.1)
    assert between.any()
    attacked = []
    suite = EvaluationSuite(plan, net, CLASSIFICATION, None, certifier, image_inputs=False,
                            generator=torch.Generator().manual_seed(0))
    suite.stage = lambda name: None
    original = suite.members

    def members(epsilon: float, xs: torch.Tensor) -> list:
        return [(name, lambda a, b, run=run: (attacked.append(a), run(a, b))[1]) for name, run in original(epsilon, xs)]

    suite.members = members
    scores = suite.score(x, y)
    seen = torch.cat(attacked) if attacked else x[:0]
    survived_pgd = scores.curves[("pgd", 0.05)].bool()
    assert (between & survived_pgd).any()
    for row in x[between & survived_pgd]:
        assert (seen == row).all(dim=1).any()  # every such image that PGD left is attacked by the ensemble


def test_wilson_intervals_match_the_textbook_values():
    assert wilson_interval(0.5, 10_000) == pytest.approx((0.49020, 0.50980), abs=1e-5)
    low, high = wilson_interval(0.0, 10)
    assert low == 0.0 and high == pytest.approx(0.27753, abs=1e-5)
    assert wilson_interval(1.0, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0.9, 100) == pytest.approx((0.8256, 0.9448), abs=1e-4)
    assert wilson_interval(0.3, 0) == (0.0, 1.0)


def evaluation(kind: type[RobustnessEvaluation] = RobustnessEvaluation, **overrides) -> RobustnessEvaluation:
    settings = dict(noise_sigmas=[], fgsm_epsilons=[], pgd_epsilons=[0.3, 0.1, 0.6], pgd_steps=10, pgd_step_size=0.05,
                    certified_radii=[0.05, 0.1], lipschitz_pairs=20, lipschitz_steps=2, square_queries=50,
                    apgd_steps=10, apgd_targets=2, train_accuracy=False)
    settings.update(overrides)
    return kind(**settings)


def test_radii_from_small_to_large_and_early_stops_never_raise_robust_accuracy(tmp_path: Path,
                                                                                capsys: pytest.CaptureFixture):
    """The evaluation's robust accuracy against attacking every radius from scratch, full length."""
    torch.manual_seed(0)
    data = TinyImages()
    net = trained(small_cnn(), data, epochs=6)
    suite = evaluation(output_dir=str(tmp_path))
    quiet_trainer(callbacks=[suite]).test(Standard(net), data)
    result = suite.result
    robust = result.curve("robust")
    assert [e for e, _ in result.curves["robust"]] == [0.3, 0.1, 0.6]  # reported in the user's order
    assert robust[0.1] >= robust[0.3] >= robust[0.6]
    x, y = data.splits.test
    for epsilon in (0.1, 0.3, 0.6):  # every attack from scratch on every image, to its last step
        broken = misclassified(net(x), y)
        for step_kind in ("steepest", "sign"):
            adversarial = pgd(net, x, y, epsilon, 0.05, 10, "l2", step_kind)
            broken |= misclassified(net(adversarial), y)
        assert robust[epsilon] <= 1 - broken.float().mean().item() + 1e-9
    broken_by = result.ensemble.broken_by
    assert "smaller ε" not in broken_by["0.1"] and "smaller ε" in broken_by["0.3"]
    for epsilon, counts in broken_by.items():  # every image is accounted for once
        attacked = result.attack_samples
        assert attacked - sum(counts.values()) == round(robust[float(epsilon)] * attacked)
    low, high = result.intervals.curves[("robust", 0.3)]
    assert low <= robust[0.3] <= high and high - low > 0
    assert result.mean_certified_radius > 0
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert saved["intervals"] == json.loads(json.dumps(result.intervals.to_dict()))
    assert RobustnessResult.from_dict(saved) == result  # the JSON round trip
    assert "95 % Wilson intervals" in format_table([result]) and "mean certified radius" in format_table([result])
    stages = {"clean", "certificate", "pgd", "pgd_sign", "apgd-ce", "apgd-t", "square", "lipschitz lower bound"}
    assert set(result.seconds) == stages and all(seconds >= 0 for seconds in result.seconds.values())
    assert all(result.seconds[kind] > 0 for kind in ("pgd", "apgd-t", "square"))  # the clean pass and the
    # class-pair certificate take microseconds, which a coarse clock can read as 0
    assert "time: " in capsys.readouterr().out  # where the time went, under the table


def test_progress_lines_name_the_stage_images_done_and_time_left(capsys: pytest.CaptureFixture):
    torch.manual_seed(0)
    data = TinyImages()
    net = trained(small_cnn(), data, epochs=2)
    quiet_trainer(callbacks=[evaluation(progress_every=1e-6)]).test(Standard(net), data)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("lipreg test:")]
    assert lines[0].startswith("lipreg test: attacking 90 test images (or as many as fit in 15.0 min) with PGD-L2")
    inside = [line for line in lines if " on 32 images" in line]  # the first chunk: 32 images, to time them
    assert any("apgd-t ε=0.6 on 32 images" in line for line in inside)
    assert any("pgd_sign ε=0.3 on 32 images" in line for line in inside)
    assert any("32 of 90 images done" in line and "left" in line for line in lines)
    assert any("on 58 images" in line for line in lines)  # the other two batches wait and go as one chunk


def test_progress_extrapolates_from_the_stages_done():
    lines: list[str] = []
    progress = EvaluationProgress(1000, ["a", "b", "c", "d"], every=1e-9, write=lines.append)
    progress.start(["PGD"])
    progress.begin_batch(500)
    progress.stage("c")
    assert progress.fraction() == pytest.approx(0.25)
    progress.end_batch()
    assert progress.fraction() == pytest.approx(0.5)
    assert "500 of 1,000 images done" in lines[-1]


def test_progress_times_each_attack_over_its_radii_and_what_it_is_told_to(monkeypatch: pytest.MonkeyPatch):
    now = [0.0]
    monkeypatch.setattr("lipreg.evaluation.progress.time.monotonic", lambda: now[0])
    progress = EvaluationProgress(10, ["pgd ε=1", "apgd-t ε=1", "pgd ε=2"], every=0)

    def at(moment: float, step: str, *args: str) -> None:
        now[0] = moment
        getattr(progress, step)(*args)

    at(1.0, "begin_batch", 10)  # the clean pass and the certificate until the first stage
    at(3.0, "stage", "pgd ε=1")
    at(4.0, "stage", "apgd-t ε=1")
    at(8.0, "stage", "pgd ε=2")
    at(9.0, "end_batch")
    now[0] = 19.0
    with progress.timed("lipschitz lower bound"):
        now[0] = 20.0
    at(20.5, "begin_batch", 0)
    at(30.0, "end_batch")
    assert progress.seconds == {"clean": 2.0 + 9.5, "pgd": 1.0 + 1.0, "apgd-t": 4.0,
                                "lipschitz lower bound": 1.0}
    result = RobustnessResult(method="Standard", task="classification", metric="accuracy", checkpoint=None,
                              samples=10, attack_samples=10, clean=1.0, clean_subset=1.0,
                              seconds={**progress.seconds, "noise": 0.01, "fgsm": 0.02})
    assert time_summary(result) == ("time: 19 s in all: clean 12 s (62%), apgd-t 4 s (22%), "
                                    "pgd 2 s (11%), lipschitz lower bound 1 s (5%), the rest 0 s")
    assert RobustnessResult.from_dict(json.loads(json.dumps(result.to_dict()))).seconds == result.seconds
    assert RobustnessResult.from_dict({k: v for k, v in result.to_dict().items() if k != "seconds"}).seconds == {}


def test_the_time_left_weights_each_stage_by_its_seconds_per_image_in_the_last_batch(
        monkeypatch: pytest.MonkeyPatch):
    now = [0.0]
    monkeypatch.setattr("lipreg.evaluation.progress.time.monotonic", lambda: now[0])
    progress = EvaluationProgress(300, ["pgd ε=1", "square ε=1"], every=0)
    progress.begin_batch(100)
    progress.stage("pgd ε=1")
    now[0] = 10.0
    progress.stage("square ε=1")
    assert progress.within_batch() == pytest.approx(0.5)  # the first batch: stage by stage
    now[0] = 100.0
    progress.end_batch()  # 0.1 s an image in PGD, 0.9 s in Square
    progress.begin_batch(200)
    progress.stage("pgd ε=1")
    now[0] = 110.0
    assert progress.within_batch() == pytest.approx(0.05)  # half of PGD's expected 20 s
    now[0] = 130.0
    assert progress.within_batch() == pytest.approx(0.1)  # PGD's weight at most, though it runs long
    progress.stage("square ε=1")
    now[0] = 220.0
    assert progress.within_batch() == pytest.approx(0.1 + 0.9 * 90 / 180)
    assert progress.fraction() == pytest.approx((100 + 200 * 0.55) / 300)


def test_each_stage_has_its_a_priori_work_per_image():
    work = EvaluationPlan().stage_work(CLASSIFICATION)
    assert list(work) == EvaluationPlan().stages(CLASSIFICATION)
    assert work["noise 0.25"] == Work(1 / 3) and work["fgsm 0.1"] == Work(4 / 3)
    assert work["pgd ε=1"] == work["pgd_sign ε=2"] == Work(100, 100)
    assert work["apgd-ce ε=0.5"] == Work(100, 100) and work["apgd-t ε=1.5"] == Work(900, 900)
    assert work["square ε=0.5–2"] == Work(4 * 5000 / 3, 5000)  # every radius at once: 5,000 queries of each
    small = EvaluationPlan(pgd_epsilons=[1.0], pgd_steps=10, pgd_restarts=2, apgd_steps=20, apgd_targets=3,
                           square_queries=300, sign_pgd=False).stage_work(CLASSIFICATION)
    assert small["pgd ε=1"] == Work(20, 20) and small["apgd-t ε=1"] == Work(60, 60)
    assert small["square ε=1"] == Work(100, 300)
    certified = EvaluationPlan().stage_work(CLASSIFICATION, certified=True)  # the certificate comes first
    assert list(certified) == ["certificate", *work] and certified["certificate"] == Work(0.0)
    smoothed = EvaluationPlan(certificate="smoothing", smoothing_selection=100, smoothing_samples=2000)
    assert smoothed.stage_work(CLASSIFICATION, certified=True)["certificate"] == Work(2100 / 3)  # forward passes


def test_the_smoothed_certificate_has_a_heartbeat():
    """Its noise draws took minutes without a progress line, and a SIGTERM waited for them."""
    beats = []
    with reporting(lambda: beats.append(1)):
        smoothed_certify(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), torch.rand(10, 4), 0.25, 3,
                         selection_samples=20, samples=300, batch_size=100)
    assert len(beats) == 2 + 30  # one per batch of noisy copies: 10 images × 10 copies a batch


def test_the_first_batch_weighs_its_stages_by_their_work_and_counts_the_steps_of_the_current_one():
    work = {"pgd ε=1": Work(100, 100), "apgd-t ε=1": Work(900, 900), "square ε=1": Work(1000, 5000)}
    progress = EvaluationProgress(100, work, every=0)
    progress.begin_batch(100)
    progress.stage("pgd ε=1")
    for _ in range(50):
        progress.step()
    assert progress.within_batch() == pytest.approx(50 / 2000)  # half of PGD's 100 of 2,000 passes
    progress.stage("apgd-t ε=1")  # the steps count afresh in each stage
    assert progress.within_batch() == pytest.approx(100 / 2000)
    progress.stage("square ε=1")
    for _ in range(2500):
        progress.step()
    assert progress.within_batch() == pytest.approx((1000 + 500) / 2000)  # not 2/3 done, as stage by stage
    for _ in range(5000):
        progress.step()
    assert progress.within_batch() == pytest.approx(1.0)  # more steps than expected: the stage's weight at most
    assert progress.fraction() == pytest.approx(1.0)
    alike = EvaluationProgress(100, list(work), every=0)  # without work: stage by stage, as before
    alike.begin_batch(100)
    alike.stage("square ε=1")
    alike.step()
    assert alike.within_batch() == pytest.approx(2 / 3)


class InterruptAfter(RobustnessEvaluation):
    """Raises Ctrl-C in the middle of the second chunk, inside an attack."""

    def on_test_start(self, trainer, pl_module):  # noqa: ANN001, ANN201
        super().on_test_start(trainer, pl_module)
        progress, score = self.progress, self.suite.curve_scores

        def interrupted(*args):  # noqa: ANN002, ANN202
            if progress.done > 0:
                raise KeyboardInterrupt
            return score(*args)

        self.suite.curve_scores = interrupted


def test_ctrl_c_keeps_the_finished_batches(tmp_path: Path, capsys: pytest.CaptureFixture):
    torch.manual_seed(0)
    data = TinyImages()
    net = trained(small_cnn(), data, epochs=2)
    suite = evaluation(InterruptAfter, pgd_epsilons=[0.3], output_dir=str(tmp_path))
    trainer = quiet_trainer(callbacks=[suite])
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into a graceful stop
            trainer.test(Standard(net), data)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT from then on
    assert (tmp_path / INCOMPLETE_MARKER).is_file()
    partial = json.loads((tmp_path / PARTIAL_RESULT_FILE).read_text())
    assert partial["incomplete"] and partial["attack_samples"] == 32  # the first chunk, whole
    assert partial["lipschitz"]["lower"] is None and partial["curves"]["robust"][0][0] == 0.3
    assert f"finished images' results in {PARTIAL_RESULT_FILE}" in capsys.readouterr().out


def test_the_time_budget_stops_the_attacks_and_says_how_many_images_it_reached(capsys: pytest.CaptureFixture):
    torch.manual_seed(0)
    data = TinyImages()
    net = trained(small_cnn(), data, epochs=2)
    suite = evaluation(time_budget=1e-5)  # 0.6 ms: spent by the first chunk
    quiet_trainer(callbacks=[suite]).test(Standard(net), data)
    result = suite.result
    assert result.attack_samples == 32 and result.samples == 90 and result.time_budget_minutes == 1e-5
    out = capsys.readouterr().out
    assert "(attacked: the first 32 test samples, 1e-05-min budget)" in out  # the first chunk
    assert "stopped the attacks after 32 of 90 test images" in out and "--evaluation.time_budget null" in out
    unlimited = evaluation(time_budget=None)
    quiet_trainer(callbacks=[unlimited]).test(Standard(net), data)
    assert unlimited.result.attack_samples == 90 and "time_budget_minutes" not in unlimited.result.to_dict()
    with pytest.raises(LipregError, match="time_budget must be > 0"):
        evaluation(time_budget=0)


def test_the_table_says_how_many_images_one_point_needs():
    from lipreg.evaluation.result import images_for_half_width
    from lipreg.report.files import sample_note

    for share in (0.0, 0.05, 0.5, 0.9, 1.0):
        needed = images_for_half_width(share, 0.01)
        low, high = wilson_interval(share, needed)
        wider_low, wider_high = wilson_interval(share, needed - 1)
        assert (high - low) / 2 <= 0.01 < (wider_high - wider_low) / 2, share
    result = RobustnessResult(method="Standard", task="classification", metric="accuracy", checkpoint="c.ckpt",
                              samples=10_000, attack_samples=1000, clean=0.98, clean_subset=0.98,
                              curves={"robust": [(0.5, 0.75), (1.0, 0.47)]})
    note = sample_note(result)
    assert note.startswith("intervals up to ±3.1 points from the first 1,000 test images")
    assert "±1 point needs about 9,566 images (--evaluation.sample_size 9566)" in note
    result.time_budget_minutes = 15.0
    note = sample_note(result)
    assert "stopped the attacks after 1,000 of 10,000" in note
    assert "about --evaluation.time_budget 143 at this test's pace" in note
    result.time_budget_minutes, result.attack_samples = None, 10_000
    assert sample_note(result) is None  # every interval within ±1 point, nothing cut
    result.samples = result.attack_samples = 500
    assert "more than the 500 test images" in sample_note(result)


def test_chunks_follow_the_measured_cost():
    clock = ImageSchedule(minutes=1.0, first_chunk=100, attack_share=1.0)
    assert clock.chunk_size() == 100
    clock.started -= 6.0  # the first 100 images took 6 s: 0.06 s an image
    clock.images += 100
    assert clock.chunk_size() in (249, 250)  # a quarter of the budget (15 s) fits 250 images
    clock.started -= 60.0
    assert clock.chunk_size() == 0 and clock.reached
    assert ImageSchedule().chunk_size() is None and not ImageSchedule().spent()  # no budget: all at once
    shared = ImageSchedule(minutes=1.0, attack_share=0.8)  # the attacks stop at 48 s, the bounds at 60 s
    shared.started -= 50.0
    shared.images += 10
    assert shared.chunk_size() == 0 and not shared.spent()
    shared.started -= 11.0
    assert shared.spent()


def test_one_gate_for_sample_size_and_time():
    """Once the time budget stops the attacks, no later batch is attacked, whatever the sample size allows."""
    x, y = torch.zeros(50, 2), torch.zeros(50, dtype=torch.long)
    gate = ImageSchedule(sample_size=120, minutes=1.0, first_chunk=10)
    first = [len(chunk) for chunk, _ in gate.chunks(x, y)]
    assert first == [10] and len(gate.held[0]) == 40 and gate.remaining == 70  # the rest waits for a chunk
    gate.started -= 120.0  # the budget is spent
    assert [len(chunk) for chunk, _ in gate.chunks(x, y)] == [] and gate.reached
    assert list(gate.rest()) == [] and len(gate.take(x, y)[0]) == 0
    shards = [ImageSchedule(sample_size=5, rank=rank, world_size=2) for rank in (0, 1)]
    assert [len(s.take(x, y)[0]) for s in shards] == [3, 2]


def test_chunks_gather_images_over_batches_and_the_rest_comes_at_the_end():
    x, y = torch.arange(30.0)[:, None], torch.arange(30)
    batches = [(x[i : i + 6], y[i : i + 6]) for i in range(0, 30, 6)]
    gate = ImageSchedule(minutes=10.0, first_chunk=4, chunk_share=0.1, attack_share=1.0)
    chunks = [chunk for chunk, _ in gate.chunks(*batches[0])]
    assert [len(c) for c in chunks] == [4] and len(gate.held[0]) == 2  # the pace is not known yet
    gate.started -= 23.9  # the 4 images took about 6 s each: a tenth of the 600 s is a chunk of 10
    chunks += [chunk for chunk, _ in gate.chunks(*batches[1])]
    assert [len(c) for c in chunks] == [4]  # 8 images wait: too few for a chunk
    chunks += [chunk for chunk, _ in gate.chunks(*batches[2])]
    assert [len(c) for c in chunks] == [4, 10]  # one chunk from three batches
    for batch in batches[3:]:
        chunks += [chunk for chunk, _ in gate.chunks(*batch)]
    chunks += [chunk for chunk, _ in gate.rest()]  # the end of the data: the images left, however few
    assert torch.equal(torch.cat(chunks), x) and list(gate.rest()) == []  # every image once, in order
    assert [len(chunk) for chunk, _ in ImageSchedule().chunks(*batches[0])] == [6]  # no budget: a batch a chunk


def test_the_lower_bound_stops_when_told_and_is_still_a_bound():
    torch.manual_seed(0)
    net = MLP([4, 16, 3], activation="tanh")
    pairs = noisy_pairs(torch.rand(32, 4), 0.05)
    asked = []

    def stop_after_three() -> bool:
        asked.append(1)
        return len(asked) > 3

    early = lipschitz_lower_bound(net, pairs, steps=50, should_stop=stop_after_three)
    full = lipschitz_lower_bound(net, pairs, steps=50)
    three = lipschitz_lower_bound(net, pairs, steps=3)
    assert len(asked) == 4 and early == pytest.approx(three.item(), rel=1e-5)
    assert early <= full + 1e-6 <= lipschitz_upper_bound(net.layers, (4,)) + 1e-5
    asked_only, unasked = CountingNet(net), CountingNet(net)  # a budget that is never spent costs no pass
    assert lipschitz_lower_bound(asked_only, pairs, steps=20, should_stop=lambda: False) == \
        lipschitz_lower_bound(unasked, pairs, steps=20)
    assert asked_only.samples == unasked.samples
