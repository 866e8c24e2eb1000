"""The figures of robustness results: accuracy against ε per attack, robust against clean accuracy."""

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lipreg.evaluation.result import RobustnessResult
from lipreg.report.table import CURVE_LABELS, curve_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MARKERS = "osD^vP*X<>"
LINESTYLES = ("-", "--", "-.", ":")


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend, imported when a figure is drawn (not at start-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_label(result: RobustnessResult) -> str:
    """A run's name in tables and legends: its ``name`` (``lipreg compare``) or method and checkpoint."""
    if result.name:
        return result.name
    checkpoint = result.checkpoint
    return f"{result.method} {Path(checkpoint).stem if checkpoint else '(untrained)'}"


#: Up to this many runs each panel has its own legend; more share one legend below the panels.
LEGEND_PER_PANEL = 4


def run_style(index: int) -> dict[str, str]:
    """The colour and marker of the ``index``-th run, the same in every panel; no two of the first
    100 runs share both (the marker shifts by one every ten colours)."""
    return {"color": f"C{index % 10}", "marker": MARKERS[(index + index // 10) % len(MARKERS)]}


def _place_legends(figure: "Figure", axes: Sequence[Any], runs: int) -> None:
    """A legend in every panel for a few runs; for more, one legend of every run below the panels
    (the figure grows by its height), then a tight layout."""
    if runs <= LEGEND_PER_PANEL:
        for axis in axes:
            if axis.get_legend_handles_labels()[0]:  # a panel without curves (a test without attacks) has none
                axis.legend(fontsize="x-small")
        figure.tight_layout()
        return
    labelled = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            labelled.setdefault(label, handle)
    if not labelled:
        figure.tight_layout()
        return
    columns = 1 if max(len(label) for label in labelled) > 60 else 2
    rows = -(-len(labelled) // columns)
    legend_height = 0.3 + 0.2 * rows
    width, height = figure.get_size_inches()
    figure.set_size_inches(width, height + legend_height)
    figure.legend(list(labelled.values()), list(labelled), loc="lower center", ncol=columns, fontsize="small",
                  frameon=False)
    figure.tight_layout(rect=(0, legend_height / (height + legend_height), 1, 1))


def robustness_figure(results: Sequence[RobustnessResult]) -> "Figure":
    """Accuracy (or MSE) against ε for every attack, one panel per attack, one line per run.

    Accuracy panels share the table's unit (%) and run from 0 to 100 %; every panel has a legend
    (more than ``LEGEND_PER_PANEL`` runs: one shared legend below); runs that coincide stay visible
    (each later run is drawn thinner, with its own colour, marker and dash pattern, the same in every
    panel); the title names the checkpoint(s).
    """
    plt = pyplot()
    curves = [c for c in CURVE_LABELS if any(r.curves.get(c) for r in results)]
    panels = max(len(curves), 1)
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.9), squeeze=False)
    accuracy = all(r.is_accuracy for r in results)
    scale = 100.0 if accuracy else 1.0
    for axis, curve in zip(axes[0], curves, strict=False):
        for index, result in enumerate(results):
            points = result.curves.get(curve) or []
            if not points:
                continue
            xs = [0.0] + [p for p, _ in points]
            ys = [scale * result.clean_subset] + [scale * v for _, v in points]
            axis.plot(xs, ys, linestyle=LINESTYLES[index % len(LINESTYLES)], linewidth=max(3.5 - 0.6 * index, 1.0),
                      markersize=max(8 - index, 4), alpha=0.85, label=run_label(result), **run_style(index))
        axis.set_xlabel(curve_label(curve, results[0]).rsplit(" ", 1)[-1])
        axis.set_ylabel("accuracy (%)" if accuracy else results[0].metric)
        if accuracy:
            axis.set_ylim(0, 100)
        axis.set_title(curve_label(curve, results[0]).removesuffix(" ε").removesuffix(" σ"), fontsize="medium")
        axis.grid(alpha=0.3)
    if len(results) == 1:
        checkpoint = results[0].checkpoint
        figure.suptitle(f"{results[0].method}: {Path(checkpoint).name if checkpoint else 'untrained weights'}",
                        fontsize="medium")
    else:
        figure.suptitle(f"{len(results)} runs (legend: method, checkpoint, what differs)", fontsize="medium")
    _place_legends(figure, axes[0], len(results))
    return figure


def tradeoff_figure(results: Sequence[RobustnessResult]) -> "Figure | None":
    """Robust against clean accuracy, one point per run, one panel per ε of the robust curve
    (``None`` when no run has one): where each method sits on the trade-off."""
    radii = sorted({e for r in results for e in r.curve("robust")})
    if not radii or not all(r.is_accuracy for r in results):
        return None
    plt = pyplot()
    figure, axes = plt.subplots(1, len(radii), figsize=(4.6 * len(radii), 4.2), squeeze=False)
    for axis, epsilon in zip(axes[0], radii, strict=True):
        for index, result in enumerate(results):
            robust = result.curve("robust").get(epsilon)
            if robust is None:
                continue
            axis.scatter(100 * result.clean, 100 * robust, s=60, label=run_label(result), **run_style(index))
        axis.set_xlabel("clean accuracy (%)")
        axis.set_ylabel("robust accuracy (%)")
        axis.set_ylim(0, 100)
        axis.set_title(f"robust (worst case) at ε={epsilon:g} against clean", fontsize="medium")
        axis.grid(alpha=0.3)
    _place_legends(figure, axes[0], len(results))
    return figure


def close_figure(figure: "Figure") -> None:
    """Free a figure's memory once it is saved or logged."""
    pyplot().close(figure)
