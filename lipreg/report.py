"""Robustness results: the table ``lipreg test`` prints, JSON/CSV/PNG files, and ``lipreg compare``."""

import argparse
import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RESULT_FILE = "robustness.json"
#: Config keys that say where and how a run was evaluated, not what was trained: not used to tell runs apart.
PLACEMENT_KEYS = re.compile(r"^(ckpt_path|config|quiet|untrained|verbose|return_predictions|evaluation\.|"
                            r"trainer\.(logger|default_root_dir|enable_|inference_mode|devices|accelerator|num_nodes|"
                            r"strategy)|data\.init_args\.(data_dir|eval_batch_size|on_device))")
MARKERS = "osD^vP*X<>"
LINESTYLES = ("-", "--", "-.", ":")

#: How each curve is labelled in tables and plots.
CURVE_LABELS = {
    "robust": "robust (worst case over the ensemble) ε",
    "noise": "Gaussian noise σ",
    "fgsm": "FGSM ε",
    "pgd": "PGD ε",
    "pgd_sign": "PGD sign-step (eq. 13) ε",
}


#: The normal quantile of a two-sided 95 % interval.
Z_95 = 1.959963984540054


def wilson_interval(share: float, count: int, z: float = Z_95) -> tuple[float, float]:
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


def _percent(value: float | None, metric: str, interval: Sequence[float] | None = None) -> str:
    if value is None:
        return "-"
    if metric != "accuracy":
        return f"{value:.4g}"
    if interval is None:
        return f"{100 * value:.1f}"
    return f"{100 * value:.1f} ({100 * interval[0]:.1f}–{100 * interval[1]:.1f})"


def _norm_label(norm: str | None) -> str:
    return {"l2": "L2", "linf": "L∞"}.get(norm or "", "")


def _curve_label(curve: str, result: dict[str, Any]) -> str:
    """A curve's label with the norm its attack uses, e.g. ``PGD-L2 ε``."""
    settings = result.get("settings", {})
    norm = _norm_label(settings.get("fgsm_norm") if curve == "fgsm" else settings.get("pgd_norm"))
    if curve == "robust":
        return f"robust {result['metric']} {norm} (worst case) ε" if norm else CURVE_LABELS[curve]
    label = CURVE_LABELS.get(curve, curve)
    if norm and curve in ("fgsm", "pgd", "pgd_sign"):
        head, _, tail = label.partition(" ")
        return f"{head}-{norm} {tail}"
    return label


def ensemble_summary(result: dict[str, Any]) -> str:
    """Which attacks the robust figure is the worst case over, and how many samples each broke."""
    ensemble = result.get("ensemble") or {}
    if not ensemble.get("attacks") or not result["curves"].get("robust"):
        return ""
    lines = [f"robust = worst case per sample over: {', '.join(ensemble['attacks'])}"]
    for epsilon, broken in ensemble.get("broken_by", {}).items():
        stages = ", ".join(f"{stage} {count}" for stage, count in broken.items())
        lines.append(f"  ε={epsilon}: samples broken first by: {stages}")
    return "\n".join(lines)


def _intervals(result: dict[str, Any]) -> tuple[dict[str, Any], dict[tuple[str, float], list[float]],
                                                dict[float, list[float]]]:
    """A result's ``intervals``, and its curve and certified intervals looked up by (curve, ε) and by ε."""
    intervals = result.get("intervals") or {}
    curves = {(curve, point[0]): point[1:] for curve, points in intervals.get("curves", {}).items()
              for point in points}
    return intervals, curves, {point[0]: point[1:] for point in intervals.get("certified", [])}


def table_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """``(quantity, value)`` rows of one result, accuracies in percent (MSE as is), each accuracy from
    a sample with its 95 % Wilson interval in brackets where the result has them."""
    metric = result["metric"]
    intervals, curve_intervals, certified_intervals = _intervals(result)
    rows = [(f"clean {metric} (test, {result['samples']} samples)",
             _percent(result["clean"], metric, intervals.get("clean")))]
    if result.get("train") is not None:
        rows.append((f"train {metric}", _percent(result["train"], metric)))
    if result["attack_samples"] != result["samples"]:
        budget = f", {result['time_budget_minutes']:g}-min budget" if result.get("time_budget_minutes") else ""
        rows.append((f"clean {metric} (attacked: the first {result['attack_samples']} test samples{budget})",
                     _percent(result["clean_subset"], metric, intervals.get("clean_subset"))))
    for curve, points in result["curves"].items():
        for parameter, value in points:
            rows.append((f"{_curve_label(curve, result)}={parameter:g}",
                         _percent(value, metric, curve_intervals.get((curve, parameter)))))
    lipschitz = result["lipschitz"]
    lower = lipschitz["lower"]
    rows.append(("Lipschitz lower bound (pair ascent)", "-" if lower is None else f"{lower:.4g}"))
    upper = lipschitz["upper"]
    rows.append(("Lipschitz upper bound (layer product)", "-" if upper is None else f"{upper:.4g}"))
    for radius, value in result.get("certified", []):
        rows.append((f"certified accuracy ε={radius:g}", _percent(value, "accuracy", certified_intervals.get(radius))))
    if result.get("mean_certified_radius") is not None:
        rows.append(("mean certified radius (L2)", f"{result['mean_certified_radius']:.4g}"))
    return rows


#: A table wider than this numbers its columns and lists the runs' names above it.
TABLE_WIDTH = 120


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """One column per result, one row per quantity (the layout of the CLIP paper's Table 1, transposed).

    When the runs' names would make it wider than ``TABLE_WIDTH``, the columns are headed
    ``[1]``, ``[2]``, … and the names listed above the table.
    """
    names = [r.get("name") or r["method"] for r in results]
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
    unit = "accuracies in %" if all(r["metric"] == "accuracy" for r in results) else "accuracy in %, MSE as is"
    if any(r.get("intervals") for r in results):
        unit += "; in brackets: 95 % Wilson intervals"
    return "\n".join(lines) + f"\n({unit})"


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend, imported when a figure is drawn (not at start-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_label(result: dict[str, Any]) -> str:
    """A run's name in tables and legends: its ``name`` (``lipreg compare``) or method and checkpoint."""
    if result.get("name"):
        return result["name"]
    checkpoint = result.get("checkpoint")
    return f"{result['method']} {Path(checkpoint).stem if checkpoint else '(untrained)'}"


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
            axis.legend(fontsize="x-small")
        figure.tight_layout()
        return
    labelled = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            labelled.setdefault(label, handle)
    columns = 1 if max(len(label) for label in labelled) > 60 else 2
    rows = -(-len(labelled) // columns)
    legend_height = 0.3 + 0.2 * rows
    width, height = figure.get_size_inches()
    figure.set_size_inches(width, height + legend_height)
    figure.legend(list(labelled.values()), list(labelled), loc="lower center", ncol=columns, fontsize="small",
                  frameon=False)
    figure.tight_layout(rect=(0, legend_height / (height + legend_height), 1, 1))


def robustness_figure(results: Sequence[dict[str, Any]]) -> "Figure":
    """Accuracy (or MSE) against ε for every attack, one panel per attack, one line per run.

    Accuracy panels share the table's unit (%) and run from 0 to 100 %; every panel has a legend
    (more than ``LEGEND_PER_PANEL`` runs: one shared legend below); runs that coincide stay visible
    (each later run is drawn thinner, with its own colour, marker and dash pattern, the same in every
    panel); the title names the checkpoint(s).
    """
    plt = pyplot()
    curves = [c for c in CURVE_LABELS if any(r["curves"].get(c) for r in results)]
    panels = max(len(curves), 1)
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.9), squeeze=False)
    accuracy = all(r["metric"] == "accuracy" for r in results)
    scale = 100.0 if accuracy else 1.0
    for axis, curve in zip(axes[0], curves, strict=False):
        for index, result in enumerate(results):
            points = result["curves"].get(curve) or []
            if not points:
                continue
            xs = [0.0] + [p for p, _ in points]
            ys = [scale * result["clean_subset"]] + [scale * v for _, v in points]
            axis.plot(xs, ys, linestyle=LINESTYLES[index % len(LINESTYLES)], linewidth=max(3.5 - 0.6 * index, 1.0),
                      markersize=max(8 - index, 4), alpha=0.85, label=run_label(result), **run_style(index))
        axis.set_xlabel(_curve_label(curve, results[0]).rsplit(" ", 1)[-1])
        axis.set_ylabel("accuracy (%)" if accuracy else results[0]["metric"])
        if accuracy:
            axis.set_ylim(0, 100)
        axis.set_title(_curve_label(curve, results[0]).removesuffix(" ε").removesuffix(" σ"), fontsize="medium")
        axis.grid(alpha=0.3)
    if len(results) == 1:
        checkpoint = results[0].get("checkpoint")
        figure.suptitle(f"{results[0]['method']}: {Path(checkpoint).name if checkpoint else 'untrained weights'}",
                        fontsize="medium")
    else:
        figure.suptitle(f"{len(results)} runs (legend: method, checkpoint, what differs)", fontsize="medium")
    _place_legends(figure, axes[0], len(results))
    return figure


def tradeoff_figure(results: Sequence[dict[str, Any]]) -> "Figure | None":
    """Robust against clean accuracy, one point per run, one panel per ε of the robust curve
    (``None`` when no run has one): where each method sits on the trade-off."""
    radii = sorted({e for r in results for e, _ in r["curves"].get("robust") or []})
    if not radii or any(r["metric"] != "accuracy" for r in results):
        return None
    plt = pyplot()
    figure, axes = plt.subplots(1, len(radii), figsize=(4.6 * len(radii), 4.2), squeeze=False)
    for axis, epsilon in zip(axes[0], radii, strict=True):
        for index, result in enumerate(results):
            robust = dict(result["curves"].get("robust") or []).get(epsilon)
            if robust is None:
                continue
            axis.scatter(100 * result["clean"], 100 * robust, s=60, label=run_label(result), **run_style(index))
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


def write_results(result: dict[str, Any], directory: Path) -> list[Path]:
    """Write ``robustness.json``, ``robustness.csv`` and ``robustness.png`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / RESULT_FILE
    json_path.write_text(json.dumps(result, indent=2))
    csv_path = directory / "robustness.csv"
    intervals, curve_intervals, certified_intervals = _intervals(result)
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["quantity", "parameter", "value", "ci95_low", "ci95_high"])
        writer.writerow([f"clean_{result['metric']}", "", result["clean"], *intervals.get("clean", ["", ""])])
        if result.get("train") is not None:
            writer.writerow([f"train_{result['metric']}", "", result["train"], "", ""])
        for curve, points in result["curves"].items():
            for parameter, value in points:
                writer.writerow([f"{curve}_{result['metric']}", parameter, value,
                                 *curve_intervals.get((curve, parameter), ["", ""])])
        writer.writerow(["lipschitz_lower", "", result["lipschitz"]["lower"], "", ""])
        writer.writerow(["lipschitz_upper", "", result["lipschitz"]["upper"], "", ""])
        for radius, value in result.get("certified", []):
            writer.writerow(["certified_accuracy", radius, value, *certified_intervals.get(radius, ["", ""])])
        if result.get("mean_certified_radius") is not None:
            writer.writerow(["mean_certified_radius", "", result["mean_certified_radius"], "", ""])
    png_path = directory / "robustness.png"
    figure = robustness_figure([result])
    figure.savefig(png_path, dpi=120)
    close_figure(figure)
    return [json_path, csv_path, png_path]


def flat_config(path: Path) -> dict[str, Any]:
    """A run's ``config.yaml`` as ``{dotted.key: value}`` (list items by index), without placement keys."""
    if not path.is_file():
        return {}
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
            for index, item in enumerate(value):
                walk(item, f"{prefix}.{index}")
        elif not PLACEMENT_KEYS.match(prefix):
            flat[prefix] = value

    walk(yaml.safe_load(path.read_text()) or {}, "")
    return flat


def _setting(key: str, value: Any) -> str:
    """``target=0.9``, or ``net=MLP`` for a class path."""
    parts = key.split(".")
    if parts[-1] == "class_path":
        return f"{parts[-2]}={str(value).rsplit('.', 1)[-1]}"
    return f"{parts[-1]}={value}"


def natural_key(text: str) -> list[Any]:
    """Sort key that orders numbers by value: ``version_2`` before ``version_11``, ``0.85`` before ``0.9``."""
    return [float(part) if index % 2 else part for index, part in enumerate(re.split(r"(\d+(?:\.\d+)?)", text))]


def _shown_folder(folder: Path, directories: Sequence[Path]) -> str:
    """``folder`` relative to the given directory it lies in (with that directory's name when there are several)."""
    for directory in directories:
        if folder == directory:
            return folder.name
        if folder.is_relative_to(directory):
            relative = folder.relative_to(directory)
            return str(directory.name / relative if len(directories) > 1 else relative)
    return str(folder)


def load_results(*directories: Path) -> list[dict[str, Any]]:
    """Every ``robustness.json`` below the given directories, labelled and sorted for comparison.

    Each run is named by its method and checkpoint (``CLIP best-epoch=12-pgd_acc=0.412``,
    ``Standard (untrained)``), plus the config values in which its ``config.yaml`` differs from
    the others' (``target=0.9``), plus its folder when that still leaves two names equal. Runs are
    sorted by method, then by name with numbers in order; untrained runs are flagged ``untrained``.
    """
    found = []
    for directory in directories:
        for path in sorted(directory.rglob(RESULT_FILE)):
            result = json.loads(path.read_text())
            result["untrained"] = not result.get("checkpoint")
            found.append((path.parent, result, flat_config(path.parent / "config.yaml")))
    for method in {result["method"] for _, result, _ in found}:
        group = [(result, config) for _, result, config in found if result["method"] == method]
        keys = set().union(*(config for _, config in group))
        differing = sorted(k for k in keys if k != "model.class_path"
                           and len({repr(config.get(k)) for _, config in group}) > 1)
        for result, config in group:
            extras = [_setting(k, config[k]) for k in differing if k in config]
            result["name"] = " ".join([run_label({**result, "name": None}), *extras])
    names = [result["name"] for _, result, _ in found]
    for folder, result, _ in found:
        if names.count(result["name"]) > 1:
            result["name"] += f" [{_shown_folder(folder, directories)}]"
    found.sort(key=lambda item: (item[1]["method"], natural_key(item[1]["name"])))
    return [result for _, result, _ in found]


def compare(argv: Sequence[str] | None = None) -> None:
    """``lipreg compare DIR [DIR …]``: one table and one plot of every ``lipreg test`` result below the DIRs."""
    parser = argparse.ArgumentParser(
        prog="lipreg compare", description="Compare the robustness results of several runs."
    )
    parser.add_argument("directories", type=Path, nargs="+", metavar="DIR",
                        help="folders searched for robustness.json files (e.g. lightning_logs)")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write comparison.csv/.png (default: the first DIR)")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.directories if not d.is_dir()]
    if missing:
        parser.exit(2, f"lipreg compare: error: no such directory: {', '.join(missing)}\n")
    results = load_results(*args.directories)
    if not results:
        searched = " ".join(str(d) for d in args.directories)
        parser.exit(2, f"lipreg compare: error: no {RESULT_FILE} found below {searched}; run lipreg test first\n")
    print(format_table(results))
    output = args.output or args.directories[0]
    output.mkdir(parents=True, exist_ok=True)
    with (output / "comparison.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["quantity", *[r["name"] for r in results]])
        rows = [dict(table_rows(r)) for r in results]
        for quantity in dict.fromkeys(q for r in results for q, _ in table_rows(r)):
            writer.writerow([quantity, *[row.get(quantity, "") for row in rows]])
    figure = robustness_figure(results)
    figure.savefig(output / "comparison.png", dpi=120)
    close_figure(figure)
    written = [output / "comparison.csv", output / "comparison.png"]
    tradeoff = tradeoff_figure(results)
    if tradeoff is not None:
        tradeoff.savefig(output / "robust_vs_clean.png", dpi=120)
        close_figure(tradeoff)
        written.append(output / "robust_vs_clean.png")
    print("wrote " + ", ".join(str(p) for p in written))
