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
from lipreg.functional.losses import label_mask, logit_margin
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
    return corners[:, None] + window_offsets(size, width, device)[None, :]


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
    new = torch.addcmul(drawn, old, old.norm(dim=2, keepdim=True).add_(1e-12).reciprocal_())
    return new.mul_(scale[:, None, None] / new.norm(dim=2, keepdim=True).add_(1e-12))


@functools.lru_cache(maxsize=64)
def window_offsets(size: int, width: int, device: torch.device) -> Tensor:
    """``[s·s]``: the flat offsets of a ``size × size`` window's pixels from its corner, row by row (callers
    must not modify it)."""
    steps = torch.arange(size, device=device)
    return (steps[:, None] * width + steps[None, :]).flatten()


@functools.lru_cache(maxsize=64)
def outside_table(size: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[(2(H − s) + 1)(2(W − s) + 1), 2·s·s]``, one row per displacement ``(r₁ − r₂, c₁ − c₂)`` of a window
    ``W₁`` from ``W₂`` (row-major from ``(s − H, s − W)``): 0 at the pixels of ``W₁`` inside ``W₂`` and 1 at
    the others, in :func:`_two_windows`' order (pixel ``(i, j)`` of ``W₁`` is inside iff ``0 ≤ r₁ − r₂ + i < s``
    and ``0 ≤ c₁ − c₂ + j < s``; the second half, ``W₂``'s own, all 1). A factor, not a bool mask: a product
    is one vectorised pass where a masked fill is several times slower. Built once per size; callers must
    not modify it."""
    steps = torch.arange(size, device=device)

    def inside(span: int) -> Tensor:  # [2·span + 1, s]: displacement d, step i -> 0 <= d + i < s
        offsets = torch.arange(-span, span + 1, device=device)[:, None] + steps
        return (offsets >= 0) & (offsets < size)

    rows, cols = inside(height - size), inside(width - size)
    first = ~(rows[:, None, :, None] & cols[None, :, None, :]).flatten(2).flatten(0, 1)
    return torch.cat([first, torch.ones_like(first)], dim=1).to(dtype)


def _two_windows(n: int, size: int, height: int, width: int, like: Tensor,
                 generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Algorithm 3's two random windows per image, each at a uniformly random place (a row of
    :func:`window_table`): their flat pixel indices ``[n, 2·s·s]`` (``W₁`` the first ``s·s`` columns, ``W₂`` the
    last, :func:`_split`) and, in the same order and ``like``'s dtype, 0 at the pixels of ``W₁`` inside ``W₂``
    and 1 elsewhere (:func:`outside_table`).

    Place ``p`` is corner ``(r, c) = (p // (W − s + 1), p mod (W − s + 1))``, at flat index ``p + r(s − 1)``;
    its key ``p + r(W − s) = r(2(W − s) + 1) + c`` gives the displacement's row of the table as ``key₁ − key₂``
    plus that of ``(0, 0)``."""
    across = width - size + 1
    places = torch.randint(0, (height - size + 1) * across, (2 * n,), generator=generator, device=like.device)
    rows = places.div(across, rounding_mode="floor")
    corners, keys = torch.add(places, rows, alpha=size - 1).view(n, 2), torch.add(places, rows, alpha=width - size)
    keys = keys.view(n, 2)
    displacement = (keys[:, 0] - keys[:, 1]).add_((height - size) * (2 * (width - size) + 1) + width - size)
    indices = (corners[:, :, None] + window_offsets(size, width, like.device)).view(n, -1)
    return indices, outside_table(size, height, width, like.device, like.dtype).index_select(0, displacement)


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
    first, second = _split(_two_windows(n, size, height, width, centre, generator)[0])
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


#: A dtype twice as wide as each pixel dtype: it holds a pixel's ``x`` and ``x̂`` side by side (:class:`_PixelPairs`).
PAIR_DTYPES = {torch.float32: torch.int64, torch.float64: torch.complex128, torch.float16: torch.int32,
               torch.bfloat16: torch.int32}


class _PixelPairs:
    """The searched images' pixels, ``x`` and ``x̂`` side by side: ``data`` ``[n, d, 2]``. Read as one element
    of :data:`PAIR_DTYPES` each, a window of both comes in one gather of half as many elements as from
    two buffers (a gather's cost goes by the elements it reads)."""

    def __init__(self, centre: Tensor, best: Tensor) -> None:
        self.data = torch.stack([centre.flatten(1), best.flatten(1)], dim=2)

    @property
    def centre(self) -> Tensor:
        """``x``, ``[n, d]`` (a strided view)."""
        return self.data[..., 0]

    @property
    def best(self) -> Tensor:
        """``x̂``, ``[n, d]`` (a strided view)."""
        return self.data[..., 1]

    def read(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` and ``x̂`` at the flat pixel ``indices`` of each image (``[n, k]`` each, strided views)."""
        wide = self.data.view(PAIR_DTYPES[self.data.dtype]).squeeze(2)  # [n, d]: one element per pixel pair
        pairs = wide.gather(1, indices).view(self.data.dtype).unflatten(1, (-1, 2))
        return pairs[..., 0], pairs[..., 1]

    def positions(self, indices: Tensor, rows: Tensor | None = None) -> Tensor:
        """Where ``x̂`` at the flat pixel ``indices`` (``[n, k]``: of every image, or of the ``rows`` given) lies in
        ``data``'s storage."""
        rows = torch.arange(len(indices), device=indices.device) if rows is None else rows
        return torch.add((rows * (2 * self.data.shape[1]) + 1)[:, None], indices, alpha=2)

    def put_(self, positions: Tensor, values: Tensor) -> None:
        """Write ``values`` at :meth:`positions`, in place."""
        self.data.view(-1).put_(positions, values)

    def keep(self, rows: Tensor) -> None:
        """Keep the images ``rows`` alone."""
        self.data = self.data.index_select(0, rows)


@dataclass
class _WindowUpdate:
    """One L2 query's change to single-channel images: ``W₂`` set to ``x`` and then ``W₁`` to
    ``first_values`` (``both`` their indices, :func:`_two_windows`); ``*_before`` the values they have,
    ``change`` the change per index (:meth:`changes`), ``squared`` the changed images' ``‖δ'‖²`` (float64)."""

    both: Tensor
    first_values: Tensor
    second_values: Tensor
    first_before: Tensor
    second_before: Tensor
    change: Tensor
    squared: Tensor

    def write(self, images: _PixelPairs, rows: Tensor | None = None) -> None:
        """Make the change in ``x̂``, in place: in all images, or in the ``rows`` given (``[a]`` indices)."""
        if rows is None:
            first, second = _split(images.positions(self.both))
            images.put_(second, self.second_values)
            images.put_(first, self.first_values)
            return
        first, second = _split(images.positions(self.both.index_select(0, rows), rows))
        images.put_(second, self.second_values.index_select(0, rows))
        images.put_(first, self.first_values.index_select(0, rows))

    def keep(self, images: _PixelPairs, kept: Tensor) -> None:
        """After :meth:`write` to all images: keep the change where ``kept`` holds, undo it in the others."""
        first, second = _split(images.positions(self.both))
        images.put_(second, select_samples(kept, self.second_values, self.second_before))
        images.put_(first, select_samples(kept, self.first_values, self.first_before))

    def changes(self) -> tuple[Tensor, Tensor]:
        """The changed pixels' flat indices and changes ``[n, 2·s·s]`` (an index of both windows twice: the
        two changes add up to its whole change), for :meth:`lipreg.functional.stem.AffineStem.moved`."""
        return self.both, self.change


def _l2_window_update(images: _PixelPairs, norm_squared: Tensor, epsilon_squared: Tensor, size: int,
                      height: int, width: int, box: Box | None, generator: torch.Generator | None) -> _WindowUpdate:
    """:func:`_l2_proposal` for single-channel ``height × width`` images, computed on the two windows
    alone, the images left as they are (:meth:`_WindowUpdate.write` makes the change); ``norm_squared``
    is the current ``‖δ‖²`` and ``epsilon_squared`` the ``ε²`` per image (``[n]``, float64).

    With one channel the new window gets ``‖δ'_{W₁}‖² = ε² − ‖δ‖² + ‖δ_{W₁∪W₂}‖²``, so ``‖δ'‖ = ε``
    and the rescaling to ε is the identity (up to rounding): the proposal is ``x̂`` with ``W₂``
    set back to ``x`` and ``W₁`` to ``x + δ'_{W₁}`` clamped to the box, and its norm follows from
    the windows: ``‖δ_{W₁∪W₂}‖²`` is the sum over ``W₂`` and over the pixels of ``W₁`` outside ``W₂``. The
    change is ``δ'_{W₁} − δ_{W₁∖W₂}`` on ``W₁`` and ``−δ_{W₂}`` on ``W₂``. The same random draws as
    :func:`_l2_proposal`, so the same search."""
    n = len(norm_squared)
    both, outside = _two_windows(n, size, height, width, images.data, generator)
    centre_values, before = images.read(both)
    delta = before - centre_values  # δ on both windows
    once = delta.mul_(outside)  # δ on W₁ ∖ W₂, then on W₂: each pixel of W₁ ∪ W₂ once
    both_squared = torch.linalg.vector_norm(once, dim=1).double().square_()  # ‖δ_{W₁∪W₂}‖²
    (first_centre, second_centre), (first_before, second_before) = _split(centre_values), _split(before)
    scale = (epsilon_squared - norm_squared).clamp_min_(0.0).add_(both_squared).sqrt_().to(once.dtype)
    new = _new_window((first_before - first_centre)[:, None, :], scale, size, generator)[:, 0, :]  # from δ on W₁
    first_values = clamp_to_box(first_centre + new, box)
    new_delta = first_values - first_centre  # δ' on W₁
    squared = (norm_squared - both_squared).clamp_min_(0.0).add_(
        torch.linalg.vector_norm(new_delta, dim=1).double().square_())
    change = once.neg_()
    _split(change)[0].add_(new_delta)
    return _WindowUpdate(both, first_values, second_centre, first_before, second_before, change, squared)


def _windowed_l2_search(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, best: Tensor, start: Tensor,
                        epsilon_squared: Tensor, queries: int, p_init: float, box: Box | None,
                        generator: torch.Generator | None) -> Tensor:
    """:func:`square`'s L2 search on single-channel images from ``best`` (``start`` its outputs, ``epsilon_squared``
    the ``ε²`` per image, float64), each query made on its two windows alone (:func:`_l2_window_update`).

    Where the network has an affine stem (an MLP: :func:`lipreg.functional.stem.affine_stem`) a query moves
    its first pre-activation by the two windows' pixels alone, runs only the layers after it, and writes
    its change only into the images that keep it; the running ``‖δ‖²`` and stem output are re-read in full
    every 256 queries, so that rounding cannot pile up. Otherwise each query writes its change, runs the
    network, and undoes it where the margin did not fall."""
    n, channels, height, width = x.shape
    margin = logit_margin(start, y)
    result = best.clone()
    index, labels, masks = torch.arange(n, device=x.device), y, label_mask(y, start.shape[1], start.dtype)
    images = _PixelPairs(x, best)
    stem = affine_stem(model, best, start)
    hidden = stem.pre_activation(best) if stem is not None else best.new_empty(n, 0)  # the stem's output
    norm_squared = sample_norm(best - x).double().square()  # ‖δ‖², kept up to date from the windows
    check = True  # whether the last query may have broken an image (then one host read says)
    for step in range(queries - 1):  # the start was the first query
        if check and not bool((margin > 0).all()):  # the one host read of a query; a compaction adds one index
            robust = margin > 0
            broken = (~robust).nonzero().squeeze(1)
            result.index_copy_(0, index.index_select(0, broken), images.best.index_select(0, broken).view(
                -1, channels, height, width))
            kept = robust.nonzero().squeeze(1)
            images.keep(kept)
            index, margin, labels, masks, norm_squared, hidden, epsilon_squared = (
                t.index_select(0, kept) for t in (index, margin, labels, masks, norm_squared, hidden, epsilon_squared))
        if len(index) == 0:
            break
        if step % 256 == 0:  # the running ‖δ‖² (and stem output) re-read, so that rounding cannot pile up
            norm_squared = torch.linalg.vector_norm(images.best - images.centre, dim=1).double().square()
            if stem is not None:
                hidden = stem.pre_activation(images.best)
        side = round(math.sqrt(window_share(p_init, step, queries) * height * width))  # odd, at least 3
        update = _l2_window_update(images, norm_squared, epsilon_squared, min(max(side, 3) | 1, height, width),
                                   height, width, box, generator)
        if stem is not None:  # the margins from the windows' pixels; only the accepted changes are written
            new_hidden = stem.moved(hidden, *update.changes())
            new_margin = logit_margin(stem.tail(new_hidden), labels, masks)
            better = new_margin < margin
            accepted, newly_broken = torch.stack([better.sum(), (new_margin <= 0).sum()]).tolist()  # ≤ 0 < margin
            rows = torch.nonzero_static(better, size=accepted).squeeze(1)  # the count is read: no sync
            update.write(images, rows)
            hidden.index_copy_(0, rows, new_hidden.index_select(0, rows))
            check = newly_broken > 0
        else:
            update.write(images)
            new_margin = logit_margin(model(images.best.unflatten(1, (channels, height, width)).contiguous()), labels,
                                      masks)
            better = new_margin < margin
            update.keep(images, better)
        norm_squared = torch.where(better, update.squared, norm_squared)
        margin = torch.where(better, new_margin, margin)
        report_step()
    result[index] = images.best.reshape(-1, channels, height, width)
    return result


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
    For single-channel images under L2 each query is computed on its two windows alone (the same
    draws and, up to rounding, the same proposals: :func:`_windowed_l2_search`); where the
    network has an affine stem (an MLP) a query then runs only the layers after its first.
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
        if norm == "l2" and channels == 1:  # the proposal from the windows alone
            radius_squared = epsilon.double().square() if isinstance(epsilon, Tensor) else torch.full(
                (n,), epsilon**2, dtype=torch.float64, device=x.device)  # ε² per image, float64, from ε as given
            return _windowed_l2_search(model, x, y, best, start, radius_squared, queries, p_init, box, generator)
        margin = logit_margin(start, y)
        result = best.clone()
        index = torch.arange(n, device=x.device)
        centre, labels, masks = x, y, label_mask(y, start.shape[1], start.dtype)
        for step in range(queries - 1):  # the start was the first query
            robust = margin > 0
            if not robust.all():  # the one host read of a query; a compaction adds one index
                broken = (~robust).nonzero().squeeze(1)
                result.index_copy_(0, index.index_select(0, broken), best.index_select(0, broken))
                kept = robust.nonzero().squeeze(1)
                index, centre, best, margin, labels, masks, radius = (
                    t.index_select(0, kept) for t in (index, centre, best, margin, labels, masks, radius))
            if len(index) == 0:
                break
            side = round(math.sqrt(window_share(p_init, step, queries) * height * width))
            if norm == "linf":
                proposal = _linf_proposal(centre, best, radius, min(max(side, 1), height, width), box, generator)
            else:  # windows of odd size, at least 3
                proposal = _l2_proposal(centre, best, radius, min(max(side, 3) | 1, height, width), box, generator)
            new_margin = logit_margin(model(proposal), labels, masks)
            better = new_margin < margin
            best = select_samples(better, proposal, best)
            margin = torch.where(better, new_margin, margin)
            report_step()
        result[index] = best
    return result
