"""Finding the results of earlier runs and comparing them: ``lipreg compare``."""

import argparse
import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lipreg.evaluation.result import RobustnessResult
from lipreg.report.figures import close_figure, robustness_figure, run_label, tradeoff_figure
from lipreg.report.files import RESULT_FILE
from lipreg.report.table import format_table, table_rows

#: Config keys that say where and how a run was evaluated, not what was trained: not used to tell runs apart.
PLACEMENT_OPTIONS = frozenset({"ckpt_path", "config", "quiet", "untrained", "verbose", "return_predictions"})
#: Dotted prefixes of such keys (every evaluation option, the trainer's placement, the data's location).
PLACEMENT_PREFIXES = ("evaluation.", "trainer.logger", "trainer.default_root_dir", "trainer.enable_",
                      "trainer.inference_mode", "trainer.devices", "trainer.accelerator", "trainer.num_nodes",
                      "trainer.strategy", "data.init_args.data_dir", "data.init_args.eval_batch_size",
                      "data.init_args.on_device")


def is_placement_key(key: str) -> bool:
    """Whether the dotted config key ``key`` says where or how a run was evaluated, not what was trained."""
    return key.split(".", 1)[0] in PLACEMENT_OPTIONS or key.startswith(PLACEMENT_PREFIXES)


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
        elif not is_placement_key(prefix):
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


def load_results(*directories: Path) -> list[RobustnessResult]:
    """Every ``robustness.json`` below the given directories, labelled and sorted for comparison.

    Each run is named by its method and checkpoint (``CLIP best-epoch=12-pgd_acc=0.412``,
    ``Standard (untrained)``), plus the config values in which its ``config.yaml`` differs from
    the others' (``target=0.9``), plus its folder when that still leaves two names equal. Runs are
    sorted by method, then by name with numbers in order; untrained runs are flagged ``untrained``.
    """
    found = []
    for directory in directories:
        for path in sorted(directory.rglob(RESULT_FILE)):
            found.append((path.parent, RobustnessResult.load(path), flat_config(path.parent / "config.yaml")))
    for method in {result.method for _, result, _ in found}:
        group = [(result, config) for _, result, config in found if result.method == method]
        keys = set().union(*(config for _, config in group))
        differing = sorted(k for k in keys if k != "model.class_path"
                           and len({repr(config.get(k)) for _, config in group}) > 1)
        for result, config in group:
            extras = [_setting(k, config[k]) for k in differing if k in config]
            result.name = " ".join([run_label(result), *extras])
    names = [result.name for _, result, _ in found]
    for folder, result, _ in found:
        if names.count(result.name) > 1:
            result.name += f" [{_shown_folder(folder, directories)}]"
    found.sort(key=lambda item: (item[1].method, natural_key(item[1].name or "")))
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
        writer.writerow(["quantity", *[r.name for r in results]])
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
