"""The typed result of ``lipreg test`` and its JSON form (``robustness.json``)."""

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

#: The normal quantile of a two-sided 95 % interval.
Z_95 = 1.959963984540054

#: A curve's points: ``(σ or ε, value)`` in the order they were evaluated.
Points = list[tuple[float, float]]
#: A 95 % interval ``(low, high)``.
Interval = tuple[float, float]


def wilson_interval(share: float, count: int, z: float = Z_95) -> Interval:
    """The Wilson score interval (95 % by default) of a proportion ``share`` observed on ``count`` samples.

    .. math:: \\frac{p + z^2/2n ± z\\sqrt{p(1-p)/n + z^2/4n^2}}{1 + z^2/n}

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0 % and 100 %.
    ``(0, 1)`` for no samples.

    Example:
        >>> [round(v, 4) for v in wilson_interval(0.5, 10_000)]
        [0.4902, 0.5098]
    """
    if count <= 0:
        return 0.0, 1.0
    z2n = z * z / count
    centre = (share + z2n / 2) / (1 + z2n)
    half = z * ((share * (1 - share) / count + z2n / (4 * count)) ** 0.5) / (1 + z2n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def images_for_half_width(share: float, half_width: float, z: float = Z_95) -> int:
    """The fewest samples whose Wilson interval (:func:`wilson_interval`) around ``share`` is at most
    ``± half_width`` wide: about ``z²·p(1 − p)/h²`` (9,604 for ``p = 0.5``, ``h = 0.01``), found by bisection.

    Example:
        >>> images_for_half_width(0.5, 0.01), images_for_half_width(0.95, 0.01)
        (9600, 1838)
    """
    if not 0 < half_width < 0.5:
        raise ValueError(f"half_width must be in (0, 0.5), got {half_width}")

    def wide(count: int) -> bool:
        low, high = wilson_interval(share, count, z)
        return (high - low) / 2 > half_width

    low, high = 1, 1
    while wide(high):
        low, high = high, high * 2
    while low < high:  # the half-width falls as the count grows
        middle = (low + high) // 2
        low, high = (middle + 1, high) if wide(middle) else (low, middle)
    return high


@dataclass
class EnsembleRecord:
    """What the robust figure is the worst case over (``attacks``, with budgets, in order) under the
    norm ``norm``, per ε (as text, ``"0.5"``) how many images each stage broke first, and where the
    certificate prunes APGD-T's rivals, per ε ``[ruled out, in all]`` of its rival runs on the
    images the ensemble attacked."""

    norm: str | None = None
    attacks: list[str] = field(default_factory=list)
    broken_by: dict[str, dict[str, int]] = field(default_factory=dict)
    rivals_ruled_out: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class LipschitzEstimates:
    """The pair-ascent lower bound and the layer-product upper bound (``None``: not computed)."""

    lower: float | None = None
    upper: float | None = None


@dataclass
class ResultIntervals:
    """95 % Wilson intervals of a classification result's accuracies."""

    clean: Interval
    clean_subset: Interval
    curves: dict[tuple[str, float], Interval]
    certified: dict[float, Interval]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``curves`` and ``certified`` as ``[parameter, low, high]`` lists."""
        curves: dict[str, list[list[float]]] = {}
        for (curve, parameter), (low, high) in self.curves.items():
            curves.setdefault(curve, []).append([parameter, low, high])
        return {"clean": list(self.clean), "clean_subset": list(self.clean_subset), "curves": curves,
                "certified": [[radius, low, high] for radius, (low, high) in self.certified.items()]}


@dataclass
class RobustnessResult:
    """Everything one ``lipreg test`` measured.

    Attributes:
        method: the method's class name; ``task``/``metric``: ``classification``/``accuracy`` or
            ``regression``/``mse``.
        checkpoint: the tested checkpoint (``None``: the current weights).
        samples: test samples of the clean figure; ``attack_samples``: the first ones, attacked.
        clean: clean score on all test samples; ``clean_subset``: on the attacked ones.
        train: the score on the training split (``None``: not measured).
        curves: per curve (``robust``, ``noise``, ``fgsm``, ``pgd``, ``pgd_sign``), its points.
        ensemble: the attacks behind ``robust`` and what each broke.
        lipschitz: the Lipschitz bounds.
        certified: certified accuracy per radius; ``mean_certified_radius`` over the attacked images.
        coefficient: the regularisation coefficient by its name (``{"lambda": 0.1}``).
        settings: the attack settings.
        time_budget_minutes: set when the time budget stopped the attacks early.
        seconds: where this process's test time went, per kind of stage in the order they first ran
            (``EvaluationProgress.seconds``: per attack over every ε, the clean pass and certificate of
            each chunk, the Lipschitz lower bound, the training split); empty in earlier files.
        incomplete: the test was interrupted (``robustness.partial.json``).
        name: how ``lipreg compare`` labels the run (not saved).
    """

    method: str
    task: str
    metric: str
    checkpoint: str | None
    samples: int
    attack_samples: int
    clean: float
    clean_subset: float
    train: float | None = None
    curves: dict[str, Points] = field(default_factory=dict)
    ensemble: EnsembleRecord = field(default_factory=EnsembleRecord)
    lipschitz: LipschitzEstimates = field(default_factory=LipschitzEstimates)
    certified: Points = field(default_factory=list)
    mean_certified_radius: float | None = None
    coefficient: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    time_budget_minutes: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    incomplete: bool = False
    name: str | None = None

    @property
    def is_accuracy(self) -> bool:
        """Whether the figures are accuracies (classification) rather than errors."""
        return self.metric == "accuracy"

    @property
    def untrained(self) -> bool:
        """Whether the run tested untrained weights (no checkpoint)."""
        return not self.checkpoint

    def curve(self, name: str) -> dict[float, float]:
        """The curve ``name`` as ``{σ or ε: value}`` (empty when the run has none)."""
        return dict(self.curves.get(name) or [])

    @property
    def intervals(self) -> ResultIntervals | None:
        """95 % Wilson intervals of every accuracy (``None`` for regression): ``clean`` over all
        test samples, the rest over the attacked ones."""
        if not self.is_accuracy:
            return None
        attacked = self.attack_samples
        return ResultIntervals(
            clean=wilson_interval(self.clean, self.samples),
            clean_subset=wilson_interval(self.clean_subset, attacked),
            curves={(curve, parameter): wilson_interval(value, attacked)
                    for curve, points in self.curves.items() for parameter, value in points},
            certified={radius: wilson_interval(value, attacked) for radius, value in self.certified},
        )

    def attacked_figures(self) -> list[float]:
        """Every accuracy measured on the attacked images (the curves and the certified accuracies)."""
        return [value for points in self.curves.values() for _, value in points] + [v for _, v in self.certified]

    def widest_half_width(self) -> float | None:
        """The largest ``±`` of the attacked figures' 95 % intervals, as a share (``None``: none, or regression)."""
        intervals = self.intervals
        if intervals is None or not self.attacked_figures():
            return None
        return max((high - low) / 2 for low, high in [*intervals.curves.values(), *intervals.certified.values()])

    def images_for_half_width(self, half_width: float = 0.01) -> int:
        """How many attacked images would give every attacked figure an interval of at most ``± half_width``
        (at the figures measured)."""
        return max((images_for_half_width(value, half_width) for value in self.attacked_figures()), default=0)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The JSON form of ``robustness.json`` (with ``intervals`` for classification)."""
        data = asdict(self)
        data.pop("name")
        data["curves"] = {curve: [list(point) for point in points] for curve, points in self.curves.items()}
        data["certified"] = [list(point) for point in self.certified]
        if self.time_budget_minutes is None:
            data.pop("time_budget_minutes")
        if not self.incomplete:
            data.pop("incomplete")
        if not self.ensemble.rivals_ruled_out:  # no pruning (and the files of earlier releases): as they were
            data["ensemble"].pop("rivals_ruled_out")
        intervals = self.intervals
        if intervals is not None:
            data["intervals"] = intervals.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RobustnessResult":
        """A result from its JSON form, this release's or an earlier one's (fields it lacks take
        their defaults; ``intervals`` are recomputed from the counts)."""
        known = {f.name for f in fields(cls)} - {"name", "ensemble", "lipschitz"}
        values = {key: value for key, value in data.items() if key in known}
        values["curves"] = {curve: [(float(p), float(v)) for p, v in points]
                            for curve, points in (data.get("curves") or {}).items()}
        values["certified"] = [(float(r), float(v)) for r, v in data.get("certified") or []]
        return cls(**values, ensemble=EnsembleRecord(**(data.get("ensemble") or {})),
                   lipschitz=LipschitzEstimates(**(data.get("lipschitz") or {})))

    def save(self, path: Path) -> Path:
        """Write the JSON form to ``path``."""
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> "RobustnessResult":
        """Read a ``robustness.json`` (or ``robustness.partial.json``)."""
        return cls.from_dict(json.loads(Path(path).read_text()))
