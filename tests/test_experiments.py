"""Every experiment's entry point on a tiny budget, so none of them rots (the real runs: docs/RESULTS.md)."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from experiments import (
    active_pairs,
    attack_ensemble,
    certificates,
    certified_table,
    checkpoint_choice,
    flip_comparison,
    regression_figure2,
    table1,
)


def test_regression_figure2_writes_its_figure_and_table(tmp_path: Path):
    table = regression_figure2.main(["--out", str(tmp_path), "--epochs", "2"])
    assert list(table) == ["0", "10", "1", "1e-10"]
    assert all(v["lipschitz"] >= 0 and v["train_mse"] >= 0 for v in table.values())
    assert {"figure2.png", "figure2.md", "figure2.json"} <= {p.name for p in tmp_path.iterdir()}


def test_table1_rows_run_and_sit_beside_the_papers_numbers(tmp_path: Path, data_dir: Path):
    args = ["--data-dir", str(data_dir), "--out", str(tmp_path), "--epochs", "1", "--limit-batches", "3",
            "--lipschitz-size", "200", "--rows", "Standard", "Weight Reg.90", "CLIP90"]
    results = table1.main(args)
    assert list(results) == ["Standard", "Weight Reg.90", "CLIP90"]
    for row in results.values():
        assert all(0 <= row[k] <= 100 for k in ("test", "noise", "pgd", "pgd_sign"))
    text = (tmp_path / "table1.md").read_text()
    assert "CLIP90" in text and "(36.2)" in text
    assert json.loads((tmp_path / "table1.json").read_text())["CLIP90"]["checkpoint"].endswith(".ckpt")


def test_attack_ensemble_and_checkpoint_choice_run_on_table1_checkpoints(tmp_path: Path, data_dir: Path):
    table1.main(["--data-dir", str(data_dir), "--out", str(tmp_path), "--epochs", "2", "--limit-batches", "3",
                 "--lipschitz-size", "200", "--rows", "CLIP90", "--keep-every-epoch"])
    checkpoints = sorted(tmp_path.rglob("every-*.ckpt"))
    assert [p.name for p in checkpoints] == ["every-epoch=0.ckpt", "every-epoch=1.ckpt"]
    choice = checkpoint_choice.main(["--data-dir", str(data_dir), "--test-images", "40", "--out",
                                     str(tmp_path / "choice.json"), "--checkpoints", *map(str, checkpoints)])
    assert set(choice["picked_by"].values()) <= {str(p) for p in checkpoints}
    assert all(r["test_robust"] <= r["test_clean"] for r in choice["epochs"])
    (result,) = attack_ensemble.main(["--data-dir", str(data_dir), "--images", "30", "--batch", "30",
                                      "--checkpoint", str(checkpoints[-1]), "--out", str(tmp_path / "ens.json"),
                                      "--only", "lipreg PGD-CE", "lipreg APGD-T", "torchattacks APGD-T"])
    assert set(result["accuracy"]) == {"lipreg PGD-CE", "lipreg APGD-T", "torchattacks APGD-T"}
    assert result["worst_case_over_all"] <= min(result["accuracy"].values())


def test_table1_runs_on_fashion_mnist(tmp_path: Path, data_dir: Path):
    args = ["--dataset", "fmnist", "--data-dir", str(data_dir), "--out", str(tmp_path), "--epochs", "1",
            "--limit-batches", "2", "--rows", "Standard"]
    assert list(table1.main(args)) == ["Standard"]


def test_flip_comparison_writes_curves_and_times(tmp_path: Path, data_dir: Path):
    args = ["--data-dir", str(data_dir), "--out", str(tmp_path), "--epochs", "1", "--limit-batches", "3",
            "--sample-size", "40", "--lipschitz-size", "256"]
    results = flip_comparison.main(args)
    assert list(results) == ["STA", "SUM FLIP", "TV", "pTV", "ADV FGSM"]
    assert {"comparison.png", "comparison.csv", "times.md", "flip.json"} <= {p.name for p in tmp_path.iterdir()}


def test_method_comparison_runs_its_rows_and_keeps_finished_ones(tmp_path: Path, data_dir: Path):
    from experiments import method_comparison

    args = ["--data-dir", str(data_dir), "--out", str(tmp_path), "--epochs", "1", "--limit-batches", "2",
            "--sample-size", "20", "--lipschitz-size", "200", "--rows", "Spectral norm", "CLIP90"]
    results = method_comparison.main(args)
    assert set(results) == {"Spectral norm", "CLIP90"}
    for row in results.values():
        assert {"robust@0.5", "robust@1", "robust@2", "certified@2", "lip_upper", "seconds_per_epoch"} <= set(row)
        assert row["lip_lower"] <= row["lip_upper"]
    assert "| CLIP90 |" in (tmp_path / "comparison.md").read_text()
    again = method_comparison.main(args)  # finished rows are kept, not trained again
    assert again == results


def test_method_comparison_sets_a_knob_and_stores_the_row_under_its_label(tmp_path: Path, data_dir: Path):
    from experiments import method_comparison

    args = ["--data-dir", str(data_dir), "--out", str(tmp_path), "--epochs", "1", "--limit-batches", "2",
            "--sample-size", "20", "--rows", "FGSM training", "--label", "FGSM training, ε=0.3",
            "--set", "model.init_args.epsilon", "0.3"]
    results = method_comparison.main(args)
    assert set(results) == {"FGSM training, ε=0.3"}
    assert results["FGSM training, ε=0.3"]["settings"] == {"model.init_args.epsilon": "0.3"}
    config = next((tmp_path / "FGSM_training_ε03").glob("**/config.yaml")).read_text()
    assert "epsilon: 0.3" in config
    with pytest.raises(SystemExit):
        method_comparison.main([*args, "--rows", "FGSM training", "PGD training"])


class PoisonAtSecondEpoch(L.Callback):
    """Makes one weight non-finite when the second epoch starts (a run that diverges after a good epoch)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


def test_an_experiment_row_that_diverges_stops_and_tests_its_last_good_checkpoint(tmp_path: Path, data_dir: Path):
    from experiments.common import configured_run, divergences, fit

    cli = configured_run("mnist_standard", tmp_path, "--data.init_args.data_dir", str(data_dir),
                         "--trainer.max_epochs", "4", "--trainer.limit_train_batches", "2",
                         "--trainer.limit_val_batches", "1")
    cli.trainer.callbacks.append(PoisonAtSecondEpoch())
    message = fit(cli)
    assert message is not None and message.startswith("training diverged at epoch 1")
    assert cli.trainer.current_epoch == 1  # stopped there, not trained on with NaN weights
    best = next(c for c in cli.trainer.checkpoint_callbacks if getattr(c, "monitor", None)).best_model_path
    assert "epoch=0" in best
    saved = torch.load(best, weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())
    assert "row: training diverged at epoch 1" in divergences({"row": {"diverged": message}, "other": {}})


def test_the_active_pair_study_summarises_arms_over_seeds_and_certificates_read_its_checkpoints(
        tmp_path: Path, data_dir: Path):
    args = ["--data-dir", str(data_dir), "--out", str(tmp_path), "--epochs", "1", "--limit-batches", "3",
            "--lipschitz-size", "200", "--sample-size", "20", "--refine-steps", "2", "--seeds", "0", "1",
            "--arms", "full", "active 32/200"]
    table = active_pairs.main(args)
    assert list(table) == ["full", "active 32/200"]
    assert table["full"]["pairs_per_step"]["mean"] == 200 and table["active 32/200"]["pairs_per_step"]["mean"] == 33
    for arm in table.values():
        assert arm["test"]["seeds"] == 2 and arm["test"]["min"] <= arm["test"]["mean"] <= arm["test"]["max"]
        assert arm["pair_set_max_refined"]["mean"] >= arm["pair_set_max"]["mean"] - 1e-6  # ascent only climbs
        assert arm["logged_lip_best"]["mean"] > 0
    first = json.loads((tmp_path / "full" / "seed0" / "run.json").read_text())
    assert active_pairs.main(args) == table  # finished runs are kept, not run again
    assert json.loads((tmp_path / "full" / "seed0" / "run.json").read_text()) == first
    assert "| active 32/200 | 2 |" in (tmp_path / "summary.md").read_text()
    rows = certificates.main(["--data-dir", str(data_dir), first["checkpoint"], "--out", str(tmp_path / "cert.json")])
    (row,) = rows
    for radius in certificates.RADII:  # the class-pair certificate is never below the global one
        assert row["class_pair"][f"{radius:g}"] >= row["global"][f"{radius:g}"]
    assert row["mean_radius_class_pair"] >= row["mean_radius_global"]
    checkpoint = first["checkpoint"]
    rows = certified_table.main(["--data-dir", str(data_dir), "--images", "12", "--samples", "50",
                                 "--work", str(tmp_path / "table"), "--out", str(tmp_path / "table.json"),
                                 f"CLIP={checkpoint}", f"CLIP={checkpoint}@smoothing"])
    pair, smoothed = rows
    assert pair["images"] == smoothed["images"] == 12 and pair["robust"] == smoothed["robust"]
    for radius in certified_table.RADII:  # a certificate of the network never exceeds what the attacks leave
        assert pair["certified"][radius] <= pair["robust"][radius] + 1e-9
    text = (tmp_path / "table.md").read_text()
    assert "| CLIP | class pair |" in text and "| CLIP | smoothing σ=0.25 |" in text
