"""Generation benchmark of Part 3: tokens per second of the plain loop (GPT.generate) and of the key/value
cache (generate_fast) for gpt-mini, batch 1, 127 new tokens from a 1-token prompt, on CPU.

Run from the repository root (after `make release`):  python -m bench.generation
Untrained weights: speed does not depend on them, and both paths must give the same tokens.
"""
import argparse
import time

import torch

from solutions.gpt import GPT, MODEL_TYPES, GPTConfig, generate_fast


def tokens_per_second(generators, model, idx, new_tokens, repeats):
    """{name: (tokens per second, tokens)} of each generator: the best of `repeats` timed runs after a warm-up.

    The generators take turns, so that a change in the machine's load affects them alike.
    """
    best = {name: float("inf") for name in generators}
    tokens = {name: generate(model, idx, new_tokens) for name, generate in generators.items()}
    for _ in range(repeats):
        for name, generate in generators.items():
            started = time.perf_counter()
            tokens[name] = generate(model, idx, new_tokens)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: (new_tokens / best[name], tokens[name]) for name in generators}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODEL_TYPES), default="gpt-mini")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=65, help="tiny_shakespeare.txt has 65 characters")
    parser.add_argument("--new-tokens", type=int, default=127)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: PyTorch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, dropout=0.0,
                       **MODEL_TYPES[args.model])
    model = GPT(config).eval()
    idx = torch.zeros(1, 1, dtype=torch.long)
    results = tokens_per_second({"plain": GPT.generate, "fast": generate_fast}, model, idx, args.new_tokens,
                                args.repeats)
    (plain, plain_tokens), (fast, fast_tokens) = results["plain"], results["fast"]
    print(f"{args.model}, batch 1, {args.new_tokens} new tokens from a 1-token prompt, CPU, "
          f"{torch.get_num_threads()} thread(s), best of {args.repeats}")
    print(f"plain loop (GPT.generate):       {plain:8.1f} tokens/s")
    print(f"key/value cache (generate_fast): {fast:8.1f} tokens/s")
    print(f"ratio: {fast / plain:.2f}x; same tokens: {torch.equal(plain_tokens, fast_tokens)}")


if __name__ == "__main__":
    main()
