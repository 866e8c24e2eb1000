"""The evaluation layer: typed results, the task specification, the registries, randomized smoothing."""

import json
import math
from pathlib import Path

import pytest
import torch
from scipy.stats import beta, norm
from torch import nn

from lipreg.callbacks import RobustnessEvaluation
from lipreg.errors import LipregError
from lipreg.evaluation import ATTACKS, CERTIFICATES, EvaluationPlan, EvaluationSuite, RobustnessResult
from lipreg.evaluation.registry import CLASSIFICATION_ATTACKS
from lipreg.functional.losses import hkr_loss, lipschitz_margin_cross_entropy
from lipreg.functional.progress import reporting
from lipreg.functional.smoothing import ABSTAIN, clopper_pearson_lower, smoothed_certify
from lipreg.methods import Standard
from lipreg.nets import MLP
from lipreg.report import format_table, load_results, table_rows
from lipreg.task import CLASSIFICATION, REGRESSION, TASKS, task_spec

from .helpers import BlobsDataModule, quiet_trainer

SAVED = Path(__file__).parent / "data" / "robustness_v0.9.json"  # written by lipreg test before the layer


def tiny(**overrides: object) -> RobustnessEvaluation:
    settings = dict(noise_sigmas=[0.5], fgsm_epsilons=[0.1], pgd_epsilons=[0.2], pgd_steps=5, pgd_step_size=0.05,
                    apgd_steps=5, lipschitz_pairs=20, lipschitz_steps=2, train_accuracy=False, time_budget=None,
                    progress_every=0)
    settings.update(overrides)
    return RobustnessEvaluation(**settings)


def test_a_saved_result_of_the_earlier_release_reads_and_writes_back_the_same():
    data = json.loads(SAVED.read_text())
    result = RobustnessResult.load(SAVED)
    assert result.method == "LipschitzMargin" and result.attack_samples == 1000
    assert result.curve("robust")[1.58] == pytest.approx(0.537)
    assert result.lipschitz.upper == data["lipschitz"]["upper"]
    assert result.ensemble.broken_by == data["ensemble"]["broken_by"]
    written = result.to_dict()
    for key in data:
        assert json.loads(json.dumps(written[key])) == data[key], key  # the intervals are recomputed alike
    assert RobustnessResult.from_dict(written) == result


def test_results_without_the_newer_fields_still_load_and_show(tmp_path: Path):
    old = {"method": "CLIP", "task": "classification", "metric": "accuracy", "checkpoint": None, "samples": 100,
           "attack_samples": 100, "clean": 0.9, "clean_subset": 0.9, "curves": {"pgd": [[1.0, 0.5]]},
           "lipschitz": {"lower": 1.0, "upper": 2.0}, "unknown_future_key": 1}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "robustness.json").write_text(json.dumps(old))
    (result,) = load_results(tmp_path)
    assert result.certified == [] and result.untrained and result.name == "CLIP (untrained)"
    assert dict(table_rows(result))["PGD ε=1"] == "50.0 (40.4–59.6)"
    assert "CLIP (untrained)" in format_table([result])


def test_the_task_specification_answers_what_the_string_branches_asked():
    assert TASKS == {"classification": CLASSIFICATION, "regression": REGRESSION}
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    assert CLASSIFICATION.score(logits, labels).tolist() == [1.0, 0.0]
    assert CLASSIFICATION.is_adversarial(logits, labels).tolist() == [False, True]
    assert REGRESSION.is_adversarial is None and not REGRESSION.classification
    assert REGRESSION.score(torch.ones(2, 1), torch.zeros(2, 1)).tolist() == [1.0, 1.0]
    assert (CLASSIFICATION.short, REGRESSION.short, CLASSIFICATION.loss_name) == ("acc", "mse", "CE")
    with pytest.raises(ValueError, match="unknown task 'ranking'; choose from classification, regression"):
        task_spec("ranking")
    assert Standard(MLP([2, 3]), task="regression").task_spec is REGRESSION


def test_every_registered_attack_builds_names_its_budget_and_runs():
    torch.manual_seed(0)
    net = MLP([2, 8, 3])
    plan = EvaluationPlan()
    x, y = torch.rand(4, 1, 1, 2), torch.tensor([0, 1, 2, 0])
    image_net = nn.Sequential(nn.Flatten(), net)
    for name, entry in ATTACKS.items():
        if entry.regression:
            continue
        attack = entry.build(image_net, plan.budget, epsilon=0.1, norm="l2", box=(0.0, 1.0),
                             generator=torch.Generator().manual_seed(0))
        steps: list[int] = []
        with reporting(lambda steps=steps: steps.append(1)):
            adversarial = attack(x, y)
        assert adversarial.shape == x.shape and ((adversarial - x).flatten(1).norm(dim=1) <= 0.1 + 1e-5).all(), name
        assert entry.label(plan.budget)
        work = entry.work(plan.budget)  # what the progress line expects of it: at most its steps, early exits fewer
        assert work.passes > 0 and 0 < len(steps) <= work.steps + 1, (name, len(steps), work)
    assert set(CLASSIFICATION_ATTACKS) == {"apgd-ce", "apgd-dlr", "apgd-t", "square", "pgd-margin"}
    assert plan.members(CLASSIFICATION, image_inputs=False) == ["apgd-ce", "apgd-t"]  # Square needs images
    assert plan.members(REGRESSION) == ["apgd-mse"]
    with pytest.raises(LipregError, match="unknown certificate 'magic'; choose from class-pair, smoothing"):
        EvaluationPlan(certificate="magic")


def test_clopper_pearson_matches_the_beta_quantile():
    successes = torch.tensor([0, 1, 7, 500, 990, 999, 1000])
    ours = clopper_pearson_lower(successes, 1000, 0.001)
    expected = [0.0 if k == 0 else beta.ppf(0.001, k, 1000 - k + 1) for k in successes.tolist()]
    assert ours.tolist() == pytest.approx(expected, abs=1e-9)


def test_smoothing_certifies_a_linear_classifier_within_its_true_distance():
    """For f(x) = [w·x > 0], P(f(x + δ) = 1) = Φ(w·x / (σ‖w‖)): the exact smoothed radius is the distance
    |w·x| / ‖w‖; CERTIFY's radius is below it and close to it with many samples."""
    w = torch.tensor([3.0, 4.0])
    net = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.stack([-w / 2, w / 2]))
    distances = torch.tensor([0.05, 0.2, 0.4, 0.6])
    x = distances[:, None] * w / w.norm()
    prediction, radius = smoothed_certify(net, x, sigma=0.25, num_classes=2, samples=20_000, alpha=0.001,
                                          generator=torch.Generator().manual_seed(0))
    assert (prediction[1:] == 1).all() and (radius <= distances + 1e-6).all()
    assert (radius[1:] >= distances[1:] - 0.05).all()
    assert radius[3] == pytest.approx(min(0.25 * norm.ppf(beta.ppf(0.001, 20_000, 1)), 0.6), abs=0.05)
    on_boundary = smoothed_certify(net, torch.zeros(3, 2), 0.25, 2, samples=200,
                                   generator=torch.Generator().manual_seed(0))
    assert (on_boundary[0] == ABSTAIN).all() and (on_boundary[1] == 0).all()


def test_lipreg_test_gives_the_smoothing_certificate_labelled_and_leaves_the_attacks_alone():
    torch.manual_seed(0)
    module = Standard(MLP([2, 32, 3], activation="relu"), optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    data = BlobsDataModule()
    quiet_trainer(max_epochs=5).fit(module, data)
    smoothing = tiny(certificate="smoothing", smoothing_sigma=0.1, smoothing_samples=200, certified_radii=[0.05, 0.2])
    quiet_trainer(callbacks=[smoothing]).test(module, data)
    uncertified = tiny(certified_radii=[])
    quiet_trainer(callbacks=[uncertified]).test(module, data)
    result = smoothing.result
    assert result.settings["certificate"] == "smoothing"
    rows = dict(table_rows(result))
    label = "smoothed certified accuracy (σ=0.1, n=200, α=0.001; probabilistic) ε=0.05"
    assert label in rows and "mean smoothed certified radius (L2)" in rows
    values = [v for _, v in result.certified]
    assert values == sorted(values, reverse=True) and 0 < values[0] <= 1
    assert result.curves["robust"] == uncertified.result.curves["robust"]  # a certificate of g, not of f
    assert 0 < result.mean_certified_radius < 0.1 * 4


def test_training_with_input_noise_is_seeded_and_checked():
    def trained(noise: float) -> torch.Tensor:
        torch.manual_seed(0)
        module = Standard(MLP([2, 8, 3]), input_noise=noise)
        quiet_trainer(max_epochs=1).fit(module, BlobsDataModule())
        return next(module.net.parameters()).detach().clone()

    assert torch.equal(trained(0.3), trained(0.3)) and not torch.equal(trained(0.3), trained(0.0))
    with pytest.raises(LipregError, match="input_noise must be >= 0"):
        Standard(MLP([2, 3]), input_noise=-1.0)


def test_margin_losses_by_hand():
    logits = torch.tensor([[2.0, 1.0, -1.0]])
    target = torch.tensor([0])
    offsets = torch.tensor([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])
    raised = torch.tensor([[2.0, 1.5, -0.5]])
    expected = -torch.log_softmax(3 * raised, dim=1)[0, 0]
    assert lipschitz_margin_cross_entropy(logits, target, offsets, temperature=3.0) == pytest.approx(float(expected))
    # hinge: max(0, 0.5 - (2 - 1)) + max(0, 0.5 - (2 + 1)) = 0; KR: 2 - (1 - 1) / 2 = 2
    assert hkr_loss(logits, target, offsets, alpha=10.0) == pytest.approx(-2.0)
    wide = offsets * 4  # margins 2: the first rival is 1 short
    assert hkr_loss(logits, target, wide, alpha=10.0) == pytest.approx(10.0 * 1.0 - 2.0)


def test_a_suite_scores_a_chunk_without_lightning():
    torch.manual_seed(0)
    net = MLP([2, 16, 3])
    plan = EvaluationPlan(noise_sigmas=[], fgsm_epsilons=[0.1], pgd_epsilons=[0.1, 0.3], pgd_steps=5,
                          apgd_steps=5, ensemble=["apgd-ce"], certified_radii=[0.1])
    certifier = CERTIFICATES["class-pair"].prepare(net, (2,), plan)
    suite = EvaluationSuite(plan, net, CLASSIFICATION, (0.0, 1.0), certifier, image_inputs=False,
                            generator=torch.Generator().manual_seed(0))
    x, y = torch.rand(20, 2), torch.randint(0, 3, (20,))
    scores = suite.score(x, y)
    assert set(scores.curves) == {("fgsm", 0.1), ("pgd", 0.1), ("pgd", 0.3), ("pgd_sign", 0.1), ("pgd_sign", 0.3)}
    assert (scores.robust[0.3] <= scores.robust[0.1]).all() and (scores.robust[0.1] <= scores.clean).all()
    assert scores.radius is not None and not math.isnan(float(scores.radius.sum()))
    counts = {stage: int(count) for (epsilon, stage), count in scores.broken.items() if epsilon == 0.3}
    assert sum(counts.values()) == 20 - int(scores.robust[0.3].sum())


def test_square_closes_the_ensemble_once_over_every_radius(monkeypatch: pytest.MonkeyPatch):
    """One Square call per chunk, each image at each radius the APGD members left it robust, with its own ε;
    an image Square breaks at a radius counts as broken at every larger one ("smaller ε")."""
    import lipreg.evaluation.registry as registry

    calls = []

    def breaks_the_first(model, x, y, epsilon, **kwargs):  # a stand-in Square: breaks image 0 at 0.2
        calls.append(epsilon.clone())
        adversarial = x.clone()
        first = ((epsilon == 0.2) & (x[:, 0, 1, 1] == 0)).nonzero().squeeze(1)
        adversarial[first] = 1.0 - adversarial[first]  # misclassified (no ε here moves the first pixel below ½)
        return adversarial

    monkeypatch.setattr(registry, "square", breaks_the_first)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[10.0, 0, 0, 0], [-10.0, 0, 0, 0]]))  # class 1 once the first pixel < ½
        net[1].bias.copy_(torch.tensor([-5.0, 5.0]))
    x = torch.full((6, 1, 2, 2), 0.9)
    x[:, 0, 1, 1] = torch.arange(6) / 10  # which image it is (the net reads only the first pixel)
    y = torch.zeros(6, dtype=torch.long)
    plan = EvaluationPlan(noise_sigmas=[], fgsm_epsilons=[], pgd_epsilons=[0.3, 0.1, 0.2], pgd_steps=1,
                          pgd_step_size=1e-3, apgd_steps=2, ensemble=["apgd-ce", "square"], certified_radii=[])
    assert plan.radius_members(CLASSIFICATION) == ["apgd-ce"] and plan.closing_members(CLASSIFICATION) == ["square"]
    assert plan.stages(CLASSIFICATION)[-1] == "square ε=0.1–0.3"
    scores = EvaluationSuite(plan, net, CLASSIFICATION, (0.0, 1.0)).score(x, y)
    radii = (0.1, 0.2, 0.3)
    assert len(calls) == 1 and sorted(calls[0].tolist()) == pytest.approx([0.1] * 6 + [0.2] * 6 + [0.3] * 6)
    assert scores.robust[0.1].sum() == 6 and scores.robust[0.2].sum() == 5 and scores.robust[0.3].sum() == 5
    counts = {(epsilon, stage): int(count) for (epsilon, stage), count in scores.broken.items()}
    assert counts[(0.2, "square")] == 1 and counts[(0.3, "smaller ε")] == 1 and counts[(0.3, "square")] == 0

    import lipreg.evaluation.suite as suite

    monkeypatch.setattr(suite, "CLOSING_GROUP_BYTES", 100)  # 18 pairs of 2 × 16 bytes: 6 equal groups
    calls.clear()
    grouped = EvaluationSuite(plan, net, CLASSIFICATION, (0.0, 1.0)).score(x, y)
    assert [len(c) for c in calls] == [3] * 6 and all(torch.equal(grouped.robust[e], scores.robust[e]) for e in radii)


LAYERS = {  # a package and the lipreg packages it must not import (those above it)
    "functional": ("lipreg.task", "lipreg.evaluation", "lipreg.methods", "lipreg.callbacks", "lipreg.report",
                   "lipreg.cli", "lipreg.data", "lipreg.nets"),
    "evaluation": ("lipreg.methods", "lipreg.callbacks", "lipreg.report", "lipreg.cli", "lipreg.data"),
    "report": ("lipreg.methods", "lipreg.callbacks", "lipreg.cli", "lipreg.data"),
}


@pytest.mark.parametrize("package", list(LAYERS))
def test_no_layer_imports_one_above_it(package: str):
    import ast

    root = Path(__file__).resolve().parents[1] / "lipreg" / package
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        upward = [name for name in imported if name.startswith(LAYERS[package])]
        assert not upward, f"{path.name} imports {upward}"


def test_only_a_certificate_of_the_network_with_rival_radii_prunes_the_targeted_rivals():
    torch.manual_seed(0)
    net, x = MLP([4, 8, 3]).eval(), torch.rand(6, 4)
    with torch.no_grad():
        logits = net(x)
    y = logits.argmax(1)
    pruned = EvaluationSuite.for_network(EvaluationPlan(), net, CLASSIFICATION, (4,), (0.0, 1.0))
    open_rivals = pruned.reachable(0.01, x)
    assert open_rivals is not None  # the class-pair certificate is a RivalCertifier
    assert not open_rivals(logits, y).all()  # at a tiny radius it rules rivals out
    assert open_rivals(logits, y).shape == (6, 3)
    smoothed = EvaluationSuite.for_network(EvaluationPlan(certificate="smoothing"), net, CLASSIFICATION, (4,),
                                           (0.0, 1.0))
    assert smoothed.reachable(0.01, x) is None  # not a certificate of the network itself, no per-class radii


def test_the_report_counts_the_rivals_the_certificate_rules_out_of_apgd_t():
    from lipreg.evaluation.accumulator import ScoreAccumulator
    from lipreg.report import ensemble_summary

    torch.manual_seed(0)
    net = MLP([4, 8, 8, 4]).eval()
    x = torch.rand(60, 4)
    with torch.no_grad():
        y = net(x).argmax(1)
    plan = EvaluationPlan(noise_sigmas=[], fgsm_epsilons=[], pgd_epsilons=[0.3], pgd_steps=2, apgd_steps=2,
                          ensemble=["apgd-ce", "apgd-t"], certified_radii=[0.01])
    suite = EvaluationSuite.for_network(plan, net, CLASSIFICATION, (4,), (0.0, 1.0))
    assert suite.prunes_rivals
    scores = suite.score(x, y)
    ruled_out, in_all = (int(v) for v in scores.rivals[0.3])
    attacked = in_all // 3  # three rivals each
    assert in_all == 3 * attacked and 0 < attacked < len(x)  # some images are certified at 0.3, some not
    assert 0 < ruled_out <= 2 * attacked  # each attacked image has a rival left open, or it would be certified
    accumulator = ScoreAccumulator(plan, CLASSIFICATION, plan.members(CLASSIFICATION, False), True,
                                   torch.device("cpu"), suite.prunes_rivals)
    accumulator.add(scores)
    result = RobustnessResult(method="Standard", task="classification", metric="acc", checkpoint=None, samples=60,
                              attack_samples=60, clean=1.0, clean_subset=1.0, curves=accumulator.curves_computed(),
                              ensemble=accumulator.ensemble_record(["APGD"]))
    assert result.ensemble.rivals_ruled_out == {"0.3": [ruled_out, in_all]}
    assert f"APGD-T rivals ruled out by the certificate: {ruled_out:,} of {in_all:,}" in ensemble_summary(result)
    again = RobustnessResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.ensemble.rivals_ruled_out == result.ensemble.rivals_ruled_out
    without = EvaluationSuite.for_network(EvaluationPlan(ensemble=["apgd-ce"], certified_radii=[0.01]), net,
                                          CLASSIFICATION, (4,), (0.0, 1.0))
    assert not without.prunes_rivals  # no APGD-T, nothing to prune
