"""Generation benchmark of Part 3: tokens per second of the plain loop (GPT.generate) and of the key/value
cache (generate_fast) for gpt-mini, 127 new tokens from a 1-token prompt, batch 1 and batch 16, on CPU.

Run from the repository root (after `make release`):  python -m bench.generation
Untrained weights: speed does not depend on them, and both paths must give the same tokens.
Wall-clock figures are the best of the repeats; on a shared machine also compare the CPU-time figures (tokens
per CPU-second of this process), which other processes' load disturbs much less.
"""
import argparse
import os
import time

import torch

from solutions.gpt import GPT, MODEL_TYPES, GPTConfig, generate_fast

GENERATORS = {"plain loop (GPT.generate)": GPT.generate, "key/value cache (generate_fast)": generate_fast}


def timed_runs(generators, model, idx, new_tokens, repeats):
    """{name: (best wall seconds, best CPU seconds, tokens)} of each generator, after one warm-up run each.

    The generators take turns, so that a change in the machine's load affects them alike.
    """
    results = {name: (float("inf"), float("inf"), generate(model, idx, new_tokens))
               for name, generate in generators.items()}
    for _ in range(repeats):
        for name, generate in generators.items():
            wall, cpu = time.perf_counter(), time.process_time()
            tokens = generate(model, idx, new_tokens)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best_wall, best_cpu, _ = results[name]
            results[name] = (min(best_wall, wall), min(best_cpu, cpu), tokens)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODEL_TYPES), default="gpt-mini")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=65, help="tiny_shakespeare.txt has 65 characters")
    parser.add_argument("--new-tokens", type=int, default=127)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: PyTorch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, dropout=0.0,
                       **MODEL_TYPES[args.model])
    model = GPT(config).eval()
    print(f"{args.model}, {args.new_tokens} new tokens from a 1-token prompt, CPU, {torch.get_num_threads()} "
          f"thread(s), best of {args.repeats}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for batch_size in args.batch_sizes:
        idx = torch.zeros(batch_size, 1, dtype=torch.long)
        results = timed_runs(GENERATORS, model, idx, args.new_tokens, args.repeats)
        generated = batch_size * args.new_tokens
        for name, (wall, cpu, _) in results.items():
            print(f"batch {batch_size:3d}  {name:32s} {generated / wall:8.0f} tokens/s "
                  f"{generated / cpu:8.0f} tokens/CPU-s")
        (plain_wall, plain_cpu, plain_tokens), (fast_wall, fast_cpu, fast_tokens) = results.values()
        print(f"batch {batch_size:3d}  ratio {plain_wall / fast_wall:.2f}x (CPU time {plain_cpu / fast_cpu:.2f}x); "
              f"same tokens: {torch.equal(plain_tokens, fast_tokens)}")


if __name__ == "__main__":
    main()
