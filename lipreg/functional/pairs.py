"""Pair sets for Lipschitz estimation and their adversarial update (CLIP paper, Algorithm 1).

A pair set is two tensors ``u, v`` of shape ``[P, ...]``. The functions here build pair sets,
move them uphill on the difference quotient, and project them back into ε-balls, all with
``torch.autograd.grad`` so nothing reaches the parameters' ``.grad`` fields.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lipreg.devices import float32_maths
from lipreg.functional.quotients import MIN_DISTANCE, differentiable_copy, pair_quotients, sample_norm

NoiseKind = Literal["gaussian", "uniform"]
Box = tuple[float, float]


def _per_sample(scale: Tensor, like: Tensor) -> Tensor:
    """Reshape a ``[B]`` tensor so it broadcasts over the sample dimensions of ``like``."""
    return scale.view(-1, *([1] * (like.dim() - 1)))


def _clamp(x: Tensor, box: Box | None) -> Tensor:
    return x if box is None else x.clamp(box[0], box[1])


def noisy_pairs(
    x: Tensor,
    scale: float,
    kind: NoiseKind = "gaussian",
    box: Box | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pairs ``(x, x + noise)``: the CLIP paper's Lipschitz set of images and their noisy copies.

    ``gaussian`` noise has standard deviation ``scale``; ``uniform`` noise lies in
    ``[-scale, scale]``. The noisy copy is clamped to ``box`` when one is given. Returns the
    stacked pair set ``[2, P, ...]`` (``u, v = noisy_pairs(…)`` unpacks it).
    """
    if scale <= 0:
        raise ValueError(f"noise scale must be positive, got {scale}")
    if kind == "gaussian":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * scale
    elif kind == "uniform":
        noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * scale
    else:
        raise ValueError(f"unknown noise kind {kind!r}; choose 'gaussian' or 'uniform'")
    return torch.stack([x, _clamp(x + noise, box)])


def box_pairs(
    num_pairs: int,
    sample_shape: tuple[int, ...],
    box: Box,
    scale: float,
    kind: NoiseKind = "gaussian",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Pairs ``[2, P, ...]`` with ``u`` uniform in the box and ``v`` a noisy perturbation of ``u``.

    The CLIP paper's regression experiment (§4.1): x ∈ [−4, 4], x' a noise perturbation of x.
    """
    low, high = box
    if not high > low:
        raise ValueError(f"box must have low < high, got {box}")
    u = low + (high - low) * torch.rand((num_pairs, *sample_shape), generator=generator, device=device)
    return noisy_pairs(u, scale, kind, box, generator)


def random_direction_pairs(x: Tensor, epsilon: Tensor | float, generator: torch.Generator | None = None) -> Tensor:
    """The point ``x + ε·d`` for each sample, ``d`` a uniformly random unit direction (L2)."""
    d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    d = d / _per_sample(sample_norm(d).clamp_min(MIN_DISTANCE), d)
    return x + epsilon * d


def project_onto_ball(points: Tensor, centres: Tensor, epsilon: Tensor | float, p: float = 2.0) -> Tensor:
    """Project each point onto the closed L_p ε-ball around its own centre, per sample.

    .. math:: \\Pi(x) = c + (x - c)\\,\\min\\left(1, \\frac{\\varepsilon}{\\|x - c\\|}\\right)

    For ``p = inf`` this is the exact projection (a clamp); for other ``p`` it is the radial
    rescaling, which is the exact projection for ``p = 2``.
    """
    delta = points - centres
    if p == float("inf"):
        return centres + delta.clamp(-epsilon, epsilon)
    radius = sample_norm(delta, p)
    factor = torch.clamp(epsilon / radius.clamp_min(MIN_DISTANCE), max=1.0)
    return centres + delta * _per_sample(factor, delta)


def project_onto_sphere(points: Tensor, centres: Tensor, epsilon: Tensor | float, p: float = 2.0) -> Tensor:
    """Move each point radially onto the L_p ε-sphere around its own centre, per sample.

    .. math:: x \\leftarrow c + \\varepsilon \\frac{x - c}{\\|x - c\\|}

    (the projection step of the FLIP slides' pTV algorithm). A point sitting exactly on its
    centre has no direction and stays where it is.
    """
    delta = points - centres
    radius = sample_norm(delta, p)
    factor = torch.where(radius < MIN_DISTANCE, torch.zeros_like(radius), epsilon / radius.clamp_min(MIN_DISTANCE))
    return centres + delta * _per_sample(factor, delta)


@dataclass(frozen=True)
class AscentResult:
    """The outcome of :func:`ascend_pairs`: the moved pair set, the per-pair step sizes to reuse and,
    where the ascent already computed them (adaptive steps), the pairs' quotients."""

    pairs: Tensor  # [2, P, ...]
    step_size: Tensor  # [P]
    quotients: Tensor | None  # [P], detached; None when unknown without another forward pass

    @property
    def u(self) -> Tensor:
        """The first points of the pairs, ``[P, ...]``."""
        return self.pairs[0]

    @property
    def v(self) -> Tensor:
        """The second points of the pairs, ``[P, ...]``."""
        return self.pairs[1]


def _quotients_and_input_grad(model: Callable[[Tensor], Tensor], pairs: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """Quotients of the pairs and the gradient of ``Σ q²/2`` with respect to every point: ``[P], [2, P, ...]``.

    For ``p = 2`` autograd runs only through the model: with ``q = o/d`` (``o`` the output gap,
    ``d = ‖u − v‖``), ``∇(q²/2) = (q/d)·∇o − (q²/d²)·(±(u − v))``, and the second term is added in
    place; this saves a third of the elementwise work of the step on large pair sets.
    """
    if p != 2.0:
        with torch.enable_grad():
            points = differentiable_copy(pairs)
            q = pair_quotients(model, points, p)
            (grad,) = torch.autograd.grad(0.5 * q.square().sum(), points)
        return q.detach(), grad
    num_pairs = pairs.shape[1]
    with torch.enable_grad():
        points = differentiable_copy(pairs)
        outputs = model(points.flatten(0, 1))  # [2P, out]
        output_gap = sample_norm(outputs[:num_pairs] - outputs[num_pairs:])  # [P]
    difference = pairs[0] - pairs[1]
    distance = sample_norm(difference).clamp_min(MIN_DISTANCE)
    # a coincident pair has quotient 0 (pair_quotients) and so gradient 0
    q = torch.where(distance <= MIN_DISTANCE, torch.zeros_like(distance), output_gap.detach() / distance)
    (grad,) = torch.autograd.grad(output_gap, points, grad_outputs=q / distance)
    coefficient = _per_sample(q.square() / distance.square(), difference)
    grad[0].addcmul_(difference, coefficient, value=-1.0)
    grad[1].addcmul_(difference, coefficient)
    return q, grad


#: The ascent works through the pair set in chunks of about this many bytes of pair points: each
#: chunk's temporaries then stay in the CPU's caches, and no step allocates a tensor above glibc's
#: 32 MiB mmap threshold (a fresh mapping is page-faulted in again on every allocation).
CHUNK_BYTES = 8 * 2**20


def chunk_length(num_pairs: int, pair_bytes: int, device: torch.device, chunked: bool = True) -> int:
    """How many pairs the ascent moves at a time: :data:`CHUNK_BYTES` worth on a CPU (cache locality),
    all of them on a GPU (there chunks would only multiply the kernel launches) or when not ``chunked``."""
    if not chunked or device.type != "cpu":
        return num_pairs
    return max(1, CHUNK_BYTES // pair_bytes)


def _ascend_chunk(
    model: Callable[[Tensor], Tensor],
    pairs: Tensor,
    tau: Tensor,
    steps: int,
    p: float,
    box: Box | None,
    project: Callable[[Tensor], Tensor] | None,
    adaptive: bool,
    grow: float,
    shrink: float,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`ascend_pairs` on one chunk ``[2, C, ...]`` (``steps >= 1``): pairs, step sizes, quotients or None."""
    num_pairs = pairs.shape[1]
    if should_stop is not None and should_stop():  # no step at all: only the quotients where the pairs are
        with torch.no_grad():
            return pairs, tau, pair_quotients(model, pairs, p) if adaptive else None

    def per_pair(values: Tensor) -> Tensor:  # [C] -> [1, C, 1, ...], broadcasting over [2, C, ...]
        return values.view(1, num_pairs, *([1] * (pairs.dim() - 2)))

    def trial(grad: Tensor) -> Tensor:
        candidate = torch.addcmul(pairs, per_pair(tau), grad)  # grad of q²/2 is q·∇q
        if project is not None:
            candidate = project(candidate.flatten(0, 1)).view_as(candidate)
        return candidate if box is None else candidate.clamp_(box[0], box[1])

    q, grad = _quotients_and_input_grad(model, pairs, p)
    for step in range(steps):
        if step > 0 and should_stop is not None and should_stop():
            return pairs, tau, q if adaptive else None  # q: the quotients of these pairs
        last = step + 1 == steps
        candidate = trial(grad)
        if not adaptive:
            pairs = candidate
            if last:
                return pairs, tau, None
            q, grad = _quotients_and_input_grad(model, pairs, p)
            continue
        if last:
            with torch.no_grad():
                new_q = pair_quotients(model, candidate, p)
        else:
            new_q, new_grad = _quotients_and_input_grad(model, candidate, p)
        accept = new_q >= q  # [C]
        pairs = torch.where(per_pair(accept), candidate, pairs, out=candidate)  # candidate is ours: reuse it
        if not last:
            grad = torch.where(per_pair(accept), new_grad, grad)
        q = torch.where(accept, new_q, q)
        tau = torch.where(accept, tau * grow, tau * shrink)
    return pairs, tau, q


def ascend_pairs(
    model: Callable[[Tensor], Tensor],
    pairs: Tensor,
    step_size: Tensor | float,
    steps: int = 1,
    p: float = 2.0,
    box: Box | None = None,
    project: Callable[[Tensor], Tensor] | None = None,
    adaptive: bool = False,
    grow: float = 1.5,
    shrink: float = 0.5,
    out: Tensor | None = None,
    chunked: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> AscentResult:
    """Gradient ascent of every pair on its own difference quotient (CLIP paper, Algorithm 1).

    .. math::
        x \\leftarrow x + \\tau\\,L(x, x')\\,\\nabla_x L(x, x'), \\qquad
        x' \\leftarrow x' + \\tau\\,L(x, x')\\,\\nabla_{x'} L(x, x')

    i.e. ascent on ``L²/2``, for all pairs of the stacked set ``pairs = [u, v]`` (``[2, P, ...]``,
    see :func:`~lipreg.functional.quotients.stack_pairs`): batched forward and backward passes.
    After each step the points are projected with ``project`` (given ``[2P, ...]``, e.g. onto an
    ε-ball) and clamped to ``box``.

    With ``adaptive=True`` each pair keeps its own step size: a step that raises the pair's
    quotient is accepted and its step size grows by ``grow``; one that does not is rejected
    (the pair stays put) and its step size shrinks by ``shrink``. This costs one extra forward;
    the last step's trial points need no gradient, and the quotients of the returned pairs come
    from these passes (``AscentResult.quotients``).

    Every pair moves on its own quotient, so on a CPU the pair set is worked through in chunks of
    :data:`CHUNK_BYTES` (all steps of one chunk, then the next): the same result, with less
    memory traffic; on a GPU it moves in one piece (chunks would only multiply kernel launches). Pass
    ``chunked=False`` for a network whose output for a sample depends on the
    rest of its batch (batch normalisation in training mode), and whenever ``project`` needs the
    whole set (it is then given it in one piece anyway).

    Args:
        out: where to write the moved pairs (may be ``pairs`` itself, to move a pair set in place);
            default a new tensor.
        should_stop: asked before each step of each chunk; once it says so the ascent ends (the
            chunks not begun keep their pairs), e.g. a time budget that is spent.

    Only ``torch.autograd.grad`` is used, so the model's parameter gradients are untouched; the
    returned tensors are detached. Under autocast (``bf16-mixed``, ``16-mixed``) the ascent still
    runs in float32 (:func:`~lipreg.devices.float32_maths`): with bf16 logits a third of the accept
    decisions flipped at initialisation (``benchmarks/mixed_precision.py``).
    """
    with float32_maths(pairs.device):
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if pairs.dim() < 2 or pairs.shape[0] != 2:
            raise ValueError(f"a pair set is a [2, P, ...] tensor, got shape {tuple(pairs.shape)}")
        num_pairs = pairs.shape[1]
        if isinstance(step_size, Tensor):
            tau = step_size.to(pairs.device, pairs.dtype).expand(num_pairs).clone()
        else:  # filled on the device: a tensor made from a Python number is a host-to-device copy
            tau = torch.full((num_pairs,), float(step_size), dtype=pairs.dtype, device=pairs.device)
        pairs = pairs.detach()
        if steps == 0:
            return AscentResult(pairs if out is None else out.copy_(pairs), tau, None)
        pair_bytes = 2 * pairs[0, 0].numel() * pairs.element_size()
        chunk = chunk_length(num_pairs, pair_bytes, pairs.device, chunked and project is None)
        if chunk >= num_pairs and out is None:  # one piece: no copy into a separate result
            moved, tau, quotients = _ascend_chunk(model, pairs, tau, steps, p, box, project, adaptive, grow, shrink,
                                                  should_stop)
            return AscentResult(moved, tau, quotients)
        moved = torch.empty_like(pairs) if out is None else out
        quotients = torch.empty_like(tau) if adaptive else None
        for start in range(0, num_pairs, chunk):
            part = slice(start, start + chunk)
            chunk_pairs, chunk_tau, chunk_q = _ascend_chunk(
                model, pairs[:, part].contiguous(), tau[part], steps, p, box, project, adaptive, grow, shrink,
                should_stop,
            )
            moved[:, part] = chunk_pairs
            tau[part] = chunk_tau
            if quotients is not None:
                quotients[part] = chunk_q
        return AscentResult(moved, tau, quotients)
