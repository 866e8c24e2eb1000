"""Which test images an evaluation attacks: the first ``sample_size`` of them, in chunks that fit a time budget."""

import time
from collections.abc import Iterator

import torch
from torch import Tensor


class ImageSchedule:
    """One gate for the images an evaluation attacks: the first ``sample_size`` (all when ``None``) and,
    with a budget of ``minutes``, only as many as fit into it.

    lipreg's data modules shard evaluation data as ``rank, rank + world_size, …``; each process takes
    its part of the first ``sample_size``, so together they evaluate exactly the images one process would.

    With a time budget, the attacks get ``attack_share`` of it; the rest is kept for what follows
    them (the training accuracy, the Lipschitz lower bound, whose ascent stops when the whole budget
    is :meth:`spent`). Images go in chunks: the first of ``first_chunk`` images, then as many as the
    measured seconds per image say fit into ``chunk_share`` of the budget (at most what is left of the
    attacks' share), so the decision to stop comes on time even when one batch would take longer
    than the whole budget. A chunk is gathered over test batches: the images of a batch that do not
    fill one wait for the next batch (:meth:`rest` attacks those left at the end), since an attack
    step costs nearly as much on a few images as on a chunk of thousands where the network is small.
    Once a chunk would not fit, no further image is attacked (:attr:`reached`). Without a budget a
    batch is one chunk.
    """

    def __init__(self, sample_size: int | None = None, rank: int = 0, world_size: int = 1,
                 minutes: float | None = None, first_chunk: int = 32, chunk_share: float = 0.25,
                 attack_share: float = 0.8) -> None:
        self.remaining = None if sample_size is None else len(range(rank, sample_size, world_size))
        self.total = None if minutes is None else 60.0 * minutes
        self.seconds = None if self.total is None else attack_share * self.total
        self.first_chunk, self.chunk_share = first_chunk, chunk_share
        self.started = time.monotonic()
        self.images = 0
        self.reached = False
        self.held: tuple[Tensor, Tensor] | None = None  # images waiting for a chunk to fill

    def take(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The part of the batch within ``sample_size`` (possibly empty); the time budget is not asked."""
        if self.reached:
            return x[:0], y[:0]
        if self.remaining is None:
            return x, y
        count = min(self.remaining, len(x))
        self.remaining -= count
        return x[:count], y[:count]

    def chunks(self, x: Tensor, y: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        """The images to attack after this batch, chunk by chunk: those held from earlier batches, then
        this batch's; each counts as done when the next is asked for. Under a budget the images that
        do not fill a chunk are held for the next batch."""
        x, y = self.take(x, y)
        if self.held is not None:
            x, y = torch.cat([self.held[0], x]), torch.cat([self.held[1], y])
            self.held = None
        return self._chunked(x, y, last=False)

    def rest(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The held images at the end of the test data, chunk by chunk (none held: nothing)."""
        held, self.held = self.held, None
        return iter(()) if held is None or self.reached else self._chunked(*held, last=True)

    def _chunked(self, x: Tensor, y: Tensor, last: bool) -> Iterator[tuple[Tensor, Tensor]]:
        start = 0
        while start < len(x):
            remaining, wanted = len(x) - start, self.chunk_size()
            if wanted == 0:
                return
            if wanted is not None and wanted > remaining and not last:
                self.held = x[start:], y[start:]  # too few for a chunk: they wait for the next batch
                return
            size = remaining if wanted is None else min(wanted, remaining)
            yield x[start : start + size], y[start : start + size]
            self.images += size
            start += size

    def elapsed(self) -> float:
        """Seconds since the schedule started."""
        return time.monotonic() - self.started

    def chunk_size(self) -> int | None:
        """How many images the next chunk should have: ``first_chunk`` before any was measured, 0 once
        the budget is spent (and then :attr:`reached`), ``None`` without a budget (all at once)."""
        if self.seconds is None:
            return None
        if self.images == 0:
            return self.first_chunk
        elapsed = self.elapsed()
        per_image = elapsed / self.images
        fitting = int((self.seconds - elapsed) / per_image)
        if fitting < 1:
            self.reached = True
            return 0
        return max(1, min(fitting, int(self.chunk_share * self.seconds / per_image)))

    def spent(self) -> bool:
        """Whether the whole time budget (attacks and what follows) has run out."""
        return self.total is not None and self.elapsed() >= self.total
