"""Sandbox benchmark: what the bubblewrap sandbox of autograder/sandbox/ costs a kernel, against a plain one,
both ways a sandboxed kernel starts (in a bwrap sandbox of its own, a fresh interpreter; forked by a Zygote that
has imported torch, numpy, matplotlib and ipykernel once, as the grading workers do).

Run from the repository root:  python -m bench.sandbox [--repeats 3] [--cells 200]
For each kind of kernel, taking turns so that a change in the machine's load affects all alike, the best of
`repeats` runs of: starting the kernel until it answers, a first cell that imports torch, and `cells` empty
cells one after another (per-cell overhead). Prints seconds and each sandboxed/plain ratio.
"""
import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import KernelManager
from traitlets.config.loader import KVArgParseConfigLoader

from autograder.limits import Limits
from autograder.sandbox import kernelspec

ROOT = Path(__file__).resolve().parent.parent


def timings(manager, cells):
    """Seconds to start the kernel, to import torch, and per empty cell."""
    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        manager.start_kernel(cwd=workdir)
        client = manager.client()
        client.start_channels()
        client.wait_for_ready(timeout=120)
        ready = time.perf_counter()
        client.execute_interactive("import torch", timeout=300)
        imported = time.perf_counter()
        for _ in range(cells):
            client.execute_interactive("pass", timeout=60)
        done = time.perf_counter()
        client.stop_channels()
        manager.shutdown_kernel()
    return {"start": ready - started, "import torch": imported - ready, "per cell": (done - imported) / cells}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cells", type=int, default=200)
    args = parser.parse_args(argv)
    kernelspec.check_available()
    scratch = Path(tempfile.mkdtemp())
    zygote = kernelspec.Zygote([ROOT])
    kinds = {"plain": lambda: KernelManager(kernel_name="python3"),
             "own sandbox": sandboxed_kernels(scratch / "own", None),
             "zygote fork": sandboxed_kernels(scratch / "zygote", zygote)}
    best = {kind: {} for kind in kinds}
    try:
        for _ in range(args.repeats):
            for kind, make_manager in kinds.items():
                for step, seconds in timings(make_manager(), args.cells).items():
                    best[kind][step] = min(best[kind].get(step, float("inf")), seconds)
    finally:
        zygote.close()
        shutil.rmtree(scratch)
    print(f"{'step':<14}" + "".join(f"{kind:>14}" for kind in kinds) + f"   sandboxed/plain (best of {args.repeats})")
    for step, plain in best["plain"].items():
        print(f"{step:<14}" + "".join(f"{best[kind][step] * 1e3:>12.1f}ms" for kind in kinds) + "   " +
              "  ".join(f"{best[kind][step] / plain:.2f}" for kind in kinds if kind != "plain"))


def sandboxed_kernels(state, zygote):
    """A function that makes a KernelManager for a sandboxed kernel (forked by `zygote` unless None)."""
    options, env = kernelspec.nbgrader_launch(Limits(), state, [ROOT], zygote)
    config = KVArgParseConfigLoader([option for option in options if "KernelManager" in option]).load_config()

    def make_manager():
        os.environ.update(env)  # where this sandbox's kernelspec is
        return KernelManager(kernel_name=kernelspec.KERNEL_NAME, config=config)

    return make_manager


if __name__ == "__main__":
    main()
