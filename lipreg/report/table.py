"""The table ``lipreg test`` prints and ``lipreg compare`` shows: one column per run, one row per quantity."""

from collections.abc import Sequence

from lipreg.evaluation.result import Interval, RobustnessResult
from lipreg.timing import duration

#: How each curve is labelled in tables and plots.
CURVE_LABELS = {
    "robust": "robust (worst case over the ensemble) ε",
    "noise": "Gaussian noise σ",
    "fgsm": "FGSM ε",
    "pgd": "PGD ε",
    "pgd_sign": "PGD sign-step (eq. 13) ε",
}

#: A table wider than this numbers its columns and lists the runs' names above it.
TABLE_WIDTH = 120


def _percent(value: float | None, metric: str, interval: Interval | None = None) -> str:
    if value is None:
        return "-"
    if metric != "accuracy":
        return f"{value:.4g}"
    if interval is None:
        return f"{100 * value:.1f}"
    return f"{100 * value:.1f} ({100 * interval[0]:.1f}–{100 * interval[1]:.1f})"


def _norm_label(norm: str | None) -> str:
    return {"l2": "L2", "linf": "L∞"}.get(norm or "", "")


def curve_label(curve: str, result: RobustnessResult) -> str:
    """A curve's label with the norm its attack uses, e.g. ``PGD-L2 ε``."""
    settings = result.settings
    norm = _norm_label(settings.get("fgsm_norm") if curve == "fgsm" else settings.get("pgd_norm"))
    if curve == "robust":
        return f"robust {result.metric} {norm} (worst case) ε" if norm else CURVE_LABELS[curve]
    label = CURVE_LABELS.get(curve, curve)
    if norm and curve in ("fgsm", "pgd", "pgd_sign"):
        head, _, tail = label.partition(" ")
        return f"{head}-{norm} {tail}"
    return label


def ensemble_summary(result: RobustnessResult) -> str:
    """Which attacks the robust figure is the worst case over, and how many samples each broke."""
    if not result.ensemble.attacks or not result.curves.get("robust"):
        return ""
    lines = [f"robust = worst case per sample over: {', '.join(result.ensemble.attacks)}"]
    for epsilon, broken in result.ensemble.broken_by.items():
        stages = ", ".join(f"{stage} {count}" for stage, count in broken.items())
        line = f"  ε={epsilon}: samples broken first by: {stages}"
        if epsilon in result.ensemble.rivals_ruled_out:
            ruled_out, runs = result.ensemble.rivals_ruled_out[epsilon]
            line += f"; APGD-T rivals ruled out by the certificate: {ruled_out:,} of {runs:,}"
        lines.append(line)
    return "\n".join(lines)


def time_summary(result: RobustnessResult) -> str:
    """Where the test's time went (``RobustnessResult.seconds``): each kind of stage that took at
    least 1 % of it, largest first, then the rest together."""
    if not result.seconds:
        return ""
    total = sum(result.seconds.values())
    ordered = sorted(result.seconds.items(), key=lambda item: -item[1])
    shown = [(kind, seconds) for kind, seconds in ordered if total > 0 and seconds >= 0.01 * total]
    parts = [f"{kind} {duration(seconds)} ({seconds / total:.0%})" for kind, seconds in shown]
    if len(shown) < len(ordered):
        parts.append(f"the rest {duration(total - sum(seconds for _, seconds in shown))}")
    return f"time: {duration(total)} in all: {', '.join(parts)}"


def table_rows(result: RobustnessResult) -> list[tuple[str, str]]:
    """``(quantity, value)`` rows of one result, accuracies in percent (MSE as is), each accuracy from
    a sample with its 95 % Wilson interval in brackets (classification)."""
    metric = result.metric
    intervals = result.intervals
    rows = [(f"clean {metric} (test, {result.samples} samples)",
             _percent(result.clean, metric, intervals and intervals.clean))]
    if result.train is not None:
        rows.append((f"train {metric}", _percent(result.train, metric)))
    if result.attack_samples != result.samples:
        budget = f", {result.time_budget_minutes:g}-min budget" if result.time_budget_minutes else ""
        rows.append((f"clean {metric} (attacked: the first {result.attack_samples} test samples{budget})",
                     _percent(result.clean_subset, metric, intervals and intervals.clean_subset)))
    for curve, points in result.curves.items():
        for parameter, value in points:
            rows.append((f"{curve_label(curve, result)}={parameter:g}",
                         _percent(value, metric, intervals and intervals.curves.get((curve, parameter)))))
    lower, upper = result.lipschitz.lower, result.lipschitz.upper
    rows.append(("Lipschitz lower bound (pair ascent)", "-" if lower is None else f"{lower:.4g}"))
    rows.append(("Lipschitz upper bound (layer product)", "-" if upper is None else f"{upper:.4g}"))
    certified = result.settings.get("certificate_label", "certified accuracy")
    for radius, value in result.certified:
        rows.append((f"{certified} ε={radius:g}",
                     _percent(value, "accuracy", intervals and intervals.certified.get(radius))))
    if result.mean_certified_radius is not None:
        smoothed = "smoothed " if result.settings.get("certificate") == "smoothing" else ""
        rows.append((f"mean {smoothed}certified radius (L2)", f"{result.mean_certified_radius:.4g}"))
    return rows


def format_table(results: Sequence[RobustnessResult]) -> str:
    """One column per result, one row per quantity (the layout of the CLIP paper's Table 1, transposed).

    When the runs' names would make it wider than ``TABLE_WIDTH``, the columns are headed
    ``[1]``, ``[2]``, … and the names listed above the table.
    """
    names = [r.name or r.method for r in results]
    quantities: list[str] = []
    values: dict[tuple[str, int], str] = {}
    for i, result in enumerate(results):
        for quantity, value in table_rows(result):
            if quantity not in quantities:
                quantities.append(quantity)
            values[(quantity, i)] = value
    width = max(len(q) for q in quantities)
    legend: list[str] = []
    if width + sum(max(len(n), 7) + 2 for n in names) > TABLE_WIDTH:
        legend = [f"[{i}] {name}" for i, name in enumerate(names, start=1)] + [""]
        names = [f"[{i}]" for i in range(1, len(names) + 1)]
    columns = [max(len(n), 7) for n in names]
    header = " " * width + "".join(f"  {n:>{w}}" for n, w in zip(names, columns, strict=True))
    lines = [*legend, header]
    for quantity in quantities:
        cells = "".join(f"  {values.get((quantity, i), '-'):>{w}}" for i, w in enumerate(columns))
        lines.append(f"{quantity:<{width}}{cells}")
    unit = "accuracies in %" if all(r.is_accuracy for r in results) else "accuracy in %, MSE as is"
    if any(r.is_accuracy for r in results):
        unit += "; in brackets: 95 % Wilson intervals"
    return "\n".join(lines) + f"\n({unit})"
