"""Tests of the Part 2 module solutions.aae (exported from solutions/part2_aae.md by `make release`): the data
scaling, the command-line trainer, and its error when MNIST is missing."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from solutions import aae, course_utils

ROOT = Path(__file__).resolve().parent.parent


def test_help_and_defaults():
    result = subprocess.run([sys.executable, "-m", "solutions.aae", "--help"], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    for option in ("--z-dim", "--lambda", "--batch-size", "--ae-lr", "--disc-lr", "--disc-optimizer", "--epochs",
                   "--batches-per-epoch", "--seed", "--data-dir", "--device", "--out"):
        assert option in result.stdout
    defaults = aae.AAEConfig()
    assert (defaults.z_dim, defaults.batch_size, defaults.lambda_, defaults.ae_lr, defaults.disc_lr,
            defaults.disc_optimizer, defaults.epochs, defaults.sample_every) == (8, 64, 0.995, 1e-3, 5e-3, "sgd", 100, 5)


@pytest.mark.mnist
def test_full_training_set_in_minus_one_one():
    loader = aae.mnist_loader(train=True, batch_size=64)
    assert len(loader.dataset) == 60_000
    images, labels = next(iter(loader))
    assert images.shape == (64, 1, 28, 28) and labels.shape == (64,)
    assert images.min() == -1 and images.max() == 1


@pytest.mark.mnist
def test_tiny_training_run(tmp_path):
    aae.main(["--z-dim", "2", "--epochs", "2", "--batches-per-epoch", "5", "--sample-every", "1", "--device", "cpu",
              "--out", str(tmp_path)])
    for name in ("metrics.json", "losses.png", "reconstructions.png", "latent_space.png", "samples_epoch_000.png",
                 "samples_epoch_001.png", "samples_epoch_002.png"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["z_dim"] == 2
    assert [record["epoch"] for record in metrics["history"]] == [1, 2]
    for key in ("recon_loss", "gen_loss", "ae_loss", "disc_loss", "loss_real", "loss_fake", "accuracy", "seconds"):
        assert key in metrics["history"][-1], key
    assert 0 <= metrics["history"][-1]["accuracy"] <= 1
    aae.AdversarialAE(z_dim=2).load_state_dict(torch.load(tmp_path / "model.pt"))  # the trained weights


def test_missing_data_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv(course_utils.DOWNLOAD_VARIABLE, "0")
    with pytest.raises(SystemExit, match="MNIST is not in"):
        aae.main(["--data-dir", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists(), "nothing is written when there is no data"


@pytest.mark.mnist
@pytest.mark.parametrize("model_name", ["ae", "aae"])
def test_the_published_reference_weights_are_the_runs_the_book_reports(model_name):
    results = ROOT / "book" / "results" / "part2_aae"
    metrics = json.loads((results / f"metrics_z2_{model_name}.json").read_text())
    model = course_utils.load_reference(aae.AdversarialAE(z_dim=metrics["config"]["z_dim"]),
                                        f"{model_name}_z2.pt", root=results)
    images, _ = next(iter(aae.mnist_loader(train=False, batch_size=2000)))
    with torch.no_grad():
        recon_x, codes = model(images)
        _, logs = model.get_loss_autoencoder(images, recon_x, codes, metrics["config"]["lambda_"])
    # the test images' reconstruction loss is close to the last epoch's average on the training images
    assert float(logs["recon_loss"]) < 1.3 * metrics["history"][-1]["recon_loss"]
    # only the AAE's codes are shaped like the prior N(0, I)
    assert (codes.std(0) < 2).all() == (model_name == "aae"), codes.std(0)


@pytest.mark.mnist
def test_the_published_z8_aae_is_the_run_the_book_reports():
    """The shipped AAE with z_dim 8 reconstructs test images as well as its last training epoch did, and its codes
    follow the prior N(0, I) (the regularisation worked)."""
    results = ROOT / "book" / "results" / "part2_aae"
    metrics = json.loads((results / "metrics_z8.json").read_text())
    model = course_utils.load_reference(aae.AdversarialAE(z_dim=8), "aae_z8.pt", root=results)
    images, _ = next(iter(aae.mnist_loader(train=False, batch_size=2000)))
    with torch.no_grad():
        recon_x, codes = model(images)
        _, logs = model.get_loss_autoencoder(images, recon_x, codes, metrics["config"]["lambda_"])
    assert float(logs["recon_loss"]) < 1.1 * metrics["history"][-1]["recon_loss"]
    assert codes.mean(0).abs().max() < 0.5 and ((codes.std(0) - 1).abs() < 0.5).all(), (codes.mean(0), codes.std(0))


@pytest.mark.mnist
def test_with_load_reference_question_5_shows_the_reference_aae_without_training(monkeypatch, run_release_cell):
    monkeypatch.setenv(course_utils.REFERENCE_DIR_VARIABLE, str(ROOT / "book" / "results" / "part2_aae"))
    monkeypatch.setattr(aae, "train", lambda *args: pytest.fail("LOAD_REFERENCE must not train"))
    shown = []
    monkeypatch.setattr(aae, "show_grid", lambda images, title, nrow=8: shown.append((title, images.shape[0])))
    run_release_cell("part2_aae", "aae_z8.pt", {**vars(aae), "course_utils": course_utils, "LOAD_REFERENCE": True,
                                                "BUDGET": {"epochs": 1}, "CPU_SECONDS_PER_MODEL": 1})
    assert shown == [("reference AAE (100 epochs), z_dim 8: decoded prior samples", 64),
                     ("test images and their reconstructions", 32)]


@pytest.mark.mnist
def test_with_load_reference_question_6_shows_the_reference_models_without_training(monkeypatch,
                                                                                   run_release_cell):
    monkeypatch.setenv(course_utils.REFERENCE_DIR_VARIABLE, str(ROOT / "book" / "results" / "part2_aae"))
    monkeypatch.setattr(aae, "train", lambda *args: pytest.fail("LOAD_REFERENCE must not train"))
    shown = []
    monkeypatch.setattr(aae, "plot_latent_space", lambda codes, labels, title: shown.append(title))
    run_release_cell("part2_aae", "ae_z2.pt", {**vars(aae), "course_utils": course_utils, "LOAD_REFERENCE": True,
                                               "BUDGET": {"epochs": 1}, "CPU_SECONDS_PER_MODEL": 1})
    assert shown == ["reference plain autoencoder (100 epochs), z_dim 2", "reference AAE (100 epochs), z_dim 2"]
