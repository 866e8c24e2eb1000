"""Certified against empirical robustness of trained checkpoints: RESULTS §8's table.

    python -m experiments.certified_table --data-dir ../shared/datasets --out docs/results/certified_table.json \
        NAME=CKPT[@CERTIFICATE] [NAME=CKPT[@CERTIFICATE] ...]

Each checkpoint is tested with ``lipreg test`` (its run's ``config.yaml``) on the first
``--images`` test images, with the default ensemble at the radii of the field's tables and the
certificate named after ``@`` (``class-pair``, the default, or ``smoothing``: randomized smoothing of
the network with ``--sigma``), no time budget; a checkpoint named again (with another certificate)
is only certified, its robust accuracy taken from its first row. A row gives the clean accuracy, the certified and the
robust (worst case over the ensemble) accuracy at each radius on the same images, the mean certified
radius, and the run's training time (the wall time of its TensorBoard log up to the checkpoint's
epoch).
"""

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments.common import write_rows
from lipreg.cli import run
from lipreg.evaluation import RobustnessResult
from lipreg.runs import run_directory

RADII = (0.3, 0.5, 1.0, 1.58, 2.0)


def training_minutes(checkpoint: Path) -> float | None:
    """Minutes from the first to the last training-epoch record of the checkpoint's run (TensorBoard)."""
    run_dir = run_directory(checkpoint)
    events = sorted(run_dir.glob("events.out.tfevents.*")) if run_dir is not None else []
    if not events:
        return None
    log = EventAccumulator(str(events[0]), size_guidance={"scalars": 0})
    log.Reload()
    if "epoch" not in log.Tags()["scalars"]:
        return None
    times = [event.wall_time for event in log.Scalars("epoch")]
    return (max(times) - min(times)) / 60 if len(times) > 1 else None


def test_row(name: str, checkpoint: Path, certificate: str, args: argparse.Namespace,
             attacked: dict | None = None) -> dict:
    """One row; ``attacked``: a row of the same checkpoint on the same images whose robust accuracy is
    reused (the attacks test the network, whatever the certificate), so only the certificate runs."""
    out = args.work / name / certificate
    config = run_directory(checkpoint) / "config.yaml"
    radii = "[" + ", ".join(f"{r:g}" for r in RADII) + "]"
    run(["test", "--config", str(config), "--ckpt_path", str(checkpoint), "--data.init_args.data_dir", args.data_dir,
         "--trainer.logger", "false", "--evaluation.output_dir", str(out), "--evaluation.time_budget", "null",
         "--evaluation.sample_size", str(args.images),
         "--evaluation.pgd_epsilons", "[]" if attacked else radii,
         "--evaluation.certified_radii", radii, "--evaluation.certificate", certificate,
         "--evaluation.smoothing_sigma", str(args.sigma), "--evaluation.smoothing_samples", str(args.samples),
         "--evaluation.noise_sigmas", "[]", "--evaluation.fgsm_epsilons", "[]", "--evaluation.sign_pgd", "false",
         "--evaluation.train_accuracy", "false", "--quiet", "true"])
    result = RobustnessResult.load(out / "robustness.json")
    return {"name": name, "checkpoint": str(checkpoint), "certificate": certificate, "images": result.attack_samples,
            "clean": result.clean, "clean_subset": result.clean_subset, "certified": dict(result.certified),
            "robust": attacked["robust"] if attacked else result.curve("robust"),
            "mean_certified_radius": result.mean_certified_radius,
            "lip_upper": result.lipschitz.upper, "training_minutes": training_minutes(checkpoint),
            "label": result.settings.get("certificate_label")}


def markdown(rows: list[dict]) -> str:
    radii = " | ".join(f"ε={r:g}" for r in RADII)
    lines = [f"| run | certificate | clean (all) | clean (tested) | certified: {radii} | robust: {radii} "
             "| mean radius | L upper | training |",
             "| --- | --- | --- | --- |" + " --- |" * (2 * len(RADII)) + " --- | --- | --- |"]
    for row in rows:
        certified = " | ".join(f"{100 * row['certified'][r]:.1f}" for r in RADII)
        robust = " | ".join(f"{100 * row['robust'][r]:.1f}" for r in RADII)
        minutes = "-" if row["training_minutes"] is None else f"{row['training_minutes']:.1f} min"
        upper = "-" if row["lip_upper"] is None else f"{row['lip_upper']:.3g}"
        kind = "smoothing σ=" + row["label"].split("σ=")[1].split(",")[0] if row["certificate"] == "smoothing" \
            else "class pair"
        lines.append(f"| {row['name']} | {kind} | {100 * row['clean']:.1f} | {100 * row['clean_subset']:.1f} | "
                     f"{certified} | {robust} | {row['mean_certified_radius']:.3f} | {upper} | {minutes} |")
    return ("\n".join(lines) + f"\n\nAccuracies in % on the first {rows[0]['images']:,} test images (clean (all): "
            "all of them); L2. Smoothing certifies the smoothed classifier with probability 1 − α per image "
            "(α = 0.001), the class-pair certificate the network itself.\n")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=CHECKPOINT[@CERTIFICATE]")
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--images", type=int, default=1000, help="test images attacked and certified")
    parser.add_argument("--sigma", type=float, default=0.25, help="the smoothing certificate's noise σ")
    parser.add_argument("--samples", type=int, default=1000, help="the smoothing certificate's n")
    parser.add_argument("--work", type=Path, default=Path("results/certified_table"), help="lipreg test's outputs")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON (and .md beside it)")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    for spec in args.runs:
        name, _, rest = spec.partition("=")
        checkpoint, _, certificate = rest.partition("@")
        attacked = next((row for row in rows if row["checkpoint"] == checkpoint), None)
        rows.append(test_row(name, Path(checkpoint), certificate or "class-pair", args, attacked))
    write_rows(args.out, rows, markdown(rows))
    return rows


if __name__ == "__main__":
    main()
