"""A result's files: ``robustness.json`` (the typed result), ``robustness.csv`` and ``robustness.png``."""

import csv
from pathlib import Path

from lipreg.evaluation.result import RobustnessResult
from lipreg.report.figures import close_figure, robustness_figure
from lipreg.report.table import ensemble_summary, format_table, time_summary

#: The file ``lipreg test`` writes its result to, and ``lipreg compare`` looks for.
RESULT_FILE = "robustness.json"
#: The file that marks a results folder whose ``lipreg test`` did not finish.
INCOMPLETE_MARKER = "INCOMPLETE"
#: What an interrupted ``lipreg test`` had finished (whole chunks).
PARTIAL_RESULT_FILE = "robustness.partial.json"


def write_results(result: RobustnessResult, directory: Path) -> list[Path]:
    """Write ``robustness.json``, ``robustness.csv`` and ``robustness.png`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = result.save(directory / RESULT_FILE)
    csv_path = directory / "robustness.csv"
    intervals = result.intervals
    blank = ("", "")

    def interval_of(found: tuple[float, float] | None) -> tuple[float, float] | tuple[str, str]:
        return blank if found is None else found

    metric = result.metric
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["quantity", "parameter", "value", "ci95_low", "ci95_high"])
        writer.writerow([f"clean_{metric}", "", result.clean, *interval_of(intervals and intervals.clean)])
        if result.train is not None:
            writer.writerow([f"train_{metric}", "", result.train, *blank])
        for curve, points in result.curves.items():
            for parameter, value in points:
                found = intervals and intervals.curves.get((curve, parameter))
                writer.writerow([f"{curve}_{metric}", parameter, value, *interval_of(found)])
        writer.writerow(["lipschitz_lower", "", result.lipschitz.lower, *blank])
        writer.writerow(["lipschitz_upper", "", result.lipschitz.upper, *blank])
        for radius, value in result.certified:
            found = intervals and intervals.certified.get(radius)
            writer.writerow(["certified_accuracy", radius, value, *interval_of(found)])
        if result.mean_certified_radius is not None:
            writer.writerow(["mean_certified_radius", "", result.mean_certified_radius, *blank])
    png_path = directory / "robustness.png"
    figure = robustness_figure([result])
    figure.savefig(png_path, dpi=120)
    close_figure(figure)
    return [json_path, csv_path, png_path]


def publish_result(result: RobustnessResult, directory: Path) -> str:
    """Write a finished test's files into ``directory`` (removing an earlier interrupted run's marker
    and partial result) and return what ``lipreg test`` prints: the table, the ensemble's summary,
    what the sample leaves uncertain, where the time went and the files written."""
    for stale in (INCOMPLETE_MARKER, PARTIAL_RESULT_FILE):
        (directory / stale).unlink(missing_ok=True)
    paths = write_results(result, directory)
    lines = [f"\nRobustness of {result.method} ({result.checkpoint or 'current weights'})", format_table([result])]
    summary = ensemble_summary(result)
    if summary:
        lines.append(summary)
    note = sample_note(result)
    if note:
        lines.append(note)
    timing = time_summary(result)
    if timing:
        lines.append(timing)
    lines.append("wrote " + ", ".join(str(p) for p in paths))
    return "\n".join(lines)


def sample_note(result: RobustnessResult, half_width: float = 0.01) -> str | None:
    """What the attacked sample leaves uncertain, when an interval is wider than ``± half_width``
    or a time budget cut the sample short: how many images ±1 point needs, and the option that
    attacks them (``None`` when every attacked figure is within ±1 point and nothing was cut)."""
    widest = result.widest_half_width()
    if widest is None or (widest <= half_width and not result.time_budget_minutes):
        return None
    attacked, samples = result.attack_samples, result.samples
    needed = result.images_for_half_width(half_width)
    enough = (f"±{100 * half_width:g} point needs about {needed:,} images" if needed <= samples else
              f"±{100 * half_width:g} point needs about {needed:,} images, more than the {samples:,} test images")
    if result.time_budget_minutes:
        minutes = result.time_budget_minutes * min(needed, samples) / max(attacked, 1)
        return (f"the {result.time_budget_minutes:g}-minute time budget stopped the attacks after {attacked:,} of "
                f"{samples:,} test images: intervals up to ±{100 * widest:.1f} points; {enough}: about "
                f"--evaluation.time_budget {minutes:.3g} at this test's pace (--evaluation.time_budget null: all)")
    if attacked >= samples:
        return f"intervals up to ±{100 * widest:.1f} points over all {samples:,} test images; {enough}"
    return (f"intervals up to ±{100 * widest:.1f} points from the first {attacked:,} test images; {enough} "
            f"(--evaluation.sample_size {min(needed, samples)})")


def publish_interrupted(partial: RobustnessResult | None, directory: Path, reason: str) -> str:
    """Mark ``directory`` (an existing folder without a finished result) ``INCOMPLETE``, save the
    finished chunks' ``partial`` result (if any) as ``robustness.partial.json``, and return what
    ``lipreg test`` prints: the partial table and one line naming the folder as the user would type it."""
    (directory / INCOMPLETE_MARKER).write_text(f"lipreg test was {reason} before its results were written\n")
    lines = []
    if partial is not None:
        partial.save(directory / PARTIAL_RESULT_FILE)
        lines += [f"\nRobustness of the {partial.attack_samples} images finished before the test was {reason}",
                  format_table([partial])]
    try:
        directory = directory.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    what = "holds no results" if partial is None else f"holds the finished images' results in {PARTIAL_RESULT_FILE}"
    lines.append(f"lipreg test {reason}: {directory} {what} and is marked {INCOMPLETE_MARKER}")
    return "\n".join(lines)
