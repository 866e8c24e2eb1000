"""Attacks against a maintained oracle (torchattacks) and their invariants."""

import pytest
import torch
import torchattacks  # the oracle; installed by the README's test command (pip install --no-deps torchattacks)
from torch import nn

from lipreg.functional import fgsm, gaussian_noise, pgd
from lipreg.functional.losses import misclassified, per_sample_squared_error
from lipreg.functional.quotients import sample_norm
from lipreg.nets import MLP

from ..helpers import CountingNet


@pytest.fixture
def classifier_and_batch():
    torch.manual_seed(0)
    net = MLP([784, 32, 10], activation="sigmoid")
    x = torch.rand(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    return net.eval(), x, y


def test_pgd_l2_matches_torchattacks(classifier_and_batch):
    net, x, y = classifier_and_batch
    oracle = torchattacks.PGDL2(net, eps=1.5, alpha=0.2, steps=10, random_start=False)(x, y)
    ours = pgd(net, x, y, epsilon=1.5, step_size=0.2, steps=10, norm="l2")
    assert torch.allclose(ours, oracle, atol=1e-5)


def test_pgd_linf_matches_torchattacks(classifier_and_batch):
    net, x, y = classifier_and_batch
    oracle = torchattacks.PGD(net, eps=0.1, alpha=0.01, steps=10, random_start=False)(x, y)
    ours = pgd(net, x, y, epsilon=0.1, step_size=0.01, steps=10, norm="linf")
    assert torch.allclose(ours, oracle, atol=1e-5)


def test_fgsm_matches_torchattacks(classifier_and_batch):
    net, x, y = classifier_and_batch
    oracle = torchattacks.FGSM(net, eps=0.1)(x, y)
    assert torch.allclose(fgsm(net, x, y, epsilon=0.1), oracle, atol=1e-5)


def test_fgsm_steps_have_the_right_norm(classifier_and_batch):
    net, x, y = classifier_and_batch
    x = x * 0.5 + 0.25  # away from the box so clamping does not shorten the step
    linf = fgsm(net, x, y, epsilon=0.05, box=None)
    assert torch.allclose((linf - x).abs().flatten(1).max(dim=1).values, torch.full((16,), 0.05))
    l2 = fgsm(net, x, y, epsilon=0.7, norm="l2", box=None)
    assert torch.allclose(sample_norm(l2 - x), torch.full((16,), 0.7), atol=1e-5)
    started = fgsm(net, x, y, epsilon=0.05, random_start=True, generator=torch.Generator().manual_seed(0))
    assert (started - x).abs().max() <= 0.05 + 1e-6


@pytest.mark.parametrize("norm,step_kind", [("l2", "steepest"), ("l2", "sign"), ("linf", "steepest")])
def test_pgd_stays_in_the_ball_and_the_box(classifier_and_batch, norm, step_kind):
    net, x, y = classifier_and_batch
    epsilon = 2.0 if norm == "l2" else 0.1
    adversarial = pgd(net, x, y, epsilon, 0.25 if norm == "l2" else 0.02, 20, norm, step_kind,
                      random_start=True, restarts=2, generator=torch.Generator().manual_seed(0))
    delta = (adversarial - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().max(dim=1).values
    assert (size <= epsilon + 1e-5).all()
    assert adversarial.min() >= 0 and adversarial.max() <= 1


def test_attacks_leave_mode_and_parameter_gradients_as_they_were(classifier_and_batch):
    net, x, y = classifier_and_batch
    net.train()
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    pgd(net, x, y, 1.0, 0.1, 3)
    fgsm(net, x, y, 0.1)
    assert net.training
    assert all(torch.all(p.grad == 1) for p in net.parameters())


def linear_two_class() -> nn.Linear:
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 0.0, -1.0], [-1.0, 0.0, 1.0, 1.0]]))
        layer.bias.copy_(torch.tensor([0.3, -0.2]))
    return layer


def test_l2_attack_success_on_a_linear_classifier_matches_the_margin_bound():
    torch.manual_seed(1)
    f = linear_two_class()
    x = torch.randn(400, 4)
    y = f(x).argmax(dim=1)  # every point correctly classified
    w = f.weight.detach()
    b = f.bias.detach()
    margin = ((x @ w.T + b) * torch.tensor([1.0, -1.0])).sum(dim=1).abs()  # |logit gap|
    distance = margin / (w[0] - w[1]).norm()  # L2 distance to the decision boundary
    accuracies = []
    for epsilon in (0.25, 0.5, 1.0, 2.0):
        adversarial = pgd(f, x, y, epsilon, step_size=epsilon / 10, steps=30, norm="l2", box=None)
        broken = f(adversarial).argmax(dim=1) != y
        clear = (distance - epsilon).abs() > 1e-3
        assert torch.equal(broken[clear], (distance < epsilon)[clear])
        accuracies.append(1 - broken.float().mean().item())
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[-1] < accuracies[0]


def test_l2_pgd_on_flat_regression_inputs_matches_the_hand_derived_worst_case():
    torch.manual_seed(2)
    f = nn.Linear(3, 1)
    x = torch.randn(50, 3)
    y = torch.randn(50, 1)
    epsilon = 0.4
    adversarial = pgd(f, x, y, epsilon, step_size=0.05, steps=40, norm="l2", loss_fn=per_sample_squared_error,
                      box=None)
    residual = (f(x) - y).squeeze(1).abs()
    worst = (residual + epsilon * f.weight.detach().norm()) ** 2  # move ε along ±w/‖w‖
    assert torch.allclose(per_sample_squared_error(f(adversarial), y), worst, rtol=1e-4)


def test_gaussian_noise_is_clamped_and_has_sigma():
    x = torch.full((2000, 10), 0.5)
    noisy = gaussian_noise(x, 0.1, generator=torch.Generator().manual_seed(0))
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert (noisy - x).std().item() == pytest.approx(0.1, rel=0.05)
    assert torch.equal(gaussian_noise(x, 0.0), x)


def test_bad_attack_arguments_are_refused(classifier_and_batch):
    net, x, y = classifier_and_batch
    with pytest.raises(ValueError, match="epsilon"):
        pgd(net, x, y, -1.0, 0.1, 3)
    with pytest.raises(ValueError, match="norm"):
        fgsm(net, x, y, 0.1, norm="l1")


def test_pgd_restarts_keep_the_worst_case_of_each_sample(classifier_and_batch):
    net, x, y = classifier_and_batch
    settings = dict(epsilon=1.0, step_size=0.05, steps=3, norm="l2")
    single = pgd(net, x, y, **settings)
    several = pgd(net, x, y, **settings, restarts=4, generator=torch.Generator().manual_seed(0))
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert (loss(net(several), y, reduction="none") >= loss(net(single), y, reduction="none") - 1e-6).all()


@pytest.mark.parametrize("restarts", [1, 3])
def test_pgd_that_stops_at_the_first_adversarial_breaks_a_superset_for_less_work(restarts):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        y = net(x).argmax(dim=1)  # all correct at the start
    settings = dict(epsilon=0.4, step_size=0.05, steps=15, norm="l2", restarts=restarts, random_start=False)
    full, early = CountingNet(net), CountingNet(net)
    plain = pgd(full, x, y, **settings, generator=torch.Generator().manual_seed(1))
    stopped = pgd(early, x, y, **settings, generator=torch.Generator().manual_seed(1), is_adversarial=misclassified)
    with torch.no_grad():
        broken_plain, broken_early = misclassified(net(plain), y), misclassified(net(stopped), y)
    assert 0 < broken_plain.sum() < len(x)  # the test means something: some broken, some not
    assert (broken_early >= broken_plain).all()  # every image the full run broke is broken
    assert early.samples < full.samples
    delta = (stopped - x).flatten(1).norm(dim=1)
    assert (delta <= 0.4 + 1e-5).all() and stopped.min() >= 0 and stopped.max() <= 1
    never = ~broken_early
    assert never.any()
    if restarts == 1:  # the unbroken samples get exactly the full run's point (restarts draw other starts)
        assert torch.allclose(stopped[never], plain[never], atol=1e-6)
