"""Each method's step on tiny tensors: finite objective, gradients, state, and what its penalty sees."""

import pytest
import torch
from torch import nn

from lipreg.errors import LipregError
from lipreg.functional import fgsm, input_gradient_penalty, pgd
from lipreg.functional.losses import per_sample_cross_entropy
from lipreg.functional.quotients import sample_norm
from lipreg.methods import (
    CLIP,
    PTV,
    TV,
    AdversarialTraining,
    FGSMTraining,
    GradientPenalty,
    LipRegModule,
    Standard,
    SumFLIP,
    WeightDecay,
    adversarial,
)
from lipreg.nets import MLP

from ..helpers import BlobsDataModule, quiet_trainer


def small_net() -> MLP:
    torch.manual_seed(0)
    return MLP([2, 16, 16, 3], activation="tanh")


METHODS = {
    "Standard": lambda: Standard(small_net()),
    "CLIP": lambda: CLIP(small_net(), lam=0.5, pair_init="heldout"),
    "CLIP-batch": lambda: CLIP(small_net(), lam=0.5, pair_init="batch", adaptive_step=True, ascent_steps=2),
    "CLIP-box": lambda: CLIP(small_net(), lam=0.5, pair_init="box", num_pairs=20, squared=True),
    "SumFLIP": lambda: SumFLIP(small_net(), lam=0.5, pair_init="heldout"),
    "TV": lambda: TV(small_net(), lam=0.5, epsilon=0.1),
    "TV-exact": lambda: TV(small_net(), lam=0.5, exact=True),
    "PTV": lambda: PTV(small_net(), lam=0.5, epsilon=0.1),
    "WeightDecay": lambda: WeightDecay(small_net(), mu=0.01),
    "FGSMTraining": lambda: FGSMTraining(small_net(), epsilon=0.05, adversarial_weight=0.5),
    "AdversarialTraining": lambda: AdversarialTraining(small_net(), epsilon=0.1, norm="l2", steps=3, step_size=0.05),
    "GradientPenalty": lambda: GradientPenalty(small_net(), lam=0.5),
}


@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_and_logs_its_metrics(name):
    module = METHODS[name]()
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=4)
    trainer.fit(module, BlobsDataModule())
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and "train/acc" in metrics and "val/acc" in metrics
    if module.is_regularised:
        assert metrics["train/penalty"] > 0
        assert f"train/{module.coefficient_name}" in metrics
    if isinstance(module, (CLIP, TV, PTV)):
        assert metrics["train/lip"] > 0
    if isinstance(module, (TV, PTV)):
        assert "train/epsilon" in metrics


def test_penalty_leaves_parameter_gradients_alone_until_lightning_backpropagates():
    module = METHODS["CLIP"]()
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1)
    trainer.fit(module, BlobsDataModule())  # attaches the trainer and draws the pair set
    x = torch.rand(8, 2)
    for p in module.net.parameters():
        p.grad = torch.full_like(p, 3.0)
    penalty = module.penalty(x, torch.zeros(8, dtype=torch.long))
    assert all(torch.all(p.grad == 3.0) for p in module.net.parameters())
    assert penalty.value.requires_grad


def test_clip_objective_gradient_is_loss_plus_lambda_times_max_quotient():
    module = CLIP(small_net(), lam=2.0, pair_init="batch", ascent_steps=0, noise_scale=0.05)
    x, y = torch.rand(6, 2), torch.randint(0, 3, (6,))
    objective = module.training_step((x, y), 0)
    u, v = module.initial_pairs(x)  # same seed and step: the same pairs the step drew
    q = sample_norm(module.net(u) - module.net(v)) / sample_norm(u - v)
    expected = nn.functional.cross_entropy(module.net(x), y) + 2.0 * q.max()
    assert objective.item() == pytest.approx(expected.item(), rel=1e-6)


def test_clip_pair_set_persists_across_steps_and_moves_uphill():
    module = METHODS["CLIP"]()
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1)
    data = BlobsDataModule(lipschitz_size=40)
    trainer.fit(module, data)
    assert module.pairs.shape == (2, 40, 2)
    u_before, v_before = module.pairs[0].clone(), module.pairs[1].clone()
    x = torch.rand(8, 2)
    module.penalty(x, torch.zeros(8, dtype=torch.long))
    assert not torch.equal(module.pairs[0], u_before)
    before = sample_norm(module.net(u_before) - module.net(v_before)) / sample_norm(u_before - v_before)
    after = sample_norm(module.net(module.pairs[0]) - module.net(module.pairs[1])) / sample_norm(
        module.pairs[0] - module.pairs[1])
    assert after.max() >= before.max() - 1e-6


def test_clip_heldout_without_a_lipschitz_set_says_what_to_set():
    module = CLIP(small_net(), lam=1.0, pair_init="heldout")
    with pytest.raises(LipregError, match="lipschitz_size"):
        quiet_trainer(max_epochs=1, limit_train_batches=1).fit(module, BlobsDataModule(lipschitz_size=0))


class RecordingNet(nn.Module):
    """Wraps a net and keeps the inputs of its last call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.last_input = None

    def forward(self, x):
        self.last_input = x.detach()
        return self.net(x)


def test_ptv_projects_each_point_onto_its_own_sphere():
    module = PTV(RecordingNet(MLP([5, 8, 2])), lam=1.0, epsilon=0.3)
    x = torch.randn(10, 5) * 3
    module.penalty(x, torch.zeros(10, dtype=torch.long))
    u, v = module.net.last_input.split(10)  # the penalty's forward on cat([x1, x2])
    assert torch.allclose(sample_norm(u - x), torch.full((10,), 0.3), atol=1e-5)
    assert torch.allclose(sample_norm(v - x), torch.full((10,), 0.3), atol=1e-5)


def test_tv_pairs_stay_in_the_epsilon_ball():
    module = TV(RecordingNet(MLP([5, 8, 2])), lam=1.0, epsilon=0.2, ascent_steps=3, step_size=10.0)
    x = torch.randn(10, 5)
    module.penalty(x, torch.zeros(10, dtype=torch.long))
    u, v = module.net.last_input.split(10)
    assert (sample_norm(u - x) <= 0.2 + 1e-5).all() and (sample_norm(v - x) <= 0.2 + 1e-5).all()


def test_weight_decay_penalty_is_the_squared_parameter_norm():
    module = WeightDecay(small_net(), mu=0.1)
    expected = sum(p.square().sum() for p in module.net.parameters())
    assert module.penalty(torch.rand(2, 2), torch.zeros(2)).value.item() == pytest.approx(expected.item())
    assert module.coefficient_name == "mu" and module.lam.item() == pytest.approx(0.1)


def test_fgsm_training_uses_the_adversarial_loss():
    module = FGSMTraining(small_net(), epsilon=0.1, adversarial_weight=1.0)
    x, y = torch.rand(16, 2), torch.randint(0, 3, (16,))
    output, loss = module.data_term(x, y)
    clean = nn.functional.cross_entropy(module.net(x), y)
    assert torch.allclose(output, module.net(x)) and loss > clean


@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_training_is_the_one_step_case_of_pgd_training(norm: str, random_start: bool,
                                                            monkeypatch: pytest.MonkeyPatch):
    # FGSMTraining is AdversarialTraining with one step of size ε: its examples are FGSM's
    module = FGSMTraining(small_net(), epsilon=0.1, norm=norm, random_start=random_start)
    module.input_box = (0.0, 1.0)
    x, y = torch.rand(16, 2), torch.randint(0, 3, (16,))
    seen = []
    monkeypatch.setattr(adversarial, "pgd", lambda *a, **k: seen.append(pgd(*a, **k)) or seen[-1])
    module.data_term(x, y)
    expected = fgsm(module.net, x, y, 0.1, norm, per_sample_cross_entropy, (0.0, 1.0), random_start,
                    module.step_generator(x.device))
    assert torch.allclose(seen[0], expected, atol=1e-6)
    assert module.steps == 1 and module.step_size == 0.1 and "steps" not in module.hparams


def test_pgd_training_examples_are_stronger_than_fgsm_and_stay_in_the_ball():
    torch.manual_seed(1)
    x, y = torch.rand(64, 2), torch.randint(0, 3, (64,))
    pgd_module = AdversarialTraining(small_net(), epsilon=0.2, norm="l2", steps=10, step_size=0.05,
                                     random_start=False)
    fgsm_module = FGSMTraining(small_net(), epsilon=0.2, norm="l2")
    _, pgd_loss = pgd_module.data_term(x, y)
    _, fgsm_loss = fgsm_module.data_term(x, y)
    assert pgd_loss >= fgsm_loss - 1e-6


def test_gradient_penalty_is_the_mean_squared_norm_of_each_samples_input_gradient():
    module = GradientPenalty(small_net(), lam=1.0)
    x, y = torch.rand(5, 2), torch.randint(0, 3, (5,))
    expected = []
    for i in range(5):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(module.net(xi), y[i : i + 1]), xi)
        expected.append(grad.square().sum())
    value = module.penalty(x, y).value
    assert value.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    value.backward()  # differentiable in the parameters (double back-propagation)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.net.parameters())
    assert input_gradient_penalty(module.net, x, y, per_sample_cross_entropy).item() == pytest.approx(value.item())


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: Standard(small_net(), task="segmentation"), "task"),
        (lambda: CLIP(small_net(), lam=-1.0), ">= 0"),
        (lambda: CLIP(small_net(), pair_init="box"), "num_pairs"),
        (lambda: CLIP(small_net(), pair_init="grid"), "pair_init"),
        (lambda: TV(small_net(), epsilon=0.0), "epsilon"),
        (lambda: FGSMTraining(small_net(), adversarial_weight=2.0), "adversarial_weight"),
        (lambda: AdversarialTraining(small_net(), steps=0), "steps"),
    ],
)
def test_bad_arguments_name_the_value(build, match):
    with pytest.raises(LipregError, match=match):
        build()


def test_a_network_with_the_wrong_output_size_is_refused_with_a_clear_message():
    module = Standard(MLP([2, 8, 5]))
    with pytest.raises(LipregError, match="outputs 5 values per sample but BlobsDataModule needs 3"):
        quiet_trainer(max_epochs=1).fit(module, BlobsDataModule())


@pytest.mark.parametrize("name", ["PTV", "WeightDecay", "Standard", "FGSMTraining", "AdversarialTraining",
                                  "GradientPenalty"])
def test_load_from_checkpoint_on_the_base_class_returns_the_trained_method(tmp_path, name):
    module = METHODS[name]()
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, default_root_dir=tmp_path)
    trainer.fit(module, BlobsDataModule())
    path = tmp_path / "method.ckpt"
    trainer.save_checkpoint(path)
    loaded = LipRegModule.load_from_checkpoint(path, net=small_net())  # a net built in Python is passed again
    assert type(loaded) is type(module)
    for key, value in module.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    if name == "PTV":
        assert loaded.epsilon.item() == pytest.approx(0.1)
