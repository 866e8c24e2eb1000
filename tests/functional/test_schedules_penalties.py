"""Table tests of the schedules and the penalty reductions."""

import pytest
import torch
from torch import nn

from lipreg.functional import (
    decay_epsilon,
    discrepancy_step,
    max_quotient,
    mean_quotient,
    squared_parameter_norm,
    warmup_finished,
)


@pytest.mark.parametrize(
    "lam,accuracy,target,step,minimum,maximum,expected",
    [
        (1.0, 0.95, 0.90, 0.5, 0.0, None, 1.5),  # above target: up
        (1.0, 0.90, 0.90, 0.5, 0.0, None, 0.5),  # at target is not above: down
        (0.2, 0.80, 0.90, 0.5, 0.0, None, 0.0),  # floored at the minimum
        (0.2, 0.80, 0.90, 0.5, 0.1, None, 0.1),
        (3.9, 0.99, 0.90, 0.5, 0.0, 4.0, 4.0),  # capped
        (0.0, 0.99, 0.85, 0.01, 0.0, None, 0.01),
    ],
)
def test_discrepancy_step(lam, accuracy, target, step, minimum, maximum, expected):
    assert discrepancy_step(lam, accuracy, target, step, minimum, maximum) == pytest.approx(expected)


def test_a_float32_coefficient_stepped_down_by_its_step_reaches_the_minimum_exactly():
    for step in (0.1, 0.05, 0.3):
        stored = float(torch.tensor(step, dtype=torch.float32))  # λ as read back from the module's buffer
        assert stored != step
        assert discrepancy_step(stored, accuracy=0.5, target=0.9, step=step) == 0.0


@pytest.mark.parametrize(
    "epsilon,factor,minimum,expected", [(1.0, 0.9, 0.0, 0.9), (0.5, 0.5, 0.0, 0.25), (0.1, 0.5, 0.08, 0.08)]
)
def test_decay_epsilon(epsilon, factor, minimum, expected):
    assert decay_epsilon(epsilon, factor, minimum) == pytest.approx(expected)


def test_ten_epochs_of_decay_shrink_epsilon_geometrically():
    epsilon = 1.0
    for _ in range(10):
        epsilon = decay_epsilon(epsilon)
    assert epsilon == pytest.approx(0.9**10)


@pytest.mark.parametrize(
    "accuracy,epochs_done,target,epochs,expected",
    [
        (0.5, 1, 0.9, None, False),
        (0.9, 1, 0.9, None, True),  # reaching the target ends it
        (None, 3, 0.9, 3, True),
        (0.5, 2, 0.9, 3, False),
        (0.95, 0, 0.9, 3, True),  # whichever comes first
    ],
)
def test_warmup_finished(accuracy, epochs_done, target, epochs, expected):
    assert warmup_finished(accuracy, epochs_done, target, epochs) is expected


def test_warmup_needs_a_criterion():
    with pytest.raises(ValueError):
        warmup_finished(0.5, 1)


def test_reductions():
    q = torch.tensor([1.0, 3.0, 2.0])
    assert max_quotient(q) == 3.0 and max_quotient(q, squared=True) == 9.0
    assert mean_quotient(q) == 2.0


def test_squared_parameter_norm():
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
        layer.bias.fill_(3.0)
    assert squared_parameter_norm(layer.parameters()).item() == pytest.approx(14.0)
    assert squared_parameter_norm([]).item() == 0.0


def test_squared_parameter_norm_gradient_is_twice_the_parameters():
    torch.manual_seed(0)
    weight, bias = torch.randn(3, 4, requires_grad=True), torch.randn(3, requires_grad=True)
    frozen = torch.randn(2)  # a tensor without gradient still counts in the value
    value = squared_parameter_norm([weight, bias, frozen])
    expected = weight.square().sum() + bias.square().sum() + frozen.square().sum()
    assert value.item() == pytest.approx(expected.item())
    (0.5 * value).backward()
    assert torch.allclose(weight.grad, weight.detach()) and torch.allclose(bias.grad, bias.detach())
    double = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: squared_parameter_norm([t, t.sin()]), (double,))
