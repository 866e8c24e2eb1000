"""Square Attack (Andriushchenko, Croce, Flammarion, Hein, 2020, "Square Attack: a query-efficient
black-box adversarial attack via random search"), L∞ and L2, batched, gradient-free.

Random search on the margin loss: each query changes one random square window of the image (per
image its own window) and keeps the change if the margin ``f_y − max_{j≠y} f_j`` fell. It needs
no gradient, so it is the ensemble's check that a robust network is not merely hiding its
gradients. Images ``[B, C, H, W]`` only: the windows are squares of pixels.
"""

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lipreg.functional.attacks import Norm, check_attack, clamp_to_box, per_sample_view, select_samples
from lipreg.functional.losses import logit_margin
from lipreg.functional.pairs import Box
from lipreg.functional.progress import report_step
from lipreg.functional.quotients import sample_norm
from lipreg.functional.stem import affine_stem

#: The iterations (out of 10,000, rescaled to the query budget) after which the window share p halves.
HALVING_ITERATIONS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def window_share(p_init: float, iteration: int, queries: int) -> float:
    """The share ``p`` of the image a window covers at ``iteration``: ``p_init`` halved at each of
    :data:`HALVING_ITERATIONS` passed (Andriushchenko et al., 2020, §3; schedule rescaled to ``queries``).

    Example:
        >>> window_share(0.8, 0, 5000), window_share(0.8, 100, 5000)
        (0.8, 0.2)
    """
    scaled = int(iteration / queries * 10000)
    return p_init / 2 ** sum(scaled > k for k in HALVING_ITERATIONS)


def _centred_rectangles(rows: int, cols: int, device: torch.device) -> Tensor:
    """``Σ_{k ≥ d} 1/(k+1)²`` at each pixel, ``d`` its Chebyshev distance to the centre, unit L2 norm."""
    r = torch.arange(rows, device=device)[:, None] - rows // 2
    c = torch.arange(cols, device=device)[None, :] - cols // 2
    distance = torch.maximum(r.abs(), c.abs())  # [rows, cols]
    rings = max(rows // 2, cols // 2) + 1
    weights = 1.0 / torch.arange(1, rings + 1, device=device, dtype=torch.float32) ** 2
    tail_sums = weights.flip(0).cumsum(0).flip(0)  # tail_sums[d] = Σ_{k ≥ d} weights[k]
    pattern = tail_sums[distance]
    return pattern / pattern.norm()


@functools.lru_cache(maxsize=64)
def square_pattern(size: int, device: torch.device) -> Tensor:
    """The L2 attack's ``size × size`` update: centred rectangles, positive in the top half and
    negative in the bottom half, unit L2 norm (Andriushchenko et al., 2020, Algorithm 3's η).

    Built once per size and device (the window size changes a handful of times in a run, the
    pattern is read every query); callers must not modify it."""
    top = size // 2
    pattern = torch.cat([_centred_rectangles(top, size, device), -_centred_rectangles(size - top, size, device)])
    return pattern / pattern.norm()


def _random_signs(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=like.device).to(like.dtype) * 2 - 1


@functools.lru_cache(maxsize=64)
def window_table(size: int, height: int, width: int, device: torch.device) -> Tensor:
    """``[P, s·s]`` flat pixel indices of every ``size × size`` window of an ``height × width`` image, one
    row per place, ``P = (H − s + 1)(W − s + 1)`` (built once per size; callers must not modify it)."""
    corners = (torch.arange(height - size + 1, device=device)[:, None] * width
               + torch.arange(width - size + 1, device=device)[None, :]).flatten()
    steps = torch.arange(size, device=device)
    offsets = (steps[:, None] * width + steps[None, :]).flatten()
    return corners[:, None] + offsets[None, :]


def _window_indices(count: int, size: int, height: int, width: int, like: Tensor,
                    generator: torch.Generator | None) -> Tensor:
    """``[count, s·s]`` flat pixel indices of one ``size × size`` window at a uniformly random place per image."""
    table = window_table(size, height, width, like.device)
    return table.index_select(0, torch.randint(0, len(table), (count,), generator=generator, device=like.device))


def _windows(images: Tensor, indices: Tensor) -> Tensor:
    """The window of each image: ``[n, C, H, W]`` and ``[n, s·s]`` indices -> ``[n, C, s·s]``."""
    return images.flatten(2).gather(2, indices[:, None, :].expand(-1, images.shape[1], -1))


def _write_windows_(images: Tensor, indices: Tensor, values: Tensor) -> None:
    """Write ``[n, C, s·s]`` values into each image's window, in place (``images`` contiguous)."""
    images.view(*images.shape[:2], -1).scatter_(2, indices[:, None, :].expand(-1, images.shape[1], -1), values)


def _l2_start(x: Tensor, epsilon: float | Tensor, generator: torch.Generator | None) -> Tensor:
    """A grid of ``h//5``-pixel blocks of the pattern with random signs, scaled to L2 norm ε (one or ``[n]``)."""
    n, channels, height, width = x.shape
    block = max(height // 5, 1)
    blocks_down, blocks_across = height // block, width // block
    signs = _random_signs((n, channels, blocks_down, blocks_across), x, generator)
    tiles = signs[..., None, None] * square_pattern(block, x.device)  # [n, C, bd, ba, b, b]
    grid = tiles.permute(0, 1, 2, 4, 3, 5).reshape(n, channels, blocks_down * block, blocks_across * block)
    delta = torch.zeros_like(x)
    top, left = (height - blocks_down * block) // 2, (width - blocks_across * block) // 2
    delta[:, :, top : top + grid.shape[2], left : left + grid.shape[3]] = grid
    return x + delta * per_sample_view(epsilon / sample_norm(delta).clamp_min(1e-12), x)


def _linf_proposal(centre: Tensor, best: Tensor, epsilon: Tensor, size: int, box: Box | None,
                   generator: torch.Generator | None) -> Tensor:
    """``best`` with one window set to ``x ± ε`` (one sign per channel, ``epsilon`` ``[n]``), clamped to the box."""
    n, channels, height, width = centre.shape
    window = _window_indices(n, size, height, width, centre, generator)
    signs = _random_signs((n, channels, 1), centre, generator)
    proposal = best.clone()
    moved = torch.addcmul(_windows(centre, window), signs, per_sample_view(epsilon, signs))
    _write_windows_(proposal, window, clamp_to_box(moved, box))
    return proposal


@functools.lru_cache(maxsize=64)
def signed_patterns(size: int, device: torch.device) -> Tensor:
    """``[4, s·s]``: the L2 pattern, transposed, and both negated (:func:`square_pattern`; callers must
    not modify it)."""
    pattern = square_pattern(size, device)
    oriented = torch.stack([pattern.flatten(), pattern.T.flatten()])
    return torch.cat([oriented, -oriented])


def _new_window(old: Tensor, scale: Tensor, size: int, generator: torch.Generator | None) -> Tensor:
    """Algorithm 3's new window ``[n, C, s·s]``: the pattern (transposed at random, a random sign per
    channel) plus the direction of the ``old`` window, rescaled to the norm ``scale`` (``[n]``) per channel.
    One channel: orientation and sign are one draw of :func:`signed_patterns`' rows."""
    n, channels = old.shape[:2]
    patterns = signed_patterns(size, old.device)
    if channels == 1:
        drawn = patterns.index_select(0, torch.randint(0, 4, (n,), generator=generator, device=old.device))[:, None]
    else:
        oriented = patterns[:2].index_select(0, torch.randint(0, 2, (n,), generator=generator, device=old.device))
        drawn = oriented[:, None] * _random_signs((n, channels, 1), old, generator)
    new = drawn + old / (old.norm(dim=2, keepdim=True) + 1e-12)
    return new * (scale[:, None, None] / (new.norm(dim=2, keepdim=True) + 1e-12))


def _two_windows(n: int, size: int, height: int, width: int, like: Tensor,
                 generator: torch.Generator | None) -> Tensor:
    """Algorithm 3's two random windows per image as flat indices ``[n, 2·s·s]``: ``W₁`` the first
    ``s·s`` columns, ``W₂`` the last (:func:`_split`)."""
    table = window_table(size, height, width, like.device)
    places = torch.randint(0, len(table), (2 * n,), generator=generator, device=like.device)
    return table.index_select(0, places).view(n, -1)


def _split(windows: Tensor) -> tuple[Tensor, Tensor]:
    """``W₁``'s and ``W₂``'s columns of a ``[n, 2·s·s]`` tensor of :func:`_two_windows`."""
    return windows.tensor_split(2, dim=1)  # type: ignore[return-value]


def _l2_proposal(centre: Tensor, best: Tensor, epsilon: float | Tensor, size: int, box: Box | None,
                 generator: torch.Generator | None) -> Tensor:
    """Algorithm 3 of the paper: the perturbation's mass in two random windows moves into the first,
    which gets a new pattern; the whole perturbation is then rescaled to norm ε (one or ``[n]``).

    Four passes over the images (the difference, its norm, the rescaled sum, the clamp): the norms
    of the windows and of the new perturbation come from the windows alone,
    ``‖δ'‖² = ‖δ‖² − ‖δ_{W₁∪W₂}‖² + ‖δ'_{W₁}‖²`` with ``‖δ_{W₁∪W₂}‖² = ‖δ_{W₂}‖² + ‖δ_{W₁\\W₂}‖²``, the
    second term read from ``W₁`` once ``W₂`` is zeroed."""
    n, channels, height, width = centre.shape
    delta = best - centre
    first, second = _split(_two_windows(n, size, height, width, centre, generator))
    old = _windows(delta, first)  # [n, C, s·s]
    in_second = _windows(delta, second).square().sum(dim=(1, 2))  # ‖δ_{W₂}‖², [n]
    norm_squared = sample_norm(delta).square()  # [n]
    delta.view(n, channels, -1).scatter_(2, second[:, None, :].expand(-1, channels, -1), 0.0)
    both_squared = in_second + _windows(delta, first).square().sum(dim=(1, 2))  # ‖δ_{W₁∪W₂}‖²
    free = (epsilon**2 - norm_squared).clamp_min(0.0)  # [n]
    new = _new_window(old, (free / channels + both_squared).sqrt(), size, generator)
    _write_windows_(delta, first, new)
    new_norm = (norm_squared - both_squared).clamp_min(0.0).add_(new.square().sum(dim=(1, 2))).sqrt_()
    proposal = torch.addcmul(centre, delta, per_sample_view(epsilon / new_norm.clamp_min(1e-12), delta))
    return proposal if box is None else proposal.clamp_(*box)


@dataclass
class _WindowUpdate:
    """One L2 query's change to single-channel images, made in place: ``W₂`` set to ``x`` and then
    ``W₁`` to ``first_values`` (``both`` their indices, :func:`_two_windows`); ``*_before`` the values they had
    (``first_between`` ``W₁``'s after ``W₂`` was set), ``squared`` the changed images' ``‖δ'‖²`` (float64)."""

    both: Tensor
    first_values: Tensor
    second_values: Tensor
    first_before: Tensor
    first_between: Tensor
    second_before: Tensor
    squared: Tensor

    def keep(self, images: Tensor, kept: Tensor) -> None:
        """Keep the change in the images where ``kept`` holds, undo it in the others."""
        (first, second), flat = _split(self.both), images.view(len(images), -1)
        flat.scatter_(1, second, select_samples(kept, self.second_values, self.second_before))
        flat.scatter_(1, first, select_samples(kept, self.first_values, self.first_before))

    def changes(self) -> tuple[Tensor, Tensor]:
        """The changed pixels' flat indices and changes ``[n, 2·s·s]`` (an index of both windows twice: the
        two changes add up to its whole change), for :meth:`lipreg.functional.stem.AffineStem.moved`."""
        first, second = self.first_values - self.first_between, self.second_values - self.second_before
        return self.both, torch.cat([first, second], dim=1)


def _l2_window_update(centre: Tensor, best: Tensor, norm_squared: Tensor, epsilon_squared: Tensor, size: int,
                      box: Box | None, generator: torch.Generator | None) -> _WindowUpdate:
    """:func:`_l2_proposal` for single-channel images, computed on the two windows alone and written
    into ``best`` in place (:meth:`_WindowUpdate.keep` then keeps or undoes it per image);
    ``norm_squared`` is the current ``‖δ‖²`` and ``epsilon_squared`` the ``ε²`` per image (``[n]``, float64).

    With one channel the new window gets ``‖δ'_{W₁}‖² = ε² − ‖δ‖² + ‖δ_{W₁∪W₂}‖²``, so ``‖δ'‖ = ε``
    and the rescaling to ε is the identity (up to rounding): the proposal is ``best`` with ``W₂``
    set back to ``x`` and ``W₁`` to ``x + δ'_{W₁}`` clamped to the box, and its norm follows from
    the windows. The same random draws as :func:`_l2_proposal`, so the same search."""
    n, _, height, width = centre.shape
    both = _two_windows(n, size, height, width, centre, generator)
    (first, second), flat_best = _split(both), best.view(n, -1)
    first_centre, second_centre = _split(centre.reshape(n, -1).gather(1, both))
    first_before, second_before = _split(flat_best.gather(1, both))
    old = first_before - first_centre  # δ on W₁, [n, s·s]
    flat_best.scatter_(1, second, second_centre)  # δ' = 0 on W₂ …
    first_between = flat_best.gather(1, first)  # W₁ with W₂ zeroed: δ on W₁ \ W₂
    both_squared = ((second_before - second_centre).square().sum(dim=1, dtype=torch.float64)
                    + (first_between - first_centre).square().sum(dim=1, dtype=torch.float64))  # ‖δ_{W₁∪W₂}‖²
    free = (epsilon_squared - norm_squared).clamp_min(0.0)
    new = _new_window(old[:, None, :], (free + both_squared).sqrt().to(old.dtype), size, generator)[:, 0, :]
    first_values = clamp_to_box(first_centre + new, box)
    flat_best.scatter_(1, first, first_values)  # … and the new pattern on W₁
    squared = ((norm_squared - both_squared).clamp_min(0.0)
               + (first_values - first_centre).square().sum(dim=1, dtype=torch.float64))
    return _WindowUpdate(both, first_values, second_centre, first_before, first_between, second_before, squared)


def square(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    epsilon: float | Tensor,
    norm: Norm = "l2",
    queries: int = 5000,
    p_init: float = 0.8,
    box: Box | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Square Attack on the margin loss, untargeted, one query per remaining image per iteration.

    .. math:: \\hat x \\leftarrow x' \\text{ if } m(x') < m(\\hat x), \\quad m(x) = f_y(x) − \\max_{j≠y} f_j(x)

    ``x'`` is ``x̂`` with one random square window changed: for L∞ set to ``x ± ε`` (a random sign
    per channel), for L2 by the paper's Algorithm 3; the window covers the share
    :func:`window_share` of the image. An image leaves the search as soon as it is misclassified.
    For single-channel images under L2 each query is made in place on its two windows (the same
    draws and, up to rounding, the same proposals: :func:`_l2_window_update`); and where the
    network has an affine stem (an MLP: :func:`lipreg.functional.stem.affine_stem`) a query moves its
    first pre-activation by the two windows' pixels alone and runs only the layers after it (re-read
    in full every 256 queries, like ``‖δ‖²``, so that rounding cannot pile up).
    Starts: random ``±ε`` vertical stripes (L∞), a grid of the L2 pattern scaled to ε (L2).

    ``epsilon`` is one radius or one per image (``[B]``): the images are searched independently, so one
    call can attack every radius of an evaluation at once (an image once per radius).

    Returns:
        Detached inputs in the ε-ball and the box: the first misclassified point where one was
        found, else the point of lowest margin.
    """
    check_attack(float(epsilon.min()) if isinstance(epsilon, Tensor) else epsilon, norm)
    if x.dim() != 4:
        raise ValueError(f"square needs image batches [B, C, H, W], got shape {tuple(x.shape)}")
    if queries < 1 or not 0 < p_init <= 1:
        raise ValueError(f"need queries >= 1 and 0 < p_init <= 1, got {queries}, {p_init}")
    x = x.detach()
    n, channels, height, width = x.shape
    if isinstance(epsilon, Tensor) and epsilon.shape != (n,):
        raise ValueError(f"epsilon must be a number or one per image ({n}), got shape {tuple(epsilon.shape)}")
    radius = epsilon.to(x.dtype) if isinstance(epsilon, Tensor) else torch.full((n,), epsilon, dtype=x.dtype,
                                                                                device=x.device)  # ε per image
    with torch.no_grad():
        if norm == "linf":
            stripes = _random_signs((n, channels, 1, width), x, generator)
            best = clamp_to_box(torch.addcmul(x, stripes, per_sample_view(radius, x)), box)
        else:
            best = clamp_to_box(_l2_start(x, radius, generator), box)
        start = model(best)
        margin = logit_margin(start, y)
        result = best.clone()
        index = torch.arange(n, device=x.device)
        centre, labels = x, y
        windowed = norm == "l2" and channels == 1  # the proposal from the windows alone (_l2_window_update)
        stem = affine_stem(model, best, start) if windowed else None  # then a query moves the first layer by its pixels
        hidden = stem.pre_activation(best) if stem is not None else best.new_empty(n, 0)  # the stem's output
        norm_squared = sample_norm(best - x).double().square()  # ‖δ‖², kept up to date by the windowed search
        radius_squared = epsilon.double().square() if isinstance(epsilon, Tensor) else torch.full_like(
            norm_squared, epsilon**2)  # ε² per image, float64, from ε as given
        for step in range(queries - 1):  # the start was the first query
            robust = margin > 0
            if not robust.all():  # the one host read of a query; a compaction adds one index
                broken = (~robust).nonzero().squeeze(1)
                result.index_copy_(0, index.index_select(0, broken), best.index_select(0, broken))
                kept = robust.nonzero().squeeze(1)
                index, centre, best, margin, labels, norm_squared, hidden, radius, radius_squared = (
                    t.index_select(0, kept) for t in (index, centre, best, margin, labels, norm_squared, hidden,
                                                      radius, radius_squared))
            if len(index) == 0:
                break
            side = round(math.sqrt(window_share(p_init, step, queries) * height * width))
            if windowed:  # in place on the windows: no full-image pass but the forward (none at all with a stem)
                if step % 256 == 0:  # the running ‖δ‖² (and stem output) re-read, so that rounding cannot pile up
                    norm_squared = sample_norm(best - centre).double().square()
                    if stem is not None:
                        hidden = stem.pre_activation(best)
                update = _l2_window_update(centre, best, norm_squared, radius_squared,
                                           min(max(side, 3) | 1, height, width), box, generator)
                if stem is not None:
                    new_hidden = stem.moved(hidden, *update.changes())
                    new_margin = logit_margin(stem.tail(new_hidden), labels)
                else:
                    new_margin = logit_margin(model(best), labels)
                better = new_margin < margin
                update.keep(best, better)
                norm_squared = torch.where(better, update.squared, norm_squared)
                if stem is not None:
                    hidden = select_samples(better, new_hidden, hidden)
            else:
                if norm == "linf":
                    proposal = _linf_proposal(centre, best, radius, min(max(side, 1), height, width), box, generator)
                else:  # windows of odd size, at least 3
                    proposal = _l2_proposal(centre, best, radius, min(max(side, 3) | 1, height, width), box, generator)
                new_margin = logit_margin(model(proposal), labels)
                better = new_margin < margin
                best = select_samples(better, proposal, best)
            margin = torch.where(better, new_margin, margin)
            report_step()
        result[index] = best
    return result
