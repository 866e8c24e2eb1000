"""The progress line of ``lipreg test``: what it attacks now, how many images are done, the time left."""

import time
from collections.abc import Callable, Sequence

from torch import Tensor

from lipreg.timing import duration


class EvaluationProgress:
    """Prints where an evaluation stands at the start and then at least every ``every`` seconds.

    The evaluation announces each batch (``begin_batch``/``end_batch``) and each stage of it
    (``stage``: an attack at a radius); attack loops call :meth:`tick` every step (through
    ``lipreg.functional.progress.reporting``), so a line comes on time inside a long attack on a
    large batch too. The time left extrapolates the elapsed time over the images done, a batch in
    progress counted by the share of its stages done.

    Args:
        images: the images the evaluation attacks (``None``: unknown).
        stages: the stages one batch goes through, in order.
        every: seconds between lines; 0 disables the lines.
        enabled: print at all (rank 0 only under DDP).
        budget_minutes: the evaluation's time budget, which caps the time left (``None``: none).
        write: where lines go.
    """

    def __init__(self, images: int | None, stages: Sequence[str], every: float = 30.0, enabled: bool = True,
                 budget_minutes: float | None = None,
                 write: Callable[[str], None] = lambda line: print(line, flush=True)) -> None:
        self.images, self.stages, self.every = images, list(stages), every
        self.budget = None if budget_minutes is None else 60.0 * budget_minutes
        self.enabled = enabled and every > 0
        self.write = write
        self.done = 0
        self.batch = 0
        self.current = ""
        self.started = self.last = time.monotonic()

    def start(self, attacks: Sequence[str]) -> None:
        """The first line: what will be attacked, with which attacks."""
        self.started = self.last = time.monotonic()
        if not self.enabled:
            return
        count = "all test images" if self.images is None else f"{self.images:,} test images"
        budget = "" if self.budget is None else f" (or as many as fit in {duration(self.budget)})"
        self.write(f"lipreg test: attacking {count}{budget} with {', '.join(attacks) or 'no attack'}; "
                   f"a progress line at least every {self.every:g} s")

    def begin_batch(self, size: int) -> None:
        self.batch, self.current = size, ""

    def end_batch(self) -> None:
        self.done += self.batch
        self.batch = 0
        self.tick()

    def stage(self, name: str) -> None:
        """The batch enters ``name`` (e.g. ``apgd-t ε=1``)."""
        self.current = name
        self.tick()

    def staged(self, name: str, attack: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
        """``attack`` announcing ``name`` as its stage when it starts."""

        def run(x: Tensor, y: Tensor) -> Tensor:
            self.stage(name)
            return attack(x, y)

        return run

    def fraction(self) -> float:
        """The share of the work done, a batch in progress counted by its stages."""
        if not self.images:
            return 0.0
        within = 0.0
        if self.batch and self.current in self.stages:
            within = self.stages.index(self.current) / len(self.stages)
        return min((self.done + self.batch * within) / self.images, 1.0)

    def tick(self) -> None:
        """Print a line if ``every`` seconds have passed since the last."""
        now = time.monotonic()
        if not self.enabled or now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.started
        share = self.fraction()
        if share > 0:
            remaining = elapsed * (1 - share) / share
            if self.budget is not None:
                remaining = min(remaining, max(self.budget - elapsed, 0.0))
            left = f"about {duration(remaining)} left"
        else:
            left = "time left: known later"
        total = "?" if self.images is None else f"{self.images:,}"
        where = f"{self.current} on {self.batch:,} images" if self.batch and self.current else "between batches"
        self.write(f"lipreg test: {where} · {self.done:,} of {total} images done · {duration(elapsed)} elapsed, {left}")
