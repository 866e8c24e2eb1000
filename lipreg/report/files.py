"""A result's files: ``robustness.json`` (the typed result), ``robustness.csv`` and ``robustness.png``."""

import csv
from pathlib import Path

from lipreg.evaluation.result import RobustnessResult
from lipreg.report.figures import close_figure, robustness_figure
from lipreg.report.table import ensemble_summary, format_table

#: The file ``lipreg test`` writes its result to, and ``lipreg compare`` looks for.
RESULT_FILE = "robustness.json"


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
    """Write a finished test's files into ``directory`` and return what ``lipreg test`` prints: the
    table, the ensemble's summary, what a time budget left out and the files written."""
    paths = write_results(result, directory)
    lines = [f"\nRobustness of {result.method} ({result.checkpoint or 'current weights'})", format_table([result])]
    summary = ensemble_summary(result)
    if summary:
        lines.append(summary)
    if result.time_budget_minutes:
        lines.append(f"the {result.time_budget_minutes:g}-minute time budget stopped the attacks after "
                     f"{result.attack_samples:,} of {result.samples:,} test images (intervals above); "
                     "--evaluation.time_budget null attacks all of them")
    lines.append("wrote " + ", ".join(str(p) for p in paths))
    return "\n".join(lines)
