"""Tests of the Part 1 module solutions.vae (exported from solutions/part1_vae.md by `make release`): the 4-bit
data, the command-line trainer, and its error when MNIST is missing."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from solutions import course_utils, vae

ROOT = Path(__file__).resolve().parent.parent


def test_help():
    result = subprocess.run([sys.executable, "-m", "solutions.vae", "--help"], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    for option in ("--z-dim", "--num-filters", "--lr", "--batch-size", "--epochs", "--train-limit",
                   "--eval-limit", "--seed", "--data-dir", "--device", "--out"):
        assert option in result.stdout
    defaults = vae.VAEConfig()
    assert (defaults.z_dim, defaults.num_filters, defaults.lr, defaults.batch_size, defaults.epochs) == \
        (20, 32, 1e-3, 128, 80)


def test_4bit_levels():
    pixels = torch.tensor([[[0, 15, 16, 128, 254, 255]]], dtype=torch.uint8)
    levels = vae.to_4bit(pixels)
    assert levels.shape == (1, 1, 1, 6) and levels.dtype == torch.long
    assert levels.flatten().tolist() == [0, 0, 1, 8, 15, 15]  # floor(16 * p / 255), at most 15


@pytest.mark.mnist
def test_split_sizes_and_fixed_split():
    train, val, test = vae.mnist_4bit()
    assert (len(train), len(val), len(test)) == (54_000, 6_000, 10_000)
    assert train.indices[:5] == vae.mnist_4bit()[0].indices[:5], "the split must not depend on the run"
    image, _ = train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.long and 0 <= image.min() <= image.max() <= 15


@pytest.mark.mnist
def test_tiny_training_run(tmp_path):
    vae.main(["--z-dim", "2", "--num-filters", "8", "--epochs", "2", "--train-limit", "512", "--eval-limit",
              "256", "--batch-size", "64", "--device", "cpu", "--out", str(tmp_path)])
    for name in ("metrics.json", "bpd_curves.png", "samples_epoch_000.png", "samples_epoch_002.png", "manifold.png"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epoch"] == [1, 2]
    for key in ("train_bpd", "val_bpd", "test_bpd", "seconds_per_epoch"):
        assert len(metrics[key]) == 2, key
    assert metrics["val_bpd"][-1] < 4, "training must do better than uniform pixels (4 bpd)"
    vae.VAE(num_filters=8, z_dim=2, lr=1e-3).load_state_dict(torch.load(tmp_path / "model.pt"))  # the trained weights


def test_missing_data_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv(course_utils.DOWNLOAD_VARIABLE, "0")
    with pytest.raises(course_utils.DataNotFoundError, match="MNIST/raw"):
        vae.mnist_4bit(root=tmp_path)
    with pytest.raises(SystemExit, match="MNIST is not in"):
        vae.main(["--data-dir", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists(), "nothing is written when there is no data"


@pytest.mark.mnist
@pytest.mark.parametrize("weights, metrics_file, tolerance", [("vae_z20.pt", "metrics.json", 0.001),
                                                              ("vae_z2.pt", "metrics_z2.json", 0.03)])
def test_the_published_reference_weights_are_the_run_the_book_reports(weights, metrics_file, tolerance):
    """The shipped weights give the test bpd the book prints (to its last digit for z_dim 20, on the whole test
    set; the 2-d model, published earlier, on 2,000 test images)."""
    results = ROOT / "book" / "results" / "part1_vae"
    metrics = json.loads((results / metrics_file).read_text())
    config = metrics["config"]
    model = course_utils.load_reference(vae.VAE(config["num_filters"], config["z_dim"], config["lr"]), weights,
                                        root=results)
    torch.manual_seed(0)
    with torch.no_grad():
        test_bpd, _, _ = vae.test_vae(model, vae.data_loaders(500, eval_limit=None if tolerance < 0.01 else 2000)[2])
    assert abs(test_bpd - metrics["test_bpd"][-1]) < tolerance, (test_bpd, metrics["test_bpd"][-1])


@pytest.mark.mnist
def test_with_load_reference_question_7_loads_the_reference_vae_without_training(monkeypatch, run_release_cell,
                                                                                capsys):
    results = ROOT / "book" / "results" / "part1_vae"
    monkeypatch.setenv(course_utils.REFERENCE_DIR_VARIABLE, str(results))
    monkeypatch.setattr(vae, "fit", lambda *args: pytest.fail("LOAD_REFERENCE must not train"))
    namespace = {**vars(vae), "QUICK": True, "LOAD_REFERENCE": True, "DEVICE": torch.device("cpu"),
                 "TRAIN_SIZE": 54_000}
    namespace = run_release_cell("part1_vae", '"vae_z20.pt")', namespace)
    assert list(namespace["samples"]) == [80] and namespace["samples"][80].shape[0] == 3
    published = json.loads((results / "metrics.json").read_text())["test_bpd"][-1]
    printed = re.search(r"The reference VAE \(80 epochs\): test bpd (\d\.\d{3})", capsys.readouterr().out)
    assert printed and abs(float(printed[1]) - published) < 0.002, (printed, published)


def test_with_load_reference_question_9_shows_the_reference_manifold_without_training(monkeypatch,
                                                                                     run_release_cell):
    monkeypatch.setenv(course_utils.REFERENCE_DIR_VARIABLE, str(ROOT / "book" / "results" / "part1_vae"))
    monkeypatch.setattr(vae, "fit", lambda *args: pytest.fail("LOAD_REFERENCE must not train"))
    namespace = {**vars(vae), "QUICK": True, "LOAD_REFERENCE": True, "DEVICE": torch.device("cpu")}
    namespace = run_release_cell("part1_vae", '"vae_z2.pt")', namespace)
    assert namespace["config_2d"].epochs == 80 and namespace["manifold"].shape == (3, 602, 602)
    reference = torch.load(ROOT / "book" / "results" / "part1_vae" / "vae_z2.pt")
    assert all(torch.equal(value, reference[name]) for name, value in namespace["model_2d"].state_dict().items())
