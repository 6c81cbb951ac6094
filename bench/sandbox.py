"""Sandbox benchmark: what the bubblewrap sandbox of autograder/sandbox.py costs a kernel, against a plain one.

Run from the repository root:  python -m bench.sandbox [--repeats 3] [--cells 200]
For each kind of kernel, taking turns so that a change in the machine's load affects both alike, the best of
`repeats` runs of: starting the kernel until it answers, a first cell that imports torch, and `cells` empty
cells one after another (per-cell overhead). Prints seconds and the sandboxed/plain ratio.
"""
import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import KernelManager
from traitlets.config.loader import KVArgParseConfigLoader

from autograder import sandbox

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
    sandbox.check_available()
    state = Path(tempfile.mkdtemp())
    options, env = sandbox.nbgrader_launch(sandbox.Limits(), state, [ROOT])
    os.environ.update(env)  # where the sandbox's kernelspec is
    config = KVArgParseConfigLoader([option for option in options if "KernelManager" in option]).load_config()
    kinds = {"plain": lambda: KernelManager(kernel_name="python3"),
             "sandboxed": lambda: KernelManager(kernel_name=sandbox.KERNEL_NAME, config=config)}
    best = {kind: {} for kind in kinds}
    for _ in range(args.repeats):
        for kind, make_manager in kinds.items():
            for step, seconds in timings(make_manager(), args.cells).items():
                best[kind][step] = min(best[kind].get(step, float("inf")), seconds)
    shutil.rmtree(state)
    print(f"{'step':<14}{'plain':>12}{'sandboxed':>12}{'ratio':>8}   (best of {args.repeats})")
    for step in best["plain"]:
        plain, sandboxed = best["plain"][step], best["sandboxed"][step]
        print(f"{step:<14}{plain * 1e3:>10.1f}ms{sandboxed * 1e3:>10.1f}ms{sandboxed / plain:>8.2f}")


if __name__ == "__main__":
    main()
