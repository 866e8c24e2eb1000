"""Known answers for difference quotients, pair ascent and projections."""

import pytest
import torch
from torch import nn

from lipreg.functional import (
    ascend_pairs,
    box_pairs,
    difference_quotients,
    jacobian_spectral_norm,
    noisy_pairs,
    project_onto_ball,
    project_onto_sphere,
    random_direction_pairs,
    stack_pairs,
)
from lipreg.functional.quotients import sample_norm


def linear_map(seed: int = 0, shape: tuple[int, int] = (5, 8)) -> tuple[nn.Linear, float]:
    torch.manual_seed(seed)
    layer = nn.Linear(shape[1], shape[0])
    return layer, torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item()


def abs_network() -> nn.Sequential:
    """The CLIP paper's eq. (1): |x| = ReLU(x) + ReLU(−x); layer norms √2·√2 = 2, true constant 1."""
    first, second = nn.Linear(1, 2, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        second.weight.copy_(torch.tensor([[1.0, 1.0]]))
    return nn.Sequential(first, nn.ReLU(), second)


def test_quotient_of_a_linear_map_is_bounded_by_its_largest_singular_value():
    f, sigma = linear_map()
    u, v = torch.randn(1000, 8), torch.randn(1000, 8)
    q = difference_quotients(f, u, v)
    assert q.shape == (1000,)
    assert (q <= sigma * (1 + 1e-5)).all()
    # along the top right-singular vector the bound is attained
    _, _, vh = torch.linalg.svd(f.weight.detach())
    top = difference_quotients(f, torch.zeros(1, 8), vh[:1] * 3.0)
    assert top.item() == pytest.approx(sigma, rel=1e-5)


def test_quotient_uses_one_batched_forward_over_both_points():
    calls = []

    class Counting(nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x * 2

    difference_quotients(Counting(), torch.randn(7, 3), torch.randn(7, 3))
    assert calls == [14]


def test_coincident_points_give_zero_not_nan_and_finite_gradients():
    f, _ = linear_map()
    u = torch.randn(4, 8)
    v = u.clone()
    v[0] += 1.0  # one real pair beside three coincident ones
    u.requires_grad_(True)
    v.requires_grad_(True)
    q = difference_quotients(f, u, v)
    assert torch.isfinite(q).all() and (q[1:] == 0).all() and q[0] > 0
    q.sum().backward()
    assert torch.isfinite(u.grad).all() and torch.isfinite(v.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in f.parameters())


def test_ascent_reaches_the_linear_maps_constant_within_one_percent():
    f, sigma = linear_map(seed=1, shape=(6, 10))
    u, v = noisy_pairs(torch.randn(64, 10), scale=0.5, generator=torch.Generator().manual_seed(0))
    start = difference_quotients(f, u, v).max().item()
    result = ascend_pairs(f, stack_pairs(u, v), step_size=0.1, steps=200, adaptive=True)
    reached = difference_quotients(f, result.u, result.v).max().item()
    assert start < 0.99 * sigma
    assert reached == pytest.approx(sigma, rel=0.01) and reached <= sigma * (1 + 1e-5)


def test_ascent_finds_lipschitz_one_for_the_abs_network_whose_layer_bound_is_two():
    f = abs_network()
    u, v = noisy_pairs(torch.rand(32, 1) * 4 - 2, scale=0.3, generator=torch.Generator().manual_seed(1))
    result = ascend_pairs(f, stack_pairs(u, v), step_size=0.05, steps=100, adaptive=True)
    estimate = difference_quotients(f, result.u, result.v).max().item()
    assert estimate == pytest.approx(1.0, rel=0.01) and estimate <= 1.0 + 1e-6


def test_fixed_step_ascent_does_not_lower_quotients_on_a_linear_map():
    f, _ = linear_map(seed=2)
    u, v = torch.randn(50, 8), torch.randn(50, 8)
    before = difference_quotients(f, u, v)
    result = ascend_pairs(f, stack_pairs(u, v), step_size=0.01, steps=3)
    after = difference_quotients(f, result.u, result.v)
    assert (after >= before - 1e-6).all() and (after > before + 1e-4).any()


def test_adaptive_ascent_never_lowers_a_pair_and_adapts_step_sizes():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))
    u, v = torch.randn(40, 3), torch.randn(40, 3)
    before = difference_quotients(f, u, v)
    result = ascend_pairs(f, stack_pairs(u, v), step_size=5.0, steps=10, adaptive=True)
    after = difference_quotients(f, result.u, result.v)
    assert (after >= before - 1e-5).all()
    assert result.step_size.shape == (40,) and not torch.all(result.step_size == 5.0)


def test_ascent_uses_no_backward_so_parameter_gradients_stay_untouched():
    f, _ = linear_map()
    for p in f.parameters():
        p.grad = torch.full_like(p, 7.0)
    ascend_pairs(f, torch.randn(2, 5, 8), step_size=0.1, steps=2, adaptive=True)
    assert all(torch.all(p.grad == 7.0) for p in f.parameters())


def test_ascent_respects_box_and_projection():
    f, _ = linear_map()
    x = torch.rand(20, 8)
    centres = torch.cat([x, x])
    u, v = x.clone(), random_direction_pairs(x, 0.1)
    result = ascend_pairs(f, stack_pairs(u, v), step_size=10.0, steps=3, box=(0.0, 1.0),
                          project=lambda pts: project_onto_ball(pts, centres, 0.1))
    for points in (result.u, result.v):
        assert points.min() >= 0 and points.max() <= 1
        assert (sample_norm(points - x) <= 0.1 + 1e-5).all()


def test_projections_are_per_sample():
    centres = torch.zeros(3, 2, 2)
    points = torch.stack([torch.full((2, 2), 0.01), torch.full((2, 2), 1.0), torch.full((2, 2), 100.0)])
    on_ball = project_onto_ball(points, centres, 0.5)
    on_sphere = project_onto_sphere(points, centres, 0.5)
    # norms 0.02, 2, 200: the first is inside the ball and stays; every sample reaches its own sphere
    assert torch.allclose(sample_norm(on_ball), torch.tensor([0.02, 0.5, 0.5]))
    assert torch.allclose(sample_norm(on_sphere), torch.full((3,), 0.5))
    # directions are kept
    assert torch.allclose(on_sphere[2], torch.full((2, 2), 0.25))
    linf = project_onto_ball(points, centres, 0.5, p=float("inf"))
    assert linf.abs().max() <= 0.5 and torch.allclose(linf[0], points[0])


def test_sphere_projection_of_a_point_on_its_centre_stays_finite():
    x = torch.randn(2, 3)
    assert torch.equal(project_onto_sphere(x.clone(), x, 0.3), x)


def test_pair_constructors():
    generator = torch.Generator().manual_seed(0)
    u, v = box_pairs(500, (1,), (-4.0, 4.0), scale=0.1, generator=generator)
    assert u.shape == v.shape == (500, 1)
    assert u.min() >= -4 and u.max() <= 4 and v.min() >= -4 and v.max() <= 4
    assert (u - v).abs().mean().item() == pytest.approx(0.1 * (2 / torch.pi) ** 0.5, rel=0.15)
    x = torch.rand(100, 1, 4, 4)
    a, b = noisy_pairs(x, scale=0.05, kind="uniform", box=(0.0, 1.0))
    assert torch.equal(a, x) and (b - x).abs().max() <= 0.05 + 1e-7 and b.min() >= 0
    partner = random_direction_pairs(x, 0.2)
    assert torch.allclose(sample_norm(partner - x), torch.full((100,), 0.2))
    with pytest.raises(ValueError, match="noise kind"):
        noisy_pairs(x, 0.1, kind="salt")


def test_jacobian_spectral_norm_of_a_linear_map_is_its_largest_singular_value():
    f, sigma = linear_map(seed=3)
    norms = jacobian_spectral_norm(f, torch.randn(6, 8), iterations=50)
    assert torch.allclose(norms, torch.full((6,), sigma), rtol=1e-3)


def test_jacobian_spectral_norm_is_per_sample_and_differentiable():
    f = abs_network()
    x = torch.tensor([[-1.0], [2.0]])
    norms = jacobian_spectral_norm(f, x, iterations=3)
    assert torch.allclose(norms, torch.ones(2))
    norms.sum().backward()
    assert f[0].weight.grad is not None and torch.isfinite(f[0].weight.grad).all()
