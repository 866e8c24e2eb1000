"""A network's affine stem: its leading layers up to the first ``Linear`` when all before it are
affine (``Flatten``, ``Identity``, or a layer with an ``elementwise_affine()`` method, such as
``lipreg.nets.Normalize``), as one ``[d_in, d_out]`` matrix.

A change to ``k`` input pixels then moves the first pre-activation by ``k`` rows of that matrix,
``h(x + Δ) = h(x) + Σ_p Δ_p · M[p]``, at the cost of ``k · d_out`` multiply-adds instead of
``d_in · d_out``: what makes a Square query on an MLP, which changes two small windows, cost little
more than the network's layers after the first.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Layers that may stand before the stem's ``Linear`` besides those with ``elementwise_affine()``.
RESHAPING_LAYERS = (nn.Flatten, nn.Identity)


def _is_affine(layer: nn.Module) -> bool:
    return isinstance(layer, RESHAPING_LAYERS) or hasattr(layer, "elementwise_affine")


@dataclass(frozen=True)
class AffineStem:
    """``model(x) = tail(h(x))`` with ``h(x) = flatten(x) · M + b`` (``matrix`` ``M`` is ``[d_in, d_out]``)."""

    matrix: Tensor
    offset: Tensor
    tail: Callable[[Tensor], Tensor]

    def pre_activation(self, x: Tensor) -> Tensor:
        """``h(x) = flatten(x) · M + b``, ``[n, d_out]``."""
        return torch.addmm(self.offset, x.flatten(1), self.matrix)

    def moved(self, hidden: Tensor, indices: Tensor, changes: Tensor) -> Tensor:
        """``h(x + Δ) = h(x) + Σ_k Δ_k · M[p_k]`` for inputs changed by ``changes`` (``[n, k]``) at the flat
        ``indices`` (``[n, k]``); an index given twice adds both changes."""
        return hidden + F.embedding_bag(indices, self.matrix, per_sample_weights=changes, mode="sum")


def affine_stem(model: Callable[[Tensor], Tensor], x: Tensor, outputs: Tensor | None = None) -> AffineStem | None:
    """The affine stem of ``model`` for inputs like ``x``, or ``None`` where it has none (``outputs``:
    ``model(x)`` where the caller has it, which saves the check a forward).

    ``model`` must be an ``nn.Sequential`` or hold one as ``layers`` (lipreg's MLPs) whose layers
    before the first ``Linear`` only reshape (:data:`RESHAPING_LAYERS`) or map each input
    elementwise, ``z = x ⊙ a + c`` (``layer.elementwise_affine() -> (a, c)``, broadcastable to one
    input); the stem is ``h = W z + b``: ``M = (W diag(a))ᵀ``, ``b' = W c + b``
    (composed from the weights, so no difference of large outputs rounds them). ``None`` as well
    unless ``tail(h(x))`` reproduces ``model(x)`` on ``x`` to float32 rounding (a ``model`` that
    computes something other than its layers in turn)."""
    layers = model if isinstance(model, nn.Sequential) else getattr(model, "layers", None)
    if not isinstance(layers, nn.Sequential):
        return None
    first = next((i for i, layer in enumerate(layers) if not _is_affine(layer)), None)
    if first is None or not isinstance(layers[first], nn.Linear) or layers[first].in_features != x[0].numel():
        return None
    with torch.no_grad():
        scale, shift = torch.ones_like(x[0]), torch.zeros_like(x[0])  # z = x ⊙ scale + shift
        for layer in layers[:first]:
            if hasattr(layer, "elementwise_affine"):
                factor, term = layer.elementwise_affine()
                scale, shift = scale * factor, shift * factor + term
        if scale.shape != x[0].shape:  # e.g. per-channel factors after the Flatten: not one per input
            return None
        linear = layers[first]
        offset = linear.weight @ shift.flatten() + (0.0 if linear.bias is None else linear.bias)
        stem = AffineStem((linear.weight * scale.flatten()).T.contiguous(), offset, layers[first + 1 :])
        expected = model(x) if outputs is None else outputs
        tolerance = 1e-4 * (expected.abs() + expected.abs().max().clamp_min(1.0))
        if not bool(((stem.tail(stem.pre_activation(x)) - expected).abs() <= tolerance).all()):  # one host read
            return None
    return stem
