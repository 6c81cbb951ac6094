"""Tests of the Part 3 module solutions.gpt (exported from solutions/part3_gpt.md by `make release`): the
command-line trainer (its runs, how it resumes), the model's speed settings (fused attention, bfloat16), and
generation with a key/value cache against the plain loop."""
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from solutions import course_utils, gpt

ROOT = Path(__file__).resolve().parent.parent
VOCAB_SIZE, BLOCK_SIZE = 11, 8


@pytest.fixture
def model():
    """A small GPT in double precision with large weights, so that no two logits are close to a tie and the
    plain and cached paths must choose the same tokens."""
    torch.manual_seed(0)
    config = gpt.GPTConfig(vocab_size=VOCAB_SIZE, block_size=BLOCK_SIZE, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    model = gpt.GPT(config).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5)
    return model


def prompt(length, batch=3):
    return torch.randint(VOCAB_SIZE, (batch, length), generator=torch.Generator().manual_seed(length))


def test_help():
    result = subprocess.run([sys.executable, "-m", "solutions.gpt", "--help"], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    for option in ("--model", "--n-layer", "--block-size", "--max-iters", "--learning-rate", "--warmup-iters",
                   "--min-lr", "--betas", "--weight-decay", "--grad-clip", "--dropout", "--data-dir", "--out"):
        assert option in result.stdout


def tiny_text(folder):
    text = folder / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 300, encoding="utf-8")
    return text


def test_tiny_training_run(tmp_path):
    text = tiny_text(tmp_path)
    out = tmp_path / "run"
    gpt.main(["--text", str(text), "--model", "gpt-nano", "--block-size", "16", "--batch-size", "16",
              "--max-iters", "60", "--warmup-iters", "5", "--learning-rate", "3e-3", "--eval-interval", "30",
              "--eval-iters", "2", "--sample-length", "20", "--device", "cpu", "--out", str(out)])
    for name in ("metrics.json", "losses.png", "samples.txt", "samples_during_training.txt", "checkpoint.pt"):
        assert (out / name).is_file(), name
    samples = (out / "samples.txt").read_text(encoding="utf-8")
    assert [line for line in samples.splitlines() if line.startswith("--- temperature")] == [
        f"--- temperature {t}, top_k 20 ---" for t in (0.5, 1.0, 1.5)]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    vocabulary_size = metrics["model_config"]["vocab_size"]
    assert vocabulary_size == len(set(text.read_text(encoding="utf-8")))
    assert metrics["history"]["iteration"] == [30, 60]
    assert metrics["attention"] == "fused"
    assert metrics["precision"] == "float32", "bfloat16 does not pay for a model as narrow as gpt-nano"
    assert metrics["first_interval_seconds_per_iteration"] > 0 and metrics["steady_seconds_per_iteration"] > 0
    assert metrics["final_val_loss"] < math.log(vocabulary_size) - 0.5, "the loss must fall below a uniform guess"


class Interrupted(Exception):
    """A run stopped after its first checkpoint, as by a lost machine or a time limit."""


def train_until_the_first_checkpoint(train):
    """gpt.train that stops the run right after the first evaluation has saved its checkpoint."""
    def interrupted_train(model, train_data, val_data, config, after_evaluation, resume):
        def save_then_stop(*state):
            after_evaluation(*state)
            raise Interrupted
        return train(model, train_data, val_data, config, save_then_stop, resume)
    return interrupted_train


def test_a_resumed_run_ends_as_the_uninterrupted_run(tmp_path, monkeypatch):
    """--resume goes on with the checkpoint's model, settings, optimizer, history and random state: the same
    weights and history as a run that was never stopped. The checkpoint loses its speed settings first, as one
    written before they were fields of GPTConfig (the checkpoints of runs under way) has none."""
    text = tiny_text(tmp_path)
    run = ["--text", str(text), "--model", "gpt-nano", "--block-size", "16", "--batch-size", "8", "--max-iters",
           "20", "--warmup-iters", "2", "--eval-interval", "10", "--eval-iters", "2", "--sample-length", "10",
           "--device", "cpu"]
    gpt.main([*run, "--out", str(tmp_path / "uninterrupted")])
    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        patch.setattr(gpt, "train", train_until_the_first_checkpoint(gpt.train))
        with pytest.raises(Interrupted):
            gpt.main([*run, "--out", str(out)])
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["iteration"] == 10 and not (out / "metrics.json").exists()
    for setting in ("fused_attention", "bfloat16"):
        del checkpoint["model_config"][setting]
    torch.save(checkpoint, out / "checkpoint.pt")
    # Only what is not in the checkpoint: the text, the device and the length of the samples (drawn at random).
    gpt.main(["--text", str(text), "--device", "cpu", "--sample-length", "10", "--out", str(out), "--resume"])

    resumed, uninterrupted = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)
                              for name in ("resumed", "uninterrupted"))
    assert resumed["iteration"] == uninterrupted["iteration"] == 20
    assert resumed["model"].keys() == uninterrupted["model"].keys()
    assert all(torch.equal(resumed["model"][name], uninterrupted["model"][name]) for name in resumed["model"])
    for key in ("iteration", "train_loss", "val_loss", "step_loss", "learning_rate"):  # all but the timings
        assert resumed["history"][key] == uninterrupted["history"][key], key
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["command"].endswith(f"--out {out}") and metrics["resumed_with"][0].endswith("--resume")
    assert metrics["model_config"]["n_embd"] == 48 and metrics["attention"] == "fused"


def test_resume_without_a_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="Nothing to resume: .* Train without --resume first"):
        gpt.main(["--out", str(tmp_path / "never_trained"), "--resume"])


def test_fused_attention_equals_the_course_attention_outputs_and_gradients():
    torch.manual_seed(0)
    config = gpt.GPTConfig(vocab_size=VOCAB_SIZE, block_size=BLOCK_SIZE, n_head=4, n_embd=32, dropout=0.0)
    course = gpt.CausalSelfAttention(config).double()
    fused = gpt.FusedCausalSelfAttention(config).double()
    fused.load_state_dict(course.state_dict())
    x = torch.randn(3, BLOCK_SIZE - 1, 32, dtype=torch.float64, requires_grad=True)  # shorter than the block
    outputs, gradients = [], []
    for layer in (course, fused):
        y = layer(x)
        outputs.append(y)
        gradients.append(torch.autograd.grad((y * torch.arange(y.numel()).view_as(y)).sum(),
                                             [x, *layer.parameters()]))
    assert torch.allclose(*outputs, atol=1e-12)
    for course_gradient, fused_gradient in zip(*gradients):
        assert torch.allclose(course_gradient, fused_gradient, atol=1e-10)


def test_fused_attention_keeps_the_model(model):
    fused = gpt.GPT(replace(model.config, fused_attention=True)).double().eval()
    assert all(isinstance(block.attn, gpt.FusedCausalSelfAttention) for block in fused.transformer.h)
    fused.load_state_dict(model.state_dict())  # the same parameters and names: checkpoints load either way
    assert fused.state_dict().keys() == model.state_dict().keys()
    idx = prompt(BLOCK_SIZE)
    assert torch.allclose(fused(idx), model(idx), atol=1e-10)


def test_bfloat16_training_learns_as_float32_does():
    """The mixed-precision model (bfloat16=True) follows its weights as they change, even inside a caller's
    autocast region and with evaluations between the steps: its loss ends where float32's does, within bfloat16's
    rounding. (With autocast's weight cache on, the evaluations used stale weights: 2.6 against 0.6.)"""
    text = torch.arange(400) % VOCAB_SIZE  # a sequence a GPT learns in a few steps
    config = gpt.TrainConfig(batch_size=16, max_iters=60, learning_rate=3e-3, warmup_iters=5, eval_interval=20,
                             eval_iters=2)
    losses = {}
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = gpt.GPT(gpt.GPTConfig(vocab_size=VOCAB_SIZE, block_size=BLOCK_SIZE, n_layer=2, n_head=2, n_embd=32,
                                      dropout=0.1, fused_attention=True, bfloat16=precision == "bfloat16"))
        with torch.autocast("cpu", enabled=False):  # a caller's region, as a test harness or notebook may have
            history = gpt.train(model, text, text, config)
        losses[precision] = history["val_loss"][-1]
        assert model(text[None, :BLOCK_SIZE]).dtype == torch.float32
    # The same weights without the setting: the logits differ by bfloat16's rounding only.
    float32 = gpt.GPT(replace(model.config, bfloat16=False))
    float32.load_state_dict(model.state_dict())
    difference = (model.eval()(text[None, :BLOCK_SIZE]) - float32.eval()(text[None, :BLOCK_SIZE])).abs().max()
    assert 0 < difference < 0.1, difference
    assert losses["float32"] < 0.5 * math.log(VOCAB_SIZE), losses
    assert abs(losses["bfloat16"] - losses["float32"]) < 0.1, losses


@pytest.mark.parametrize("prompt_length", [1, 5])
def test_fast_greedy_generation_equals_plain(model, prompt_length):
    idx = prompt(prompt_length)
    new_tokens = BLOCK_SIZE - prompt_length  # fills the block: the cache is used to the end
    assert torch.equal(gpt.generate_fast(model, idx, new_tokens), model.generate(idx, new_tokens))


@pytest.mark.parametrize("top_k", [None, 4])
def test_fast_sampling_equals_plain_with_the_same_seed(model, top_k):
    idx = prompt(2)
    sampling = dict(do_sample=True, temperature=0.8, top_k=top_k)
    torch.manual_seed(1)
    plain = model.generate(idx, BLOCK_SIZE - 2, **sampling)
    torch.manual_seed(1)
    assert torch.equal(gpt.generate_fast(model, idx, BLOCK_SIZE - 2, **sampling), plain)


@pytest.mark.parametrize("prompt_length", [1, BLOCK_SIZE, BLOCK_SIZE + 3])
def test_fast_generation_is_correct_once_the_context_is_cropped(model, prompt_length):
    idx = prompt(prompt_length)
    assert torch.equal(gpt.generate_fast(model, idx, 3 * BLOCK_SIZE), model.generate(idx, 3 * BLOCK_SIZE))
    torch.manual_seed(2)
    plain = model.generate(idx, 3 * BLOCK_SIZE, do_sample=True)
    torch.manual_seed(2)
    assert torch.equal(gpt.generate_fast(model, idx, 3 * BLOCK_SIZE, do_sample=True), plain)


def test_fast_generation_keeps_its_input_and_runs_one_position_per_step(model, monkeypatch):
    idx = prompt(3)
    original = idx.clone()
    lengths = []
    forward_with_cache = gpt.forward_with_cache

    def counting_forward(model, new_tokens, caches):
        lengths.append(new_tokens.size(1))
        return forward_with_cache(model, new_tokens, caches)

    monkeypatch.setattr(gpt, "forward_with_cache", counting_forward)
    out = gpt.generate_fast(model, idx, BLOCK_SIZE)
    assert out.shape == (3, 3 + BLOCK_SIZE) and torch.equal(idx, original)
    # The prompt, then one token per step while the block is not full, then the cropped window each step.
    assert lengths == [3] + [1] * (BLOCK_SIZE - 3) + [BLOCK_SIZE] * 2


def test_fast_generation_changes_neither_the_model_nor_pytorch_settings(model):
    """The residual stream is updated in place and oneDNN is off during the call: neither may leak out."""
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    onednn_enabled = torch.backends.mkldnn.enabled
    gpt.generate_fast(model, prompt(3), BLOCK_SIZE)  # the prompt, single tokens, then cropped windows
    assert all(torch.equal(value, weights[name]) for name, value in model.state_dict().items())
    assert torch.backends.mkldnn.enabled == onednn_enabled


def test_fast_generation_refuses_training_mode(model):
    with pytest.raises(AssertionError, match="eval"):
        gpt.generate_fast(model.train(), prompt(1), 2)


RESULTS = ROOT / "book" / "results" / "part3_gpt"


def grimm():
    """(vocabulary, train_data, val_data) of Grimms' Fairy Tales from the data root; skip the test without it."""
    try:
        return gpt.load_char_data()
    except course_utils.DataNotFoundError as missing:
        pytest.skip(str(missing))


def published_reference():
    """(metrics.json of the reference run, a GPT of its shape holding the published weights gpt.pt)."""
    metrics = json.loads((RESULTS / "metrics.json").read_text(encoding="utf-8"))
    shape = {key: metrics["model_config"][key] for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}
    return metrics, course_utils.load_reference(gpt.GPT(gpt.GPTConfig(**shape)), "gpt.pt", root=RESULTS)


def test_the_published_gpt_weights_reproduce_the_published_validation_loss():
    _, _, val_data = grimm()
    metrics, model = published_reference()
    # float16 weights (half the file) against the float32 model the trainer measured: equal to the last digit
    assert abs(gpt.whole_split_loss(model, val_data) - metrics["val_loss_whole_split"]) < 1e-3


def test_with_load_reference_the_training_cell_loads_the_reference_gpt_without_training(monkeypatch,
                                                                                       run_release_cell):
    vocabulary, train_data, val_data = grimm()
    monkeypatch.setenv(course_utils.REFERENCE_DIR_VARIABLE, str(RESULTS))
    monkeypatch.setattr(gpt, "train", lambda *args: pytest.fail("LOAD_REFERENCE must not train"))
    namespace = {**vars(gpt), "course_utils": course_utils, "QUICK": False, "LOAD_REFERENCE": True,
                 "DEVICE": torch.device("cpu"), "vocabulary": vocabulary, "train_data": train_data,
                 "val_data": val_data}
    model = run_release_cell("part3_gpt", "load_reference(", namespace)["model"]
    published = torch.load(RESULTS / "gpt.pt")
    assert model.state_dict().keys() == published.keys()
    assert all(torch.equal(value, published[name].to(value.dtype)) for name, value in model.state_dict().items())
