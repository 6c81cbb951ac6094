"""Tampering is flagged, never rewarded: canary cells around the test cells, and a scan of the student's code.

A student's code runs in the same Python process as the test cells, so it can change what the tests rely on:
replace `torch.allclose`, hook `builtins.__import__`, install an IPython input transformer that empties or
wraps later cells in try/except, hide errors with a custom exception handler or a replaced `showtraceback`,
make the kernel report every cell as a success... None of this can be prevented from outside the process, so
the grader looks for it in two independent ways:

1. Canaries (canaries.py): locked code cells that the grader inserts into the submission before nbgrader runs
   it: one before every other cell (so before any student code, the course's setup cell included), one right
   after each test cell and one at the end. Each runs the probe (probe.py), which
   a) fingerprints, by object identity, what the tests and nbgrader rely on: the assertion helpers of torch,
      numpy and math (allclose, equal, isclose, assert_close, numpy.testing.assert_*, Tensor.__eq__...),
      builtins (__import__, isinstance, abs, all, any, round...), what `import torch` returns, the modules in
      sys.modules, sys.settrace/setprofile/excepthook and sys.stdout.write, signal handlers, IPython's input
      and AST transformers, showtraceback, run_cell, the kernel's do_execute/send_response/session.send;
      the grader compares each fingerprint, outside the kernel, with the first canary's;
   b) checks their behaviour on small known cases (allclose(1, 2) is False, assert_close(1, 2) raises...);
   c) lists what student code could use to act while a canary or a test runs: IPython event callbacks,
      threads and timers running notebook code, custom exception handlers other than the course's own
      (course_utils.explain_unfinished_exercises, recognised by its code object), modules loaded from the
      student's folder, and names of the notebook's namespace that hide a builtin or hold something else than
      the module they name (`torch = FakeTorch()`), of which the grader keeps those the test cells use;
   d) prints its findings with this run's nonce, then the cell fails on purpose; a canary whose cell was
      changed, that printed no report or a forged one, or that does not show its deliberate error is evidence.
2. A static scan (scan.py) of the submitted cells whose code nbgrader runs as the student wrote it (every code
   cell but those the source notebook locks) with `ast`, for the code that plays such tricks.

What is detected: each trick above, whether written plainly or hidden behind strings: plain code trips the
scan (and, if its change is still in place, a canary); hidden code needs exec/eval/compile/__import__/
importlib/getattr by a computed name/setattr, which the scan flags; and a change in place when a canary runs
is caught by identity or behaviour however it was written.

What is not (honestly): a student controls the interpreter, so a canary can in principle be forged. Code that
recognises canary cells (an input transformer, an event callback, an audit hook, a tracer, a thread watching
the main thread) can undo its changes while a canary runs, or rewrite the canary to print a clean report
(the nonce is in the cell it rewrites); a patch made from inside a solution function that a test calls, and
undone by itself after its first use, leaves nothing for a canary to see; an object returned by a solution
can decide a comparison through a dunder or __torch_function__. Each of these needs code that the scan flags,
so the scan, not the canaries, is what stands between a determined student and a forged grade; what it
cannot see is code that does not come from the notebook's text: a payload in a file that came with the
submission (pickle, a .py shadowing a library, an ipython config), C code, or a hole in CPython. The grader
must therefore run only the submitted notebook with the release's own helper files next to it (the canaries
report modules loaded from the student's folder). A kernel that dies or times out also leaves canaries without
output: the grader reports such a failure first, before any tampering evidence.

Use: `add_canaries(submitted, nonce)` gives the notebook nbgrader runs, `evidence(executed, submitted, source,
nonce)` what its run and the submission show, `remove_canaries(executed)` the notebook the student gets back.
"""
from .canaries import add_canaries, canary_evidence, remove_canaries
from .scan import scan_notebook

__all__ = ["add_canaries", "evidence", "remove_canaries"]


def evidence(executed, submitted, source, nonce):
    """What tampering the executed canaries and a static scan of the submitted (student-written) cells show, each
    item naming the cell, the line and what changed; [] when clean. `source`: the assignment's source notebook,
    which says which cells are locked and which are tests, whatever the submission's metadata says."""
    return canary_evidence(executed, submitted, source, nonce) + scan_notebook(submitted, source)
