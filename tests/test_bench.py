"""Smoke tests of the benchmarks under bench/ (they time nothing here: speed is measured by running them)."""
import math

from bench import generation, training


def test_generation_benchmark_runs_and_both_paths_agree(capsys):
    generation.main(["--model", "gpt-nano", "--block-size", "16", "--new-tokens", "20", "--batch-sizes", "1", "3",
                     "--repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    verdicts = [line for line in lines if "ratio" in line]
    assert len(verdicts) == 2 and all(line.endswith("same tokens: True") for line in verdicts)


def test_training_benchmark_steps_train_the_same_shapes():
    setting = dict(model=dict(n_layer=1, n_head=2, n_embd=16, block_size=8, dropout=0.1), batch_size=4,
                   learning_rate=1e-3, betas=(0.9, 0.99))
    steps = {"baseline": training.baseline_step(setting), "reference": training.reference_step(setting, False),
             "reference, bfloat16": training.reference_step(setting, True)}
    times = training.timed_steps(steps, setting, iterations=2, warmup=1)
    assert set(times) == set(steps) and all(wall > 0 and cpu >= 0 for wall, cpu in times.values())
    losses = [step(*training.gpt.get_batch(training.torch.arange(100) % training.VOCAB_SIZE, 8, 4))
              for step in steps.values()]
    assert all(abs(loss - math.log(training.VOCAB_SIZE)) < 0.5 for loss in losses), "untrained: about ln V"
