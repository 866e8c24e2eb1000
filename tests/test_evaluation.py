"""Robustness evaluation: bounds with known constants, certificates, `lipreg test` files, PGD checkpointing."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lipreg.callbacks import PGDValidation, RobustnessEvaluation
from lipreg.cli import run
from lipreg.errors import LipregError
from lipreg.evaluation import EvaluationSuite
from lipreg.functional import certified, lipschitz_lower_bound, lipschitz_upper_bound, logit_margin, pgd
from lipreg.functional.bounds import layer_operator_norm
from lipreg.functional.pairs import noisy_pairs
from lipreg.methods import Standard
from lipreg.nets import MLP, MadryCNN

from .functional.test_quotients_pairs import abs_network, linear_map
from .helpers import BlobsDataModule, quiet_trainer

REPO = Path(__file__).resolve().parents[1]


def test_bounds_enclose_a_linear_maps_constant():
    f, sigma = linear_map(seed=4)
    lower = lipschitz_lower_bound(f, noisy_pairs(torch.randn(32, 8), 0.5), steps=100, step_size=0.1).item()
    upper = lipschitz_upper_bound(nn.Sequential(f), (8,))
    assert lower <= sigma * (1 + 1e-5) and upper == pytest.approx(sigma, rel=1e-5)
    assert lower == pytest.approx(sigma, rel=0.01)


def test_bounds_enclose_the_abs_network():
    """Layer product 2 (√2·√2), true constant 1 (CLIP paper, eq. (1))."""
    f = abs_network()
    lower = lipschitz_lower_bound(f, noisy_pairs(torch.rand(16, 1) * 4 - 2, 0.3), steps=100, step_size=0.05).item()
    upper = lipschitz_upper_bound(f, (1,))
    assert lower == pytest.approx(1.0, rel=0.01) and lower <= 1.0 + 1e-6
    assert upper == pytest.approx(2.0, rel=1e-5)


def dense_operator_norm(conv: nn.Conv2d, shape: tuple[int, ...]) -> float:
    """The exact L2 norm of ``conv`` on ``shape`` from its dense matrix (small shapes only)."""
    size = shape[0] * shape[1] * shape[2]
    basis = torch.eye(size).reshape(size, *shape)
    with torch.no_grad():
        matrix = (conv(basis) - conv(torch.zeros(1, *shape))).reshape(size, -1).T
    return torch.linalg.matrix_norm(matrix.double(), ord=2).item()


@pytest.mark.parametrize(("conv", "shape", "slack"), [
    # the Madry CNN's first layer, fewer channels
    (dict(in_channels=1, out_channels=8, kernel_size=5, padding=2), (1, 28, 28), 1.03),
    (dict(in_channels=4, out_channels=6, kernel_size=3, padding=1), (4, 10, 10), 1.10),
    # strides: the polyphase split
    (dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, stride=2), (2, 6, 6), 1.15),
    (dict(in_channels=3, out_channels=5, kernel_size=4, padding=1, stride=2), (3, 8, 8), 1.10),
    (dict(in_channels=2, out_channels=4, kernel_size=3, stride=(2, 3), groups=2), (2, 11, 9), 1.10),
    # small images: the torus is loosest
    (dict(in_channels=2, out_channels=4, kernel_size=3, dilation=2, groups=2), (2, 9, 9), 1.40),
    (dict(in_channels=3, out_channels=3, kernel_size=3, padding="same"), (3, 7, 7), 1.10),
])
def test_conv_operator_norm_is_a_proven_upper_bound_and_close(conv: dict, shape: tuple[int, ...], slack: float):
    torch.manual_seed(0)  # the layer is drawn here: drawn at collection, its weights would depend on test order
    layer = nn.Conv2d(**conv)
    exact = dense_operator_norm(layer, shape)
    bound = layer_operator_norm(layer, shape)
    assert exact <= bound <= slack * exact


def test_linear_operator_norm_is_the_largest_singular_value():
    layer = nn.Linear(30, 20)
    assert layer_operator_norm(layer, (30,)) == pytest.approx(torch.linalg.svdvals(layer.weight.double())[0].item())


def test_upper_bound_of_the_paper_networks_multiplies_layer_norms():
    net = MLP([784, 64, 10], activation="sigmoid", mean=0.5, std=0.25)
    linear = [m for m in net.modules() if isinstance(m, nn.Linear)]
    expected = 4.0 * 0.25 * torch.prod(torch.tensor([torch.linalg.matrix_norm(m.weight, 2).item() for m in linear]))
    assert lipschitz_upper_bound(net.layers, (1, 28, 28)) == pytest.approx(expected.item(), rel=1e-4)
    assert lipschitz_upper_bound(MadryCNN().layers, (1, 28, 28)) > 0


def test_upper_bound_refuses_unknown_layers():
    with pytest.raises(ValueError, match="GELU"):
        lipschitz_upper_bound(nn.Sequential(nn.Linear(2, 2), nn.GELU()), (2,))


def test_margin_and_certificate():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 2.5]])
    target = torch.tensor([0, 1])
    assert torch.allclose(logit_margin(logits, target), torch.tensor([2.0, -0.5]))
    # margin 2 > √2·L·ε needs ε < 2/(√2·L)
    assert certified(logits, target, 1.0, 1.4).tolist() == [True, False]
    assert certified(logits, target, 1.0, 1.5).tolist() == [False, False]


def test_certified_points_are_never_broken_by_pgd():
    torch.manual_seed(0)
    net = MLP([2, 32, 3], activation="relu")
    data = BlobsDataModule()
    module = Standard(net, optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    quiet_trainer(max_epochs=5).fit(module, data)
    x, y = data.splits.test
    upper = lipschitz_upper_bound(net.layers, (2,))
    radius = 0.05
    with torch.no_grad():
        safe = certified(net(x), y, upper, radius)
    assert safe.any()
    adversarial = pgd(net, x, y, radius, radius / 5, 50, norm="l2", box=None, random_start=True, restarts=3,
                      generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        still_right = net(adversarial).argmax(dim=1) == y
    assert still_right[safe].all()


def tiny_evaluation(**overrides) -> RobustnessEvaluation:
    settings = dict(noise_sigmas=[0.1, 0.3], fgsm_epsilons=[0.05, 0.2], pgd_epsilons=[0.05, 0.2], pgd_steps=10,
                    pgd_step_size=0.02, certified_radii=[0.01, 0.05], lipschitz_pairs=50, lipschitz_steps=10)
    settings.update(overrides)
    return RobustnessEvaluation(**settings)


def test_evaluation_results_are_consistent_and_written(tmp_path: Path):
    torch.manual_seed(0)
    module = Standard(MLP([2, 32, 3], activation="relu"), optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    evaluation = tiny_evaluation(output_dir=str(tmp_path / "out"))
    trainer = quiet_trainer(max_epochs=5, callbacks=[evaluation])
    data = BlobsDataModule()
    trainer.fit(module, data)
    trainer.test(module, data)
    result = evaluation.result
    clean = result.clean_subset
    for curve, points in result.curves.items():
        values = [v for _, v in points]
        assert all(v <= clean + 1e-6 for v in values), curve
        if curve != "noise":  # noise is random; attacks are monotone in ε here
            assert values == sorted(values, reverse=True), curve
    assert result.lipschitz.lower <= result.lipschitz.upper
    certified_values = [v for _, v in result.certified]
    assert certified_values == sorted(certified_values, reverse=True) and certified_values[0] <= clean
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"robustness.json", "robustness.csv", "robustness.png"}
    assert json.loads((tmp_path / "out" / "robustness.json").read_text())["method"] == "Standard"
    assert trainer.callback_metrics["test/pgd_acc@0.2"] == pytest.approx(result.curves["pgd"][1][1])
    # the robust accuracy: first, logged, never above any attack at the same ε, and it says what it is
    assert list(result.curves)[0] == "robust"
    for (epsilon, robust), (_, pgd_value), (_, sign_value) in zip(
            result.curves["robust"], result.curves["pgd"], result.curves["pgd_sign"], strict=True):
        assert robust <= min(pgd_value, sign_value) + 1e-6
        assert trainer.callback_metrics[f"test/robust_acc@{epsilon:g}"] == pytest.approx(robust)
    attacks = result.ensemble.attacks
    assert attacks[0].startswith("PGD-L2") and "APGD-T (100 steps, 9 targets)" in attacks
    assert not any("Square" in a for a in attacks)  # flat inputs: Square needs images
    broken = result.ensemble.broken_by["0.2"]
    clean_correct = round(result.clean_subset * result.attack_samples)
    assert clean_correct - sum(v for k, v in broken.items() if k != "clean") == round(
        result.curves["robust"][1][1] * result.attack_samples)


def test_the_ensemble_lowers_robust_accuracy_below_cross_entropy_pgd_on_small_logits(capsys: pytest.CaptureFixture):
    """Logits scaled down 100×: cross-entropy PGD with few steps misses points that APGD-T breaks."""
    torch.manual_seed(0)
    module = Standard(MLP([2, 32, 3], activation="relu"), optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    quiet_trainer(max_epochs=5).fit(module, BlobsDataModule())
    with torch.no_grad():
        module.net.layers[-1].weight.mul_(0.01)
        module.net.layers[-1].bias.mul_(0.01)
    evaluation = tiny_evaluation(pgd_steps=3, pgd_step_size=0.01, sign_pgd=False, ensemble=["apgd-t"])
    quiet_trainer(callbacks=[evaluation]).test(module, BlobsDataModule())
    (_, robust), (_, pgd_value) = evaluation.result.curves["robust"][1], evaluation.result.curves["pgd"][1]
    assert robust < pgd_value - 0.05
    assert evaluation.result.ensemble.broken_by["0.2"]["apgd-t"] > 0
    out = capsys.readouterr().out
    assert out.index("robust accuracy L2 (worst case) ε=0.05") < out.index("Gaussian noise")
    assert "robust = worst case per sample over: PGD-L2 (CE, 3 steps of 0.01), APGD-T (100 steps, 9 targets)" in out


def test_regression_reports_the_worst_case_error():
    from lipreg.data import RegressionDataModule

    torch.manual_seed(0)
    module = Standard(MLP([1, 16, 1], activation="tanh"), task="regression")
    evaluation = tiny_evaluation(pgd_epsilons=[0.1], certified_radii=[])
    quiet_trainer(callbacks=[evaluation]).test(module, RegressionDataModule(num_samples=50))
    result = evaluation.result
    assert result.curves["robust"][0][1] >= result.curves["pgd"][0][1] - 1e-9
    assert result.ensemble.attacks[-1] == "APGD-MSE (100 steps)"


def test_unknown_ensemble_attacks_are_refused():
    with pytest.raises(LipregError, match="unknown attack.*'fab'.*apgd-ce"):
        RobustnessEvaluation(ensemble=["apgd-ce", "fab"])
    with pytest.raises(LipregError, match="budget"):
        RobustnessEvaluation(square_queries=0)


def test_sample_size_limits_the_attacked_subset():
    module = Standard(MLP([2, 8, 3]))
    evaluation = tiny_evaluation(sample_size=50)
    quiet_trainer(callbacks=[evaluation]).test(module, BlobsDataModule())
    assert evaluation.result.attack_samples == 50 and evaluation.result.samples == 120


def test_noise_is_clamped_to_the_input_range_unless_switched_off():
    module = Standard(MLP([2, 8, 3]))
    module.input_box = (0.0, 1.0)
    x, y = torch.full((200, 2), 0.5), torch.zeros(200, dtype=torch.long)
    for clamp in (True, False):
        plan = tiny_evaluation(noise_clamp=clamp).plan
        suite = EvaluationSuite(plan, module.net, module.task_spec, module.input_box,
                                generator=torch.Generator().manual_seed(0))
        noisy = suite.perturb("noise", 1.0, x, y)
        inside = bool(((noisy >= 0) & (noisy <= 1)).all())
        assert inside == clamp


def test_attacks_under_inference_mode_say_what_to_set():
    module = Standard(MLP([2, 8, 3]))
    with pytest.raises(LipregError, match="inference_mode false"):
        quiet_trainer(inference_mode=True, callbacks=[tiny_evaluation()]).test(module, BlobsDataModule())
    with pytest.raises(LipregError, match="inference_mode false"):
        # (validation inside `fit` always runs under no_grad; a standalone `validate` uses inference mode)
        quiet_trainer(inference_mode=True, callbacks=[PGDValidation(epsilon=0.1)]).validate(module, BlobsDataModule())


def test_pgd_validation_drives_checkpoint_selection(tmp_path: Path):
    torch.manual_seed(0)
    module = Standard(MLP([2, 16, 3]), optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, monitor="val/pgd_acc", mode="max")
    trainer = quiet_trainer(max_epochs=3, enable_checkpointing=True,
                            callbacks=[PGDValidation(epsilon=0.1, step_size=0.03, steps=5, sample_size=60), checkpoint])
    trainer.fit(module, BlobsDataModule())
    assert 0 <= trainer.callback_metrics["val/pgd_acc"] <= trainer.callback_metrics["val/acc"]
    assert checkpoint.best_model_score is not None and Path(checkpoint.best_model_path).is_file()


def test_pgd_validation_attacks_the_margin_by_default(monkeypatch: pytest.MonkeyPatch):
    import lipreg.callbacks.pgd_validation as validation
    from lipreg.functional.losses import margin_loss, per_sample_cross_entropy

    seen = []
    real_pgd = validation.pgd
    monkeypatch.setattr(validation, "pgd", lambda *a, **k: seen.append(a[8]) or real_pgd(*a, **k))
    module = Standard(MLP([2, 8, 3]))
    for callback in (PGDValidation(epsilon=0.1, steps=2), PGDValidation(epsilon=0.1, steps=2, loss="ce")):
        quiet_trainer(callbacks=[callback]).validate(module, BlobsDataModule())
    assert seen[0] is margin_loss and seen[-1] is per_sample_cross_entropy


def test_lipreg_test_and_compare_write_their_files(tmp_path: Path, capsys: pytest.CaptureFixture):
    config = str(REPO / "configs" / "regression_clip.yaml")
    run(["fit", "--config", config, "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "1",
         "--model.init_args.net.init_args.widths", "[1, 16, 1]"])
    (checkpoint,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt")
    small = ["--evaluation.pgd_steps", "5", "--evaluation.lipschitz_pairs", "20", "--evaluation.lipschitz_steps", "5"]
    cli = run(["test", "--config", config, "--ckpt_path", str(checkpoint),
               "--model.init_args.net.init_args.widths", "[1, 16, 1]", *small])
    written = {p.name for p in (checkpoint.parents[1] / "test" / checkpoint.stem).iterdir()}
    assert {"robustness.json", "robustness.csv", "robustness.png"} <= written
    assert "test/pgd_mse@2" in cli.trainer.callback_metrics and "test/robust_mse@2" in cli.trainer.callback_metrics
    out = capsys.readouterr().out
    assert "Lipschitz lower bound" in out and "APGD-MSE (100 steps)" in out
    run(["compare", str(tmp_path / "lightning_logs"), "--output", str(tmp_path / "cmp")])
    compared = capsys.readouterr().out
    assert "clean mse" in compared and "robust mse L2 (worst case) ε=2" in compared
    assert (tmp_path / "cmp" / "comparison.csv").is_file() and (tmp_path / "cmp" / "comparison.png").is_file()


def test_compare_without_results_is_a_clear_error(tmp_path: Path):
    with pytest.raises(SystemExit) as info:
        run(["compare", str(tmp_path)])
    assert info.value.code == 2
