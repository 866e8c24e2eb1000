"""Robustness results: the table ``lipreg test`` prints, JSON/CSV/PNG files, and ``lipreg compare``."""

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

RESULT_FILE = "robustness.json"

#: How each curve is labelled in tables and plots.
CURVE_LABELS = {
    "robust": "robust (worst case over the ensemble) ε",
    "noise": "Gaussian noise σ",
    "fgsm": "FGSM ε",
    "pgd": "PGD ε",
    "pgd_sign": "PGD sign-step (eq. 13) ε",
}


def _percent(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if metric == "accuracy" else f"{value:.4g}"


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


def table_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """``(quantity, value)`` rows of one result, accuracies in percent (MSE as is)."""
    metric = result["metric"]
    rows = [(f"clean {metric} (test, {result['samples']} samples)", _percent(result["clean"], metric))]
    if result.get("train") is not None:
        rows.append((f"train {metric}", _percent(result["train"], metric)))
    if result["attack_samples"] != result["samples"]:
        rows.append((f"clean {metric} (attacked subset, {result['attack_samples']})",
                     _percent(result["clean_subset"], metric)))
    for curve, points in result["curves"].items():
        for parameter, value in points:
            rows.append((f"{_curve_label(curve, result)}={parameter:g}", _percent(value, metric)))
    lipschitz = result["lipschitz"]
    rows.append(("Lipschitz lower bound (pair ascent)", f"{lipschitz['lower']:.4g}"))
    upper = lipschitz["upper"]
    rows.append(("Lipschitz upper bound (layer product)", "-" if upper is None else f"{upper:.4g}"))
    for radius, value in result.get("certified", []):
        rows.append((f"certified accuracy ε={radius:g}", _percent(value, "accuracy")))
    return rows


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """One column per result, one row per quantity (the layout of the CLIP paper's Table 1, transposed)."""
    names = [r.get("name") or r["method"] for r in results]
    quantities: list[str] = []
    values: dict[tuple[str, int], str] = {}
    for i, result in enumerate(results):
        for quantity, value in table_rows(result):
            if quantity not in quantities:
                quantities.append(quantity)
            values[(quantity, i)] = value
    width = max(len(q) for q in quantities)
    columns = [max(len(n), 7) for n in names]
    header = " " * width + "".join(f"  {n:>{w}}" for n, w in zip(names, columns, strict=True))
    lines = [header]
    for quantity in quantities:
        cells = "".join(f"  {values.get((quantity, i), '-'):>{w}}" for i, w in enumerate(columns))
        lines.append(f"{quantity:<{width}}{cells}")
    unit = "accuracies in %" if all(r["metric"] == "accuracy" for r in results) else "accuracy in %, MSE as is"
    return "\n".join(lines) + f"\n({unit})"


def robustness_figure(results: Sequence[dict[str, Any]]) -> Figure:
    """Accuracy (or MSE) against ε for every attack, one panel per attack, one line per run."""
    curves = [c for c in CURVE_LABELS if any(r["curves"].get(c) for r in results)]
    figure, axes = plt.subplots(1, max(len(curves), 1), figsize=(4 * max(len(curves), 1), 3.4), squeeze=False)
    for axis, curve in zip(axes[0], curves, strict=False):
        for result in results:
            points = result["curves"].get(curve) or []
            if not points:
                continue
            xs = [0.0] + [p for p, _ in points]
            ys = [result["clean_subset"]] + [v for _, v in points]
            axis.plot(xs, ys, marker="o", label=result.get("name") or result["method"])
        axis.set_xlabel(CURVE_LABELS[curve])
        axis.set_ylabel(results[0]["metric"])
        axis.set_title(curve.replace("_", " "))
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    figure.tight_layout()
    return figure


def write_results(result: dict[str, Any], directory: Path) -> list[Path]:
    """Write ``robustness.json``, ``robustness.csv`` and ``robustness.png`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / RESULT_FILE
    json_path.write_text(json.dumps(result, indent=2))
    csv_path = directory / "robustness.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["quantity", "parameter", "value"])
        writer.writerow([f"clean_{result['metric']}", "", result["clean"]])
        if result.get("train") is not None:
            writer.writerow([f"train_{result['metric']}", "", result["train"]])
        for curve, points in result["curves"].items():
            for parameter, value in points:
                writer.writerow([f"{curve}_{result['metric']}", parameter, value])
        writer.writerow(["lipschitz_lower", "", result["lipschitz"]["lower"]])
        writer.writerow(["lipschitz_upper", "", result["lipschitz"]["upper"]])
        for radius, value in result.get("certified", []):
            writer.writerow(["certified_accuracy", radius, value])
    png_path = directory / "robustness.png"
    figure = robustness_figure([result])
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    return [json_path, csv_path, png_path]


def load_results(directory: Path) -> list[dict[str, Any]]:
    """Every ``robustness.json`` below ``directory``, named by its folder relative to it."""
    results = []
    for path in sorted(directory.rglob(RESULT_FILE)):
        result = json.loads(path.read_text())
        result["name"] = str(path.parent.relative_to(directory)) if path.parent != directory else result["method"]
        results.append(result)
    return results


def compare(argv: Sequence[str] | None = None) -> None:
    """``lipreg compare DIR``: one table and one plot of every ``lipreg test`` result below DIR."""
    parser = argparse.ArgumentParser(
        prog="lipreg compare", description="Compare the robustness results of several runs."
    )
    parser.add_argument("directory", type=Path, help="folder searched for robustness.json files (e.g. lightning_logs)")
    parser.add_argument("--output", type=Path, default=None, help="where to write comparison.csv/.png (default: DIR)")
    args = parser.parse_args(argv)
    results = load_results(args.directory)
    if not results:
        parser.exit(2, f"lipreg compare: error: no {RESULT_FILE} found below {args.directory}; run lipreg test first\n")
    print(format_table(results))
    output = args.output or args.directory
    output.mkdir(parents=True, exist_ok=True)
    with (output / "comparison.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["quantity", *[r["name"] for r in results]])
        rows = [dict(table_rows(r)) for r in results]
        for quantity in dict.fromkeys(q for r in results for q, _ in table_rows(r)):
            writer.writerow([quantity, *[row.get(quantity, "") for row in rows]])
    figure = robustness_figure(results)
    figure.savefig(output / "comparison.png", dpi=120)
    plt.close(figure)
    print(f"wrote {output / 'comparison.csv'} and {output / 'comparison.png'}")
