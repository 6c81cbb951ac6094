"""Training benchmark of Part 3: tokens per second of the reference trainer's step (what `python -m solutions.gpt`
runs: the fused attention kernel, bfloat16 matrix products where they pay (gpt.bfloat16_pays), solutions.gpt's
optimizer and train_step) against a plain baseline written here (nanoGPT-style: the same shapes, explicit
attention with a stored mask, torch's default AdamW, float32), on CPU.

Run from the repository root (after `make release`):  python -m bench.training
Two configurations: gpt-mini (6 layers, 6 heads, width 192, block 128, batch 128, dropout 0.1) and the small CPU
configuration (4 layers, 4 heads, width 128, block 64, batch 12, dropout 0). The two steps take turns, after a
warm-up, so that a change in the machine's load affects them alike; the figures are medians, in wall-clock and
CPU time (this process's, which other processes' load disturbs much less).
"""
import argparse
import math
import os
import time

import torch
import torch.nn as nn
from torch.nn import functional as F

from solutions import gpt

CONFIGURATIONS = {
    "gpt-mini": dict(model=dict(n_layer=6, n_head=6, n_embd=192, block_size=128, dropout=0.1),
                     batch_size=128, learning_rate=5e-4, betas=(0.9, 0.95)),
    "small": dict(model=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
                  batch_size=12, learning_rate=1e-3, betas=(0.9, 0.99)),
}
VOCAB_SIZE = 65  # tiny_shakespeare.txt
WEIGHT_DECAY, GRAD_CLIP = 0.1, 1.0


class BaselineBlock(nn.Module):
    """Pre-LayerNorm transformer block with attention written out: scores, stored mask, softmax, dropout."""

    def __init__(self, n_head, n_embd, block_size, dropout):
        super().__init__()
        self.n_head = n_head
        self.norm_1, self.norm_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.qkv, self.out = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd),
                                 nn.Dropout(dropout))
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("causal", torch.ones(block_size, block_size, dtype=torch.bool).tril())

    def attention(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // self.n_head))
        scores = scores.masked_fill(~self.causal[:T, :T], float("-inf"))
        y = self.dropout(scores.softmax(dim=-1)) @ v
        return self.dropout(self.out(y.transpose(1, 2).reshape(B, T, C)))

    def forward(self, x):
        x = x + self.attention(self.norm_1(x))
        return x + self.mlp(self.norm_2(x))


class BaselineGPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, block_size, dropout):
        super().__init__()
        self.token, self.position = nn.Embedding(VOCAB_SIZE, n_embd), nn.Embedding(block_size, n_embd)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(BaselineBlock(n_head, n_embd, block_size, dropout) for _ in range(n_layer)))
        self.norm = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, VOCAB_SIZE, bias=False)

    def forward(self, idx):
        x = self.dropout(self.token(idx) + self.position(torch.arange(idx.size(1))))
        return self.head(self.norm(self.blocks(x)))


def baseline_step(setting):
    """One step of the baseline: forward, cross-entropy, backward, clipping, AdamW (decay on matrices only)."""
    model = BaselineGPT(**setting["model"]).train()
    parameters = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": [p for p in parameters if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
                                   {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=setting["learning_rate"], betas=setting["betas"])

    def step(inputs, targets):
        logits = model(inputs)
        loss = F.cross_entropy(logits.view(-1, VOCAB_SIZE), targets.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, GRAD_CLIP)
        optimizer.step()
        return loss.item()
    return step


def reference_step(setting, bfloat16):
    """One step of the reference trainer, as `python -m solutions.gpt` builds it (bfloat16: as its --precision
    auto decides, gpt.bfloat16_pays)."""
    config = gpt.GPTConfig(vocab_size=VOCAB_SIZE, fused_attention=True, bfloat16=bfloat16, **setting["model"])
    model = gpt.GPT(config).train()
    optimizer = gpt.configure_optimizer(model, setting["learning_rate"], WEIGHT_DECAY, setting["betas"])
    return lambda inputs, targets: gpt.train_step(model, optimizer, inputs, targets, GRAD_CLIP)


def timed_steps(steps, setting, iterations, warmup):
    """{name: (median wall seconds, median CPU seconds)} per step, the steps taking turns on the same batches."""
    data = torch.randint(VOCAB_SIZE, (100_000,), generator=torch.Generator().manual_seed(0))
    times = {name: ([], []) for name in steps}
    for iteration in range(warmup + iterations):
        inputs, targets = gpt.get_batch(data, setting["model"]["block_size"], setting["batch_size"])
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            step(inputs, targets)
            if iteration >= warmup:
                times[name][0].append(time.perf_counter() - wall)
                times[name][1].append(time.process_time() - cpu)
    return {name: tuple(sorted(values)[len(values) // 2] for values in pair) for name, pair in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configurations", nargs="+", choices=list(CONFIGURATIONS), default=list(CONFIGURATIONS))
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations of each step")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--threads", type=int, help="torch threads (default: PyTorch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU, {torch.get_num_threads()} thread(s), median of {args.iterations} iterations after {args.warmup}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name in args.configurations:
        setting = CONFIGURATIONS[name]
        torch.manual_seed(0)
        bfloat16 = gpt.bfloat16_pays(torch.device("cpu"), gpt.GPTConfig(vocab_size=VOCAB_SIZE, **setting["model"]))
        steps = {"baseline (explicit attention)": baseline_step(setting),
                 f"reference trainer ({'bfloat16' if bfloat16 else 'float32'})": reference_step(setting, bfloat16)}
        times = timed_steps(steps, setting, args.iterations, args.warmup)
        tokens = setting["batch_size"] * setting["model"]["block_size"]
        for step_name, (wall, cpu) in times.items():
            print(f"{name:8s}  {step_name:30s} {wall:7.3f} s/iteration {tokens / wall:8.0f} tokens/s "
                  f"{tokens / cpu:8.0f} tokens/CPU-s")
        (base_wall, base_cpu), (ref_wall, ref_cpu) = times.values()
        print(f"{name:8s}  ratio reference/baseline: {base_wall / ref_wall:.2f}x tokens/s "
              f"(CPU time {base_cpu / ref_cpu:.2f}x)")


if __name__ == "__main__":
    main()
