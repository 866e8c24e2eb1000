"""CLIP: Cheap Lipschitz training (Bungert et al., CLIP paper, Algorithms 1 and 2)."""

from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lipreg.errors import LipregError
from lipreg.functional import ascend_pairs, box_pairs, max_quotient, noisy_pairs, pair_quotients
from lipreg.functional.pairs import AscentResult, NoiseKind
from lipreg.methods.base import LipRegModule, Penalty

PairInit = Literal["heldout", "batch", "box"]


def equal_share(items: Tensor, rank: int, world: int) -> Tensor:
    """Process ``rank``'s share of ``items``: every ``world``-th from ``rank`` on, all shares equally long.

    Checkpoints all-gather the shares, which needs equal lengths, so the last ``len(items) mod world``
    items are left out.
    """
    per_process = len(items) // world
    if per_process == 0:
        raise LipregError(f"a pair set of {len(items)} pairs cannot be shared among {world} processes")
    return items[rank : per_process * world : world]


class CLIP(LipRegModule):
    """``min_θ mean loss(f_θ(x), y) + λ · max_{(x,x') ∈ X_Lip} ‖f_θ(x) − f_θ(x')‖ / ‖x − x'‖`` (eqs. (2), (5)).

    λ weighs the Lipschitz estimate against the data loss; the ``LambdaDiscrepancy`` callback
    moves it towards a target training accuracy α (Algorithm 2). Before every parameter step the
    pair set ``X_Lip`` takes ``ascent_steps`` steps of gradient ascent on its quotients
    (Algorithm 1), so it keeps tracking the pairs where the network is steepest.

    The pair set is module state (``pairs``, ``[2, P, ...]``, saved in checkpoints) that persists
    across batches, except with ``pair_init="batch"``, where each batch brings its own:

    - ``heldout``: the data module's held-out Lipschitz images and noisy copies (the paper: 6,000);
    - ``batch``: the current batch ``x`` and ``x + noise``;
    - ``box``: ``num_pairs`` points uniform in the input box and noisy copies (the paper's regression).

    Under DDP the pair set is split: each of the N processes holds and ascends ``P // N`` pairs
    (``heldout``: every N-th held-out image; ``box``: its own ``num_pairs // N`` draws), and the
    penalty is the maximum over all shares, so the set and its penalty mean what they mean in one
    process. Each process ascends its share once per step, so with N× fewer steps an epoch every
    pair also takes N× fewer ascent steps an epoch. Resuming on another number of processes
    re-deals the saved set in equal shares (the last ``P mod N`` pairs are left out).

    ``reinit_every_n_steps`` draws a fresh set every N steps (the regression experiment draws one a
    epoch). ``squared=True`` penalises ``max L²``, the CLIP reference code's variant.
    ``p`` is the norm on inputs and outputs (the paper uses Euclidean norms).

    **Active pair set** (``active_pairs: k``; the shipped CLIP configs use 32 and ``revisit_every``
    200, the class default is every pair): only pairs that can be the maximum need to
    move every step. Each step then ascends the ``k`` pairs with the largest last-known quotients
    plus a rotating slice of ``P / revisit_every`` pairs (so every pair is revisited at least every
    ``revisit_every`` steps and its cached quotient refreshed), and the penalty is the maximum over
    those. The first step after a fresh pair set ascends every pair. The trade-off, measured on
    MNIST CLIP90 over 3 seeds and on Fashion-MNIST at a reduced budget, is docs/RESULTS.md §6.

    Cost: the penalty is a maximum, so its gradient flows through one pair. The quotients of the
    moved pairs come from the ascent's own passes (adaptive steps; otherwise from one forward pass
    without a graph), and only the maximising pair goes through the network with a graph and back
    to the parameters: the same value and gradient as back-propagating through every pair. The
    ascent moves the pair set in place, in cache-sized chunks (``ascend_pairs``). A network with
    batch normalisation in it (its output for a pair depends on the others) gets unchunked passes
    over every pair instead.

    Args:
        pair_init: where the pair set comes from: ``heldout`` images, each ``batch``, or the input ``box``.
        num_pairs: the size of a ``box`` pair set.
        noise: the distribution of the second point's offset, ``gaussian`` or ``uniform``.
        noise_scale: the standard deviation (or half-width) of that offset.
        ascent_steps: gradient-ascent steps of the pair set before each parameter step.
        step_size: the ascent's step size (the first trial step with ``adaptive_step``).
        adaptive_step: per-pair step sizes, grown on success and halved on failure (Algorithm 1).
        reinit_every_n_steps: draw a fresh pair set every N steps (null: never).
        squared: penalise the squared quotient (the reference code's variant).
        p: the norm on inputs and outputs.
        active_pairs: ascend only this many top pairs plus a rotating slice each step (null: all).
        revisit_every: with ``active_pairs``, every pair is ascended at least every this many steps.
    """

    #: The penalty is the maximum over the pairs (an active pair set may then skip the others).
    maximum_penalty = True

    def __init__(
        self,
        net: nn.Module,
        pair_init: PairInit = "heldout",
        num_pairs: int | None = None,
        noise: NoiseKind = "gaussian",
        noise_scale: float = 0.1,
        ascent_steps: int = 1,
        step_size: float = 0.01,
        adaptive_step: bool = False,
        reinit_every_n_steps: int | None = None,
        squared: bool = False,
        p: float = 2.0,
        active_pairs: int | None = None,
        revisit_every: int = 10,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: the options every method has (``task``, ``lam``, ``optimizer``, …; see LipRegModule)."""
        super().__init__(net, **kwargs)
        if pair_init not in ("heldout", "batch", "box"):
            raise LipregError(f"pair_init must be 'heldout', 'batch' or 'box', got {pair_init!r}")
        if pair_init == "box" and not num_pairs:
            raise LipregError("pair_init 'box' needs num_pairs, the size of the pair set")
        if ascent_steps < 0 or step_size <= 0 or noise_scale <= 0:
            raise LipregError(
                f"need ascent_steps >= 0, step_size > 0 and noise_scale > 0; got {ascent_steps}, {step_size}, "
                f"{noise_scale}"
            )
        if reinit_every_n_steps is not None and reinit_every_n_steps < 1:
            raise LipregError(f"reinit_every_n_steps must be >= 1, got {reinit_every_n_steps}")
        if active_pairs is not None and not self.maximum_penalty:
            raise LipregError(f"active_pairs is for CLIP's maximum; {type(self).__name__} needs every pair each step")
        if (active_pairs is not None and active_pairs < 1) or revisit_every < 1:
            raise LipregError(f"need active_pairs >= 1 (or null) and revisit_every >= 1; got {active_pairs}, "
                              f"{revisit_every}")
        self.pair_init = pair_init
        self.num_pairs = num_pairs
        self.noise = noise
        self.noise_scale = noise_scale
        self.ascent_steps = ascent_steps
        self.step_size = step_size
        self.adaptive_step = adaptive_step
        self.reinit_every_n_steps = reinit_every_n_steps
        self.squared = squared
        self.p = p
        self.active_pairs = active_pairs
        self.revisit_every = revisit_every
        # The persistent pair set of this process: plain tensors, not buffers, because DDP would
        # overwrite every process's share with rank 0's; checkpoints gather all shares.
        self.pairs: Tensor | None = None  # [2, P, ...]
        self.pair_step: Tensor | None = None  # [P]
        self.pair_quotients: Tensor | None = None  # [P], the last computed quotient of each pair (active set)
        self.batch_dependent = any(isinstance(m, _BatchNorm) for m in net.modules())

    def reduce(self, moved: AscentResult) -> Penalty:
        """The penalty of the moved pair set: the maximum quotient over all processes (eq. (5)).

        The quotients (from the ascent's passes, or one forward without a graph) locate the
        maximising pair; only that pair goes through the network with a graph (every pair for a
        batch-dependent network). Under DDP each process holds a share of the pair set; the
        penalty's value is the maximum over all shares (one all-gather of the local maxima), and
        only the process that holds it contributes a gradient, scaled by the number of processes
        so that DDP's gradient averaging yields ``∇ max`` — the meaning of a single-process run.
        """
        quotients = self._with_quotients(moved).quotients  # [P]
        lip = quotients.max()
        if self.batch_dependent:
            local = max_quotient(pair_quotients(self.net, moved.pairs, self.p), self.squared)
        else:
            top_pair = moved.pairs.index_select(1, quotients.argmax().view(1))  # [2, 1, ...]: no host sync
            local = max_quotient(pair_quotients(self.net, top_pair, self.p), self.squared)
        if not self.distributed:
            return Penalty(local, lip)
        maxima = self.all_gather(lip)  # [world]: one collective a step
        owner = (maxima.argmax() == self.global_rank).to(local.dtype)
        value = max_quotient(maxima, self.squared) + (local - local.detach()) * owner * self.trainer.world_size
        return Penalty(value, maxima.max())

    def initial_pairs(self, x: Tensor) -> Tensor:
        """A fresh pair set ``[2, P, ...]`` for the batch ``x`` according to ``pair_init``."""
        generator = self.step_generator(x.device)
        if self.pair_init == "batch":
            centres = x[: self.num_pairs] if self.num_pairs else x
            return noisy_pairs(centres, self.noise_scale, self.noise, self.input_box, generator)
        world = self.world_size
        if self.pair_init == "box":
            if self.input_box is None:
                raise LipregError("pair_init 'box' needs a data module with an input_box")
            if self.num_pairs < world:
                raise LipregError(f"num_pairs ({self.num_pairs}) must be at least the number of processes ({world})")
            # num_pairs in all: each process draws its equal share (the generator is seeded per rank)
            return box_pairs(self.num_pairs // world, tuple(x.shape[1:]), self.input_box, self.noise_scale,
                             self.noise, generator, x.device)
        held_out = getattr(self.trainer.datamodule, "lipschitz_inputs", None) if self._trainer else None
        if held_out is None or len(held_out) == 0:
            raise LipregError(
                "pair_init 'heldout' needs held-out Lipschitz images: set --data.init_args.lipschitz_size "
                "(the paper uses 6000), or use pair_init 'batch' or 'box'"
            )
        held_out = held_out[: self.num_pairs] if self.num_pairs else held_out
        share = equal_share(held_out, self.global_rank, world)
        return noisy_pairs(share.to(x.device), self.noise_scale, self.noise, self.input_box, generator)

    def _pairs_for_step(self, x: Tensor) -> tuple[Tensor, Tensor | float]:
        fresh = (
            self.pair_init == "batch"
            or self.pairs is None
            or (self.reinit_every_n_steps is not None and self.global_step % self.reinit_every_n_steps == 0)
        )
        if fresh:
            self.pair_quotients = None
            return self.initial_pairs(x), self.step_size
        self.pairs, self.pair_step = self.pairs.to(x.device), self.pair_step.to(x.device)
        if self.pair_quotients is not None:
            self.pair_quotients = self.pair_quotients.to(x.device)
        return self.pairs, self.pair_step

    def active_index(self, num_pairs: int, step: int) -> Tensor:
        """The pairs training step ``step`` ascends, without repeats: the rotating slice of
        ``w = ⌈P / revisit_every⌉`` pairs and the ``active_pairs`` largest cached quotients outside it.

        Always ``min(w + active_pairs, P)`` indices, so the index is built on the device without a
        host synchronisation (a boolean mask would need ``nonzero``, which waits for the GPU).
        """
        device = self.pair_quotients.device
        width = -(-num_pairs // self.revisit_every)
        start = (step * width) % num_pairs
        rotating = (start + torch.arange(width, device=device)) % num_pairs
        top = min(self.active_pairs, num_pairs - width)
        if top == 0:
            return rotating
        outside = self.pair_quotients.index_fill(0, rotating, float("-inf"))
        return torch.cat([rotating, outside.topk(top).indices])

    def penalty(self, x: Tensor, y: Tensor) -> Penalty:
        pairs, step = self._pairs_for_step(x)
        active = self.active_pairs is not None and self.pair_init != "batch"
        if active and self.pair_quotients is not None and pairs is self.pairs:
            index = self.active_index(pairs.shape[1], self.global_step)
            moved = ascend_pairs(self.net, pairs.index_select(1, index), step.index_select(0, index),
                                 steps=self.ascent_steps, p=self.p, box=self.input_box, adaptive=self.adaptive_step,
                                 chunked=not self.batch_dependent)
            moved = self._with_quotients(moved)
            pairs.index_copy_(1, index, moved.pairs)
            step.index_copy_(0, index, moved.step_size)
            self.pair_quotients.index_copy_(0, index, moved.quotients)
            return self.reduce(moved)
        moved = ascend_pairs(
            self.net, pairs, step, steps=self.ascent_steps, p=self.p, box=self.input_box, adaptive=self.adaptive_step,
            out=pairs, chunked=not self.batch_dependent,  # the pair set is ours: move it in place
        )
        if self.pair_init != "batch":
            self.pairs, self.pair_step = moved.pairs, moved.step_size
        if active:
            moved = self._with_quotients(moved)
            self.pair_quotients = moved.quotients.clone()
        return self.reduce(moved)

    def cost_hint(self) -> str | None:
        """Advice for a run that ascends thousands of pairs every step on a CPU: the active pair set.

        ``ProgressLine`` prints it beside the measured cost of the first steps.
        """
        if not self.maximum_penalty or self.pairs is None or self.active_pairs is not None or self.pair_init == "batch":
            return None
        total = self.pairs.shape[1] * self.world_size
        if total < 1000 or self.pairs.device.type != "cpu":
            return None
        per_step = 32 + -(-total // 200)
        return (f"{type(self).__name__} ascends all {total:,} pairs every step; --model.init_args.active_pairs 32 "
                f"--model.init_args.revisit_every 200 ascends about {per_step} a step (the top 32 and a rotating "
                "1/200), the shipped CLIP configs' setting, measured against the full set in docs/RESULTS.md §6")

    def _with_quotients(self, moved: AscentResult) -> AscentResult:
        """``moved`` with its quotients (one forward without a graph where the ascent did not give them)."""
        if moved.quotients is not None:
            return moved
        with torch.no_grad():
            return AscentResult(moved.pairs, moved.step_size, pair_quotients(self.net, moved.pairs, self.p))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.pairs is None:
            return
        shares = [self.pairs[0], self.pairs[1], self.pair_step]
        if self.pair_quotients is not None:
            shares.append(self.pair_quotients)
        if self.distributed:
            shares = [self.all_gather(share) for share in shares]  # [world, P, ...]
        else:
            shares = [share.unsqueeze(0) for share in shares]
        names = ("u", "v", "step", "quotients")[: len(shares)]
        checkpoint["lipreg"]["pair_set"] = dict(zip(names, (s.cpu() for s in shares), strict=True))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("lipreg", {}).get("pair_set")
        if saved is None:
            return
        world = self.world_size
        rank = self.global_rank if self._trainer is not None else 0

        def own_share(stacked: Tensor) -> Tensor:
            if stacked.shape[0] == world:  # same number of processes: each takes its own share back
                return stacked[rank]
            return equal_share(stacked.flatten(0, 1), rank, world)  # otherwise the whole set, re-dealt

        u, v, self.pair_step = (own_share(saved[k]) for k in ("u", "v", "step"))
        self.pairs = torch.stack([u, v])
        self.pair_quotients = own_share(saved["quotients"]) if "quotients" in saved else None
