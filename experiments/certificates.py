"""Certified accuracy of checkpoints: the class-pair certificate of ``lipreg test`` against the global one.

    python -m experiments.certificates --data-dir ../shared/datasets --out docs/results/certificates.json \
        CKPT [CKPT ...]

For each checkpoint, on every test image of its data set: certified accuracy at each radius and the
mean certified radius, (a) the global certificate of earlier lipreg versions, ``margin > √2·L·ε``
with ``L`` the layer-product bound (CLIP paper eq. (4); the convolutions' factors now proven bounds
too), and (b) ``lipreg test``'s per-image radius ``min_{j≠y} (f_y − f_j) / B[y, j]`` with the
class-pair bounds ``B`` (``lipreg.functional.bounds.class_pair_bounds``). No attack runs: the two
columns are proven lower bounds of the robust accuracy, the second never below the first.
"""

import argparse
import importlib
from pathlib import Path

import lightning as L
import torch
import yaml

from experiments.common import write_rows
from lipreg.functional import lipschitz_upper_bound, logit_margin
from lipreg.functional.bounds import certified_radius, class_pair_bounds
from lipreg.methods.base import LipRegModule
from lipreg.runs import run_directory

RADII = (0.1, 0.3, 0.5, 1.0, 1.58, 2.0)


def data_module_of(checkpoint: Path, data_dir: str) -> L.LightningDataModule:
    """The data module of the run that wrote ``checkpoint`` (its ``config.yaml``), reading from ``data_dir``."""
    run = run_directory(checkpoint)
    if run is None or not (run / "config.yaml").is_file():
        raise SystemExit(f"{checkpoint} is not inside a run directory with a config.yaml")
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    module_name, _, class_name = data["class_path"].rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)(**{**(data.get("init_args") or {}),
                                                                       "data_dir": data_dir})


def certify(checkpoint: Path, data_dir: str) -> dict:
    module = LipRegModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    data = data_module_of(checkpoint, data_dir)
    data.setup("test")
    x, y = data.splits.test
    shape = tuple(data.input_shape)
    layers = module.net.layers
    upper = lipschitz_upper_bound(layers, shape)
    bounds = class_pair_bounds(layers, shape)
    with torch.no_grad():
        logits = torch.cat([module.net(x[i : i + 1000]) for i in range(0, len(x), 1000)])
    pair_radius = certified_radius(logits, y, bounds)
    global_radius = (logit_margin(logits, y).double() / (2**0.5 * upper)).clamp_min(0.0)
    return {
        "checkpoint": str(checkpoint), "method": type(module).__name__, "images": len(y),
        "clean": (logits.argmax(dim=1) == y).double().mean().item(), "lip_upper": upper,
        "global": {f"{r:g}": (global_radius > r).double().mean().item() for r in RADII},
        "class_pair": {f"{r:g}": (pair_radius > r).double().mean().item() for r in RADII},
        "mean_radius_global": global_radius.mean().item(), "mean_radius_class_pair": pair_radius.mean().item(),
    }


def run_root(checkpoint: Path) -> str:
    """Where the run lives (the folder above ``lightning_logs``), relative to the working directory if inside it."""
    root = checkpoint.resolve().parents[3] if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    try:
        return str(root.relative_to(Path.cwd()))
    except ValueError:
        return str(root)


def markdown(rows: list[dict]) -> str:
    radii = " | ".join(f"ε={r:g}" for r in RADII)
    lines = [f"| checkpoint | clean | L upper | certificate | {radii} | mean radius |",
             "| --- | --- | --- | --- |" + " --- |" * (len(RADII) + 1)]
    for row in rows:
        name = f"{row['method']} {run_root(Path(row['checkpoint']))}"
        for kind, label, mean in (("global", "√2·L (before)", "mean_radius_global"),
                                  ("class_pair", "class pair (now)", "mean_radius_class_pair")):
            cells = " | ".join(f"{100 * row[kind][f'{r:g}']:.1f}" for r in RADII)
            lines.append(f"| {name} | {100 * row['clean']:.1f} | {row['lip_upper']:.3g} | {label} | {cells} "
                         f"| {row[mean]:.3f} |")
    return "\n".join(lines) + "\n\nCertified accuracy in % on all test images (L2).\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON (and .md beside it)")
    args = parser.parse_args(argv)
    rows = [certify(checkpoint, args.data_dir) for checkpoint in args.checkpoints]
    write_rows(args.out, rows, markdown(rows))
    return rows


if __name__ == "__main__":
    main()
