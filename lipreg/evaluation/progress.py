"""The progress line of ``lipreg test``: what it attacks now, how many images are done, the time left;
and where the time went, per attack."""

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from torch import Tensor

from lipreg.evaluation.registry import Work
from lipreg.timing import duration

#: The kind of the time a batch spends before its first stage: the clean forward pass.
CHUNK_START = "clean"


class EvaluationProgress:
    """Prints where an evaluation stands at the start and then at least every ``every`` seconds.

    The evaluation announces each batch (``begin_batch``/``end_batch``) and each stage of it
    (``stage``: an attack at a radius); attack loops call :meth:`step` every step (through
    ``lipreg.functional.progress.reporting``), so a line comes on time inside a long attack on a
    large batch too. The time left extrapolates the elapsed time over the images done, a batch in
    progress counted by the share of its work done: each stage weighted by the seconds per image it
    took in the last batch finished, the current one by the time it has run so far (at most its
    weight); in the first batch, each stage by its a priori ``work`` (forward+backward passes per image,
    ``EvaluationPlan.stage_work``; without it each stage alike), the current one by the steps it has
    reported of those it would take. So a long last stage (Square) does not read as nearly done.

    It also keeps the seconds spent per kind of stage (:attr:`seconds`): per attack (a stage's name up
    to its first space, e.g. ``apgd-t`` over every ε), :data:`CHUNK_START` for what a batch does before
    its first stage (the clean forward pass), and whatever :meth:`timed` wraps.

    Args:
        images: the images the evaluation attacks (``None``: unknown).
        stages: the stages one batch goes through, in order, each with its
            :class:`~lipreg.evaluation.registry.Work` per image (``EvaluationPlan.stage_work``), or their
            names alone (the stages alike).
        every: seconds between lines; 0 disables the lines.
        enabled: print at all (rank 0 only under DDP).
        budget_minutes: the evaluation's time budget, which caps the time left (``None``: none).
        write: where lines go.
    """

    def __init__(self, images: int | None, stages: Sequence[str] | Mapping[str, Work], every: float = 30.0,
                 enabled: bool = True, budget_minutes: float | None = None,
                 write: Callable[[str], None] = lambda line: print(line, flush=True)) -> None:
        self.images, self.stages, self.every = images, list(stages), every
        self.work = dict(stages) if isinstance(stages, Mapping) else {}
        self.budget = None if budget_minutes is None else 60.0 * budget_minutes
        self.enabled = enabled and every > 0
        self.write = write
        self.done = 0
        self.batch = 0
        self.current = ""
        self.steps = 0  # the steps the current stage has reported
        self.started = self.last = time.monotonic()
        self.seconds: dict[str, float] = {}
        self._timing: tuple[str, str, float] | None = None  # the stage being timed, its kind and since when
        self._batch_seconds: dict[str, float] = {}  # per stage of the batch in progress (and CHUNK_START)
        self._per_image: dict[str, float] = {}  # seconds per image per stage in the last batch finished

    def start(self, attacks: Sequence[str]) -> None:
        """The first line: what will be attacked, with which attacks."""
        self.started = self.last = time.monotonic()
        if not self.enabled:
            return
        count = "all test images" if self.images is None else f"{self.images:,} test images"
        budget = "" if self.budget is None else f" (or as many as fit in {duration(self.budget)})"
        self.write(f"lipreg test: attacking {count}{budget} with {', '.join(attacks) or 'no attack'}; "
                   f"a progress line at least every {self.every:g} s")

    def _time(self, name: str | None, kind: str | None = None) -> None:
        """Add the time since the last call to what was timed then, and time the stage ``name`` (as ``kind``,
        default its name up to the first space) from now (``None``: nothing)."""
        now = time.monotonic()
        if self._timing is not None:
            timed, timed_kind, since = self._timing
            self.seconds[timed_kind] = self.seconds.get(timed_kind, 0.0) + now - since
            if self.batch:
                self._batch_seconds[timed] = self._batch_seconds.get(timed, 0.0) + now - since
        self._timing = None if name is None else (name, kind or name.split(" ", 1)[0], now)

    def begin_batch(self, size: int) -> None:
        self.batch, self.current, self._batch_seconds = size, "", {}
        self._time(CHUNK_START)

    def end_batch(self) -> None:
        self._time(None)
        if self.batch:
            self._per_image = {name: seconds / self.batch for name, seconds in self._batch_seconds.items()}
        self.done += self.batch
        self.batch = 0
        self.tick()

    def stage(self, name: str) -> None:
        """The batch enters ``name`` (e.g. ``apgd-t ε=1``; timed as ``apgd-t``)."""
        self.current, self.steps = name, 0
        self._time(name)
        self.tick()

    def step(self) -> None:
        """One step of the current stage's attack is done (then :meth:`tick`)."""
        self.steps += 1
        self.tick()

    @contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        """Time the block as ``kind`` (outside a batch: e.g. the Lipschitz lower bound)."""
        self._time(kind, kind)
        try:
            yield
        finally:
            self._time(None)

    def staged(self, name: str, attack: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
        """``attack`` announcing ``name`` as its stage when it starts."""

        def run(x: Tensor, y: Tensor) -> Tensor:
            self.stage(name)
            return attack(x, y)

        return run

    def within_batch(self) -> float:
        """The share of the batch in progress done: its stages before the current one and the current
        one's time so far, weighted by the last batch's seconds per image; before one batch was timed,
        by their a priori work, the current one by its share of steps reported (else stage by stage)."""
        if not self.batch or self.current not in self.stages:
            return 0.0
        order = [CHUNK_START, *self.stages]
        at = order.index(self.current)
        weights = [self._per_image.get(name, 0.0) for name in order]
        if sum(weights) > 0:
            running = 0.0 if self._timing is None else (time.monotonic() - self._timing[2]) / self.batch
            return (sum(weights[:at]) + min(running, weights[at])) / sum(weights)
        work = [self.work.get(name, Work(1.0)) for name in self.stages]
        weights = [0.0, *(item.passes for item in work)]
        if sum(weights) <= 0:
            return self.stages.index(self.current) / len(self.stages)
        steps = work[at - 1].steps
        current = min(self.steps / steps, 1.0) if steps else 0.0
        return (sum(weights[:at]) + current * weights[at]) / sum(weights)

    def fraction(self) -> float:
        """The share of the work done, a batch in progress counted by :meth:`within_batch`."""
        if not self.images:
            return 0.0
        within = self.within_batch()
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
