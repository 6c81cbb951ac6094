"""Tampering is flagged, never rewarded: canary cells around the test cells, and a scan of the student's code.

A student's code runs in the same Python process as the test cells, so it can change what the tests rely on:
replace `torch.allclose`, hook `builtins.__import__`, install an IPython input transformer that empties or
wraps later cells in try/except, hide errors with a custom exception handler or a replaced `showtraceback`,
make the kernel report every cell as a success... None of this can be prevented from outside the process, so
the grader looks for it in two independent ways:

1. Canaries (`add_canaries`): locked code cells that the grader inserts into the submission before nbgrader runs
   it: one before every other cell (so before any student code, the course's setup cell included), one right
   after each test cell and one at the end. Each runs a probe that
   a) fingerprints, by object identity, what the tests and nbgrader rely on: the assertion helpers of torch,
      numpy and math (allclose, equal, isclose, assert_close, numpy.testing.assert_*, Tensor.__eq__...),
      builtins (__import__, isinstance, abs, all, any, round...), what `import torch` returns, the modules in
      sys.modules, sys.settrace/setprofile/excepthook and sys.stdout.write, signal handlers, IPython's input
      and AST transformers, showtraceback, run_cell, the kernel's do_execute/send_response/session.send;
      `evidence` compares each fingerprint, outside the kernel, with the first canary's;
   b) checks their behaviour on small known cases (allclose(1, 2) is False, assert_close(1, 2) raises...);
   c) lists what student code could use to act while a canary or a test runs: IPython event callbacks,
      threads and timers running notebook code, custom exception handlers other than the course's own
      (course_utils.explain_unfinished_exercises, recognised by its code object), modules loaded from the
      student's folder, and names of the notebook's namespace that hide a builtin or hold something else than
      the module they name (`torch = FakeTorch()`), of which `evidence` keeps those the test cells use;
   d) prints its findings as one line `DGM-CANARY <nonce> <index> <json>`, then fails on purpose with an
      AssertionError that carries the nonce.
   `evidence` checks that every canary cell is present and unchanged, printed exactly one report with this
   run's nonce and shows exactly its deliberate error. The nonce is fresh for every grading run and appears
   only in the canary cells, which are added after the student submitted: a kernel that empties cells, wraps
   them in try/except, hides errors or reports success cannot show the deliberate error, and student code
   cannot prepare a report before it sees the nonce.
2. A static scan (`scan_notebook`) of the submitted cells that the student can edit (solution cells, unlocked
   plain cells, cells the student added; nbgrader restores the locked ones) with `ast`: assignments to
   attributes of imported modules (torch.allclose = ...), setattr/delattr on anything but self, getattr with a
   computed name, exec/eval/compile/__import__, sys.modules/settrace/... (also reached as os.sys...), IPython
   and kernel internals (get_ipython() beyond %matplotlib/%time/%timeit, input transformers, set_custom_exc,
   events, kernel.session...), importlib, ctypes, gc, inspect, threads, timers, signals, audit hooks, frame
   and code object surgery, classes that define the dunders an assertion consults (__eq__, __bool__,
   __float__, __torch_function__...), and top-level names rebound under the tests (abs = ..., torch = ...,
   import numpy as math).

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
"""
import ast
import copy
import functools
import inspect
import json
import re

import nbformat

from .. import notebooks

CANARY_KEY = "dgm_canary"  # cell metadata that marks a canary cell
REPORT_PREFIX = "DGM-CANARY"


# ---------------------------------------------------------------------------------------------------------------
# The probe: runs inside the student's kernel. Its source is copied into every canary cell, so it imports what
# it needs itself and uses nothing of this module.

def _dgm_canary_probe(nonce, index):
    """One canary's findings, as the line `DGM-CANARY <nonce> <index> <json>`. The first canary (index 0) also
    keeps what later canaries compare with in a module named after the nonce (the threads that existed, the
    course's exception handler); the fingerprints are compared outside the kernel."""
    import builtins
    import functools
    import json
    import math
    import os
    import signal
    import sys
    import threading
    import types

    import numpy.testing
    import torch.testing
    import numpy  # after the submodules: these two statements give what `import numpy` gives the tests
    import torch
    from IPython import get_ipython

    try:
        import course_utils  # the course's helpers: their exception handler is allowed
    except ImportError:
        course_utils = None
    shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    store_name = f"_dgm_canary_{nonce}"
    store = sys.modules.get(store_name)
    unusual = []
    if store is None:  # the first canary's record: made now, or gone (then nothing compares equal to it)
        if index != 0:
            unusual.append("the first canary's record disappeared")
        store = types.ModuleType(store_name)
        sys.modules[store_name] = store
        store.handler_codes = set_custom_exc_codes(shell, course_utils)
        store.threads = set(sys._current_frames())
        store.checked_modules = set()  # (name, id) of the modules whose file was checked: each module once
    library = tuple({os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})

    def identity(value):
        function = getattr(value, "__func__", None)  # a bound method is a new object at every access
        return [id(function), id(value.__self__)] if function is not None else id(value)

    fingerprint = {}

    def watch(label, owner, names):
        for name in names:
            try:
                fingerprint[f"{label}.{name}"] = identity(getattr(owner, name))
            except Exception:
                fingerprint[f"{label}.{name}"] = None

    watch("builtins", builtins, [
        "__import__", "__build_class__", "abs", "all", "any", "bool", "callable", "compile", "dict", "exec", "eval",
        "float", "getattr", "hasattr", "id", "int", "isinstance", "issubclass", "iter", "len", "list", "map",
        "max", "min", "next", "object", "open", "print", "range", "repr", "round", "set", "setattr", "sorted",
        "str", "sum", "super", "tuple", "type", "zip", "AssertionError", "Exception", "NotImplementedError"])
    fingerprint["import torch"] = id(torch)
    fingerprint["import numpy"] = id(numpy)
    for name in ("builtins", "sys", "math", "numpy", "numpy.testing", "torch", "torch.testing", "torch.nn",
                 "IPython", "ipykernel", "course_utils", "json", "os"):
        fingerprint[f"sys.modules[{name!r}]"] = id(sys.modules.get(name))
    watch("torch", torch, [
        "allclose", "equal", "isclose", "all", "any", "abs", "eq", "ne", "lt", "le", "gt", "ge", "isfinite",
        "isnan", "isinf", "is_tensor", "tensor", "as_tensor", "zeros", "ones", "full", "randn", "rand", "randint",
        "max", "min", "sum", "mean", "exp", "log", "sqrt", "cat", "stack", "no_grad",
        "is_grad_enabled", "Tensor", "Size", "nn", "testing", "autograd"])
    watch("torch.Tensor", torch.Tensor, [
        "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__", "__float__", "__int__",
        "__abs__", "__len__", "__getitem__", "__torch_function__", "all", "any", "abs", "item", "tolist", "sum",
        "mean", "max", "min", "allclose", "isclose", "equal", "eq", "ne", "shape", "size", "dim", "numel",
        "backward", "detach", "clone", "float", "isfinite", "isnan"])
    watch("torch.nn.Module", torch.nn.Module, ["__call__", "_call_impl", "parameters", "named_parameters"])
    watch("torch.autograd", torch.autograd, ["backward", "grad"])
    watch("torch.testing", torch.testing, ["assert_close"])
    watch("numpy", numpy, [
        "allclose", "isclose", "array_equal", "array_equiv", "all", "any", "abs", "isfinite", "isnan", "asarray",
        "array", "ndarray", "testing"])
    watch("numpy.ndarray", numpy.ndarray, ["__eq__", "__bool__", "all", "any", "item", "tolist"])
    watch("numpy.testing", numpy.testing, sorted(n for n in dir(numpy.testing) if n.startswith("assert_")))
    watch("math", math, sorted(n for n in dir(math) if not n.startswith("_")))
    watch("sys", sys, ["settrace", "gettrace", "setprofile", "getprofile", "excepthook", "__excepthook__",
                       "displayhook", "stdout", "stderr", "addaudithook", "audit", "_getframe", "modules"])
    fingerprint["sys.gettrace()"] = identity(sys.gettrace())
    fingerprint["sys.getprofile()"] = identity(sys.getprofile())
    fingerprint["threading.gettrace()"] = identity(threading.gettrace())
    fingerprint["threading.getprofile()"] = identity(threading.getprofile())
    def untee(write):
        """sys.stdout.write as it is between cells: while a cell runs, IPython wraps it to record the output."""
        tee = getattr(getattr(type(shell), "_tee", None), "__wrapped__", None)
        tee_writes = [c for c in getattr(getattr(tee, "__code__", None), "co_consts", ()) if
                      getattr(c, "co_name", None) == "write"]
        while getattr(write, "__code__", None) in tee_writes:
            write = write.__closure__[write.__code__.co_freevars.index("original_write")].cell_contents
        return write

    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        fingerprint[f"sys.{name}.write"] = identity(untee(stream.write))
        watch(f"sys.{name}", stream, ["flush"])
        watch(f"type(sys.{name})", type(stream), ["write", "flush"])
    for name in ("SIGALRM", "SIGVTALRM", "SIGPROF", "SIGUSR1", "SIGUSR2", "SIGTERM"):
        fingerprint[f"signal handler {name}"] = identity(signal.getsignal(getattr(signal, name)))
    if shell is not None:
        fingerprint["get_ipython()"] = id(shell)
        watch("get_ipython()", shell, [
            "run_cell", "run_cell_async", "_run_cell", "run_ast_nodes", "run_code", "transform_cell",
            "transform_ast", "showtraceback", "_showtraceback", "showsyntaxerror", "get_exception_only",
            "_get_exc_info", "should_run_async", "set_custom_exc", "_tee", "compile", "displayhook", "display_pub",
            "InteractiveTB", "SyntaxTB", "events", "input_transformer_manager", "kernel", "builtin_trap",
            "input_transformers_post", "ast_transformers"])
        watch("type(get_ipython().compile)", type(shell.compile), ["__call__", "ast_parse", "cache"])
        watch("get_ipython().InteractiveTB", shell.InteractiveTB, ["structured_traceback", "text"])
        watch("get_ipython().display_pub", shell.display_pub, ["publish"])
        manager = shell.input_transformer_manager
        for label, transformers in (("input_transformers_cleanup", manager.cleanup_transforms),
                                    ("input_transformer_manager.line_transforms", manager.line_transforms),
                                    ("input_transformer_manager.token_transformers", manager.token_transformers),
                                    ("input_transformers_post", shell.input_transformers_post),
                                    ("ast_transformers", shell.ast_transformers)):
            fingerprint[f"get_ipython().{label}[...]"] = [identity(t) for t in transformers]
    if kernel is not None:
        watch("kernel", kernel, ["do_execute", "execute_request", "send_response", "session", "iopub_socket",
                                 "iopub_thread", "dispatch_shell", "_publish_execute_input", "_publish_status"])
        watch("kernel.session", kernel.session, ["send", "serialize", "sign", "msg"])
        for name, handler in sorted(kernel.shell_handlers.items()):
            fingerprint[f"kernel.shell_handlers[{name!r}]"] = identity(handler)
    if course_utils is not None:
        watch("course_utils", course_utils, ["explain_unfinished_exercises", "unfinished_exercise"])
    def raises(check, *args):
        try:
            check(*args)
        except AssertionError:
            return True
        return False

    def assert_statement_raises():
        try:
            assert 1 == 2
        except AssertionError:
            return True
        return False

    tensor = torch.tensor
    behaviour = {
        "torch.allclose": lambda: torch.allclose(tensor(1.0), tensor(1.0))
        and not torch.allclose(tensor(1.0), tensor(2.0)),
        "torch.equal": lambda: torch.equal(tensor([1, 2]), tensor([1, 2]))
        and not torch.equal(tensor([1, 2]), tensor([1, 3])),
        "torch.isclose": lambda: bool(torch.isclose(tensor(1.0), tensor(1.0)))
        and not bool(torch.isclose(tensor(1.0), tensor(2.0))),
        "torch.testing.assert_close": lambda: raises(torch.testing.assert_close, tensor(1.0), tensor(2.0))
        and not raises(torch.testing.assert_close, tensor(1.0), tensor(1.0)),
        "torch.Tensor comparisons": lambda: bool((tensor([1, 2]) == tensor([1, 2])).all())
        and not bool((tensor([1, 2]) == tensor([1, 3])).all()) and not bool(tensor(1.0) > 2)
        and tensor(-3.0).abs().item() == 3.0,
        "numpy.allclose": lambda: numpy.allclose(1.0, 1.0) and not numpy.allclose(1.0, 2.0),
        "numpy.isclose": lambda: bool(numpy.isclose(1.0, 1.0)) and not bool(numpy.isclose(1.0, 2.0)),
        "numpy.array_equal": lambda: numpy.array_equal([1, 2], [1, 2]) and not numpy.array_equal([1, 2], [1, 3]),
        **{f"numpy.testing.{name}": functools.partial(
            lambda check: raises(check, 1.0, 2.0) and not raises(check, 1.0, 1.0), getattr(numpy.testing, name))
           for name in ("assert_allclose", "assert_array_equal", "assert_equal", "assert_almost_equal",
                        "assert_array_almost_equal")},
        "math.isclose": lambda: math.isclose(1.0, 1.0) and not math.isclose(1.0, 2.0),
        "builtins": lambda: abs(-2) == 2 and all([True]) and not all([True, False]) and any([False, True])
        and not any([False]) and round(1.6) == 2 and isinstance(1, int) and not isinstance(1, str)
        and len([1, 2]) == 2 and sum([1, 2]) == 3 and max(1, 2) == 2 and min(1, 2) == 1,
        "the assert statement": assert_statement_raises,
    }
    misbehaving = []
    for name, check in behaviour.items():
        try:
            if check() is not True:
                misbehaving.append(f"{name} gives wrong answers on a known case")
        except Exception as error:
            misbehaving.append(f"{name} fails on a known case ({type(error).__name__}: {error})"[:300])

    def library_file(filename):
        return filename.startswith("<frozen") or os.path.realpath(filename).startswith(library)

    def from_library(value):
        """Whether `value` (function, method, partial, callable object) is code of an installed library."""
        while isinstance(value, functools.partial):
            value = value.func
        value = getattr(value, "__func__", value)
        if isinstance(value, types.BuiltinFunctionType):
            return False  # setattr, exec...: a hook that calls a builtin directly is student-made
        code = getattr(value, "__code__", None)
        if code is not None:
            return library_file(code.co_filename)
        return library_file(getattr(sys.modules.get(type(value).__module__), "__file__", None) or "")

    if shell is not None:
        for event, callbacks in shell.events.callbacks.items():
            unusual += [f"IPython event callback {event}: {callback!r}"[:300]
                        for callback in callbacks if not from_library(callback)]
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer) and thread.is_alive():
            unusual.append(f"a pending threading.Timer calls {thread.function!r}"[:300])
        elif thread.ident not in store.threads:
            target = getattr(thread, "_target", None)
            if not from_library(target if target is not None else type(thread).run):
                unusual.append(f"a thread started by the notebook runs {target or type(thread).run!r}"[:300])
    for ident, frame in sys._current_frames().items():
        if ident != threading.get_ident() and ident not in store.threads:
            while frame is not None and library_file(frame.f_code.co_filename):
                frame = frame.f_back
            if frame is not None:
                unusual.append(f"a thread runs {frame.f_code.co_name} from {frame.f_code.co_filename}")
    folder = os.path.realpath(os.getcwd()) + os.sep
    for name, module in list(sys.modules.items()):
        # realpath of every file of the thousands of modules torch loads costs a canary most of its time:
        # check those loaded (or replaced) since the last canary only; each is reported where it first shows.
        if (name, id(module)) in store.checked_modules:
            continue
        store.checked_modules.add((name, id(module)))
        filename = str(getattr(module, "__file__", None) or "")
        if not os.path.isabs(filename):
            continue  # built in, or a namespace such as torch.ops
        filename = os.path.realpath(filename)
        if filename.startswith(folder) and not filename.startswith(library) and name != "course_utils":
            unusual.append(f"module {name} was loaded from {filename} in the notebook's folder")

    # Names of the notebook's namespace that hide a builtin or hold something else than the module they name
    # (`abs = ...`, `torch = FakeTorch()`): the grader keeps those that the test cells use.
    namespace = shell.user_ns if shell is not None else {}
    aliases = {"torch": "torch", "np": "numpy", "numpy": "numpy", "math": "math", "nn": "torch.nn",
               "F": "torch.nn.functional", "course_utils": "course_utils"}
    rebound = [name for name, value in list(namespace.items())
               if (hasattr(builtins, name) and value is not getattr(builtins, name))
               or (name in aliases and value is not sys.modules.get(aliases[name]))
               or (isinstance(value, types.ModuleType) and value is not sys.modules.get(value.__name__))]
    custom = "none"
    if shell is not None and shell.custom_exceptions:
        custom = describe_custom_exc(shell, store.handler_codes)
    report = {
        "fingerprint": fingerprint,
        "misbehaving": misbehaving,
        "custom_exceptions": custom,
        "unusual": sorted(set(unusual)),
        "rebound": sorted(rebound),
    }
    return f"DGM-CANARY {nonce} {index} {json.dumps(report)}"


def set_custom_exc_codes(shell, course_utils):
    """The code objects of IPython's wrapper in set_custom_exc and of the course's exception handler."""
    def nested(function, name):
        codes = [c for c in function.__code__.co_consts if getattr(c, "co_name", None) == name]
        return codes[0] if codes else None

    wrapper = nested(type(shell).set_custom_exc, "wrapped") if shell is not None else None
    course = nested(course_utils.explain_unfinished_exercises, "explain") if course_utils is not None else None
    # The exceptions the course's handler reports (course_utils.explain_unfinished_exercises).
    handled = (NotImplementedError, getattr(course_utils, "NotReadyError", None))
    return {"wrapped": wrapper, "course": course, "course_handled": tuple(kind for kind in handled if kind),
            "course_globals": vars(course_utils) if course_utils is not None else None}


def describe_custom_exc(shell, codes):
    """'course' when the custom exception handler is the course's own (for the exceptions it handles), else what it
    is."""
    handled = shell.custom_exceptions
    handler = getattr(shell.CustomTB, "__func__", None)
    inner = [cell.cell_contents for cell in (getattr(handler, "__closure__", None) or ())
             if callable(getattr(cell, "cell_contents", None))]
    if (handled == codes["course_handled"] and getattr(handler, "__code__", None) is codes["wrapped"]
            and getattr(shell.CustomTB, "__self__", None) is shell and codes["course"] is not None
            and any(getattr(f, "__code__", None) is codes["course"]
                    and getattr(f, "__globals__", None) is codes["course_globals"] for f in inner)):
        return "course"
    names = [getattr(kind, "__name__", repr(kind)) for kind in handled]
    return f"{', '.join(names)} handled by {inner[0] if inner else shell.CustomTB!r}"[:300]


# ---------------------------------------------------------------------------------------------------------------
# The canary cells.

@functools.cache
def probe_source():
    """The source of the probe and its helpers, as every canary cell holds it (read once per process)."""
    return "\n\n".join(inspect.getsource(f) for f in (_dgm_canary_probe, set_custom_exc_codes,
                                                      describe_custom_exc)).rstrip()


def canary_source(nonce, index, where):
    """The code of canary `index` (`where` says where it sits, for the reader)."""
    return "\n".join([
        f"# Autograder canary {index} ({where}): checks that nothing tampered with grading. Added by the grader.",
        probe_source(),
        f"print({_dgm_canary_probe.__name__}({nonce!r}, {index}))",
        f"del {_dgm_canary_probe.__name__}, set_custom_exc_codes, describe_custom_exc",
        f"assert 1 + 1 == 3, {deliberate_error(nonce, index)!r}",
    ])


def deliberate_error(nonce, index):
    return f"DGM canary {index} {nonce}: fails on purpose, so that the grader sees errors are shown"


def is_canary(cell):
    return bool(cell.get("metadata", {}).get(CANARY_KEY))


def is_test_cell(cell):
    return cell.cell_type == "code" and notebooks.is_test_cell(cell)


def canary_places(notebook):
    """[(position in notebook.cells before which a canary goes, where it sits)], in order."""
    places = [(0, "at the start")]
    for position, cell in enumerate(notebook.cells):
        if is_test_cell(cell):
            places.append((position + 1, f"after test cell {cell.metadata['nbgrader']['grade_id']}"))
    places.append((len(notebook.cells), "at the end"))
    return places


def new_canary_cell(notebook, nonce, index, where):
    cell = nbformat.v4.new_code_cell(canary_source(nonce, index, where), id=f"dgm-canary-{index}",
                                     metadata={CANARY_KEY: True, "editable": False, "deletable": False})
    if (notebook.nbformat, notebook.nbformat_minor) < (4, 5):
        del cell["id"]  # cell ids came with nbformat 4.5
    return cell


def add_canaries(notebook, nonce):
    """A copy of the submitted `notebook` with canary cells: at the start, after each test cell, at the end.

    A cell of the submission that claims to be a canary loses that mark (evidence() reports it), and one whose
    id a canary takes gets another."""
    marked = copy.deepcopy(notebook)
    for cell in marked.cells:
        cell.get("metadata", {}).pop(CANARY_KEY, None)
        if cell.get("id", "").startswith("dgm-canary-"):
            cell.id = "student-" + cell.id[:50]
    cells = list(marked.cells)
    for index, (position, where) in reversed(list(enumerate(canary_places(marked)))):
        cells.insert(position, new_canary_cell(marked, nonce, index, where))
    marked.cells = cells
    return marked


def remove_canaries(notebook):
    """A copy of `notebook` without the canary cells."""
    cleaned = copy.deepcopy(notebook)
    cleaned.cells = [cell for cell in cleaned.cells if not is_canary(cell)]
    return cleaned


# ---------------------------------------------------------------------------------------------------------------
# Evidence: what the executed canaries show, and what the scan of the submission finds.

def evidence(executed, submitted, nonce):
    """What tampering the executed canaries and a static scan of the submitted (student-written) cells show,
    each item naming the cell, the line and what changed; [] when clean."""
    return canary_evidence(executed, submitted, nonce) + scan_notebook(submitted)


def canary_evidence(executed, submitted, nonce):
    expected = [cell for cell in add_canaries(submitted, nonce).cells if is_canary(cell)]
    wheres = [where for _, where in canary_places(submitted)]
    found = [cell for cell in executed.cells if is_canary(cell)]
    if [cell.source for cell in found] != [cell.source for cell in expected]:
        return [f"the canary cells were removed or changed: expected {len(expected)} unchanged, found "
                f"{sum(cell.source in {e.source for e in expected} for cell in found)} of {len(found)} unchanged"]
    used_by_tests = names_used_by_tests(executed)
    items, seen, start = [], set(), None
    for index, (cell, where) in enumerate(zip(found, wheres)):
        report, problems = read_canary_outputs(cell, nonce, index)
        if report is not None and index == 0:
            start = report.get("fingerprint", {})
        if report is not None:
            problems += canary_findings(report, start, used_by_tests)
        for problem in problems:
            if problem not in seen:  # a change stays visible to every later canary: report where it first shows
                seen.add(problem)
                items.append(f"canary {index} ({where}): {problem}")
    return items


def read_canary_outputs(cell, nonce, index):
    """(the canary's report or None, [problems with its outputs])."""
    if not cell.get("outputs"):
        return None, ["no output at all: the cell was emptied or never ran (an input transformer, a kernel that "
                      "skips cells, or the kernel died)"]
    # The kernel wrote these outputs: read them with .get, as any field may be missing.
    prefix = f"{REPORT_PREFIX} {nonce} {index} "
    lines = [line for output in cell.outputs if output.get("output_type") == "stream"
             for line in "".join(output.get("text", "")).splitlines() if line.startswith(REPORT_PREFIX)]
    errors = [(str(output.get("ename")), str(output.get("evalue")))
              for output in cell.outputs if output.get("output_type") == "error"]
    problems = []
    if ("AssertionError", deliberate_error(nonce, index)) not in errors:
        shown = ("shown instead: " + "; ".join(f"{name}: {value}"[:200] for name, value in errors)
                 if errors else "no error")
        problems.append(f"its deliberate error is not shown ({shown}): errors are being hidden (try/except around "
                        "cells, a replaced showtraceback or exception handler, or a kernel that reports success)")
    if len(errors) > 1:
        problems.append(f"{len(errors)} errors shown instead of one")
    reports = [line[len(prefix):] for line in lines if line.startswith(prefix)]
    if len(reports) != 1 or len(lines) != 1:
        problems.append(f"expected one report line with this run's nonce, found {len(reports)} "
                        f"(and {len(lines) - len(reports)} forged or stale ones)")
        return None, problems
    try:
        report = json.loads(reports[0])
    except ValueError:
        report = None
    if not well_formed(report):
        return None, problems + ["its report is not what the canary prints (forged or altered)"]
    return report, problems


def well_formed(report):
    """Whether a parsed report has the shape the probe gives it (so that reading it cannot fail)."""
    texts = ("misbehaving", "unusual", "rebound")
    return (isinstance(report, dict) and isinstance(report.get("fingerprint"), dict)
            and isinstance(report.get("custom_exceptions"), str)
            and all(isinstance(report.get(key), list) and all(isinstance(item, str) for item in report[key])
                    for key in texts))


def canary_findings(report, start, used_by_tests):
    """The tampering one canary report shows: its fingerprint compared with the first canary's (`start`), and
    what it found directly; `used_by_tests`: the names the test cells read."""
    fingerprint, findings = report.get("fingerprint", {}), []
    if start is not None:  # else the first canary's missing output is the evidence
        findings += [f"changed since the start of the notebook: {name}"
                     for name in sorted(set(fingerprint) | set(start)) if fingerprint.get(name) != start.get(name)]
    findings += report.get("misbehaving", [])
    findings += [f"the notebook's name {name!r}, which the tests use, no longer holds the builtin or module it "
                 f"names" for name in report.get("rebound", []) if name in used_by_tests]
    custom = report.get("custom_exceptions")
    if custom not in ("none", "course"):
        findings.append(f"a custom exception handler was installed: {custom}")
    findings += report.get("unusual", [])
    return findings


# ---------------------------------------------------------------------------------------------------------------
# The static scan of the student's cells.

# Modules whose only use in a submission of this course is to reach into the interpreter, IPython or the kernel.
FORBIDDEN_MODULES = {
    "builtins", "__builtin__", "importlib", "imp", "ctypes", "cffi", "gc", "inspect", "IPython", "ipykernel",
    "zmq", "jupyter_client", "traitlets", "marshal", "pickle", "dill", "cloudpickle", "code", "codeop", "runpy",
    "threading", "_thread", "multiprocessing", "concurrent", "signal", "atexit", "faulthandler", "unittest",
    "subprocess", "socket", "mmap", "weakref", "types", "site", "sysconfig", "nbformat", "nbclient", "nbgrader",
}
# Functions that run or import code given as data, or change attributes by name.
# (globals() is not among them: the notebook's own namespace is the student's anyway.)
DYNAMIC_BUILTINS = {"exec", "eval", "compile", "__import__", "breakpoint"}
# Attributes of `sys` that hook or replace interpreter machinery.
SYS_HOOKS = {
    "settrace", "setprofile", "gettrace", "getprofile", "excepthook", "displayhook", "modules", "meta_path",
    "path_hooks", "path_importer_cache", "addaudithook", "audit", "_getframe", "stdout", "stderr", "__stdout__",
    "__stderr__", "monitoring", "set_asyncgen_hooks", "setswitchinterval", "unraisablehook", "breakpointhook",
    "_current_frames",
}
# Names and attributes of IPython, the kernel and nbgrader's machinery.
SHELL_INTERNALS = {
    "get_ipython", "input_transformers_cleanup", "input_transformers_post", "input_transformer_manager",
    "ast_transformers", "register_transformer", "set_custom_exc", "custom_exceptions", "CustomTB", "showtraceback",
    "_showtraceback", "showsyntaxerror", "InteractiveTB", "SyntaxTB", "run_cell", "run_cell_async", "_run_cell",
    "run_ast_nodes", "run_code", "transform_cell", "transform_ast", "do_execute", "execute_request",
    "send_response", "shell_handlers", "iopub_socket", "iopub_thread", "display_pub", "displayhook", "events",
    "register_magic_function", "user_ns", "__IPYTHON__",
}
# Attributes for surgery on functions, frames and classes.
INTROSPECTION = {
    "__code__", "__globals__", "__closure__", "__builtins__", "__subclasses__", "__bases__", "__mro__",
    "__defaults__", "__kwdefaults__", "__func__", "__getattribute__", "__loader__", "__spec__", "f_globals",
    "f_locals", "f_back", "f_builtins", "f_code", "f_trace", "tb_frame", "gi_frame", "cr_frame", "co_code",
    "co_consts", "cell_contents", "__torch_function__", "__torch_dispatch__", "TorchFunctionMode",
    "TorchDispatchMode", "_DisableTorchFunction", "_disabled_torch_function_impl", "_make_subclass", "overrides",
    "library", "__base__", "attrgetter", "methodcaller",
}
# Modules that other modules import and so make reachable as attributes (os.sys, torch.nn.modules.module.inspect).
REACHABLE_MODULES = {"sys", "builtins", "importlib", "ctypes", "gc", "inspect", "IPython", "ipykernel", "zmq",
                     "jupyter_client", "marshal", "pickle", "threading", "signal", "subprocess", "socket"}
# Methods whose definition lets an object decide the outcome of a comparison or an assertion.
ASSERTION_DUNDERS = {
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__", "__float__", "__int__", "__index__",
    "__complex__", "__abs__", "__instancecheck__", "__subclasscheck__", "__getattribute__", "__del__",
    "__torch_function__", "__torch_dispatch__", "__array__", "__array_function__", "__array_ufunc__",
    "__array_priority__",
}
# Attribute assignments to imported modules that are configuration, not tampering.
CONFIGURATION = ("torch.backends.", "matplotlib.rcParams", "plt.rcParams")
# Notebook magics that cannot change how later cells run or are reported; those that time code run the code
# they are given, which the scan reads too.
HARMLESS_MAGICS = {"matplotlib", "time", "timeit"}
TIMING_MAGICS = {"time", "timeit"}
OS_PROCESS_CALLS = {"system", "popen", "fork", "forkpty", "kill", "killpg", "_exit", "write", "dup", "dup2",
                    "execv", "execve", "execvp", "execl", "spawnv", "spawnl", "posix_spawn", "setsid", "putenv"}


def dotted(node):
    """'torch.Tensor.__eq__' for an attribute chain of plain names, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def harmless_magic(call):
    """get_ipython().run_line_magic('matplotlib', 'inline') and the like, as IPython writes %matplotlib inline."""
    function = call.func
    return (isinstance(function, ast.Attribute) and function.attr in ("run_line_magic", "run_cell_magic")
            and isinstance(function.value, ast.Call) and dotted(function.value.func) == "get_ipython"
            and call.args and isinstance(call.args[0], ast.Constant) and call.args[0].value in HARMLESS_MAGICS)


class TamperScan(ast.NodeVisitor):
    """Collects (line, what) for one cell's code; `modules` are the names the student's cells bind by import."""

    def __init__(self, modules):
        self.modules = modules
        self.found = []
        self.harmless = set()

    def flag(self, node, what):
        self.found.append((node.lineno, what))

    def visit_Import(self, node):
        for alias in node.names:
            self.check_module(node, alias.name)

    def visit_ImportFrom(self, node):
        self.check_module(node, node.module or "")
        if node.module in ("sys", "os"):
            for alias in node.names:
                if alias.name in SYS_HOOKS | OS_PROCESS_CALLS:
                    self.flag(node, f"imports {node.module}.{alias.name}")

    def check_module(self, node, name):
        if name.split(".")[0] in FORBIDDEN_MODULES:
            self.flag(node, f"imports {name}, which reaches into the interpreter, IPython or the kernel")
        elif name.startswith(("torch.overrides", "torch.library", "torch._C", "numpy.core", "os.")):
            self.flag(node, f"imports {name}")

    def visit_Call(self, node):
        name = dotted(node.func)
        if harmless_magic(node):
            self.harmless.add(id(node.func.value.func))
            self.scan_timed_code(node)
        elif name == "vars" and node.args:
            self.flag(node, "calls vars() on an object (its attributes can then be replaced by name)")
        elif name in ("setattr", "delattr", "object.__setattr__", "type.__setattr__") and not on_self(node):
            self.flag(node, f"calls {name}() on something other than self (it can replace functions the tests use)")
        elif name == "getattr" and len(node.args) >= 2 and not on_self(node):
            attribute = node.args[1]
            if isinstance(attribute, ast.Constant) and isinstance(attribute.value, str):
                self.check_attribute(node, f"{ast.unparse(node.args[0])}.{attribute.value}", attribute.value)
            else:
                self.flag(node, "calls getattr() with a computed name (it hides what it reaches)")
        elif name and name.split(".")[0] == "os" and name.split(".")[-1] in OS_PROCESS_CALLS:
            self.flag(node, f"calls {name}()")
        elif name and name.endswith(("weakref.finalize", "atexit.register", "Thread", "Timer")):
            self.flag(node, f"calls {name}(), which can run code later, behind the tests' back")
        self.generic_visit(node)

    def scan_timed_code(self, call):
        """The code that %time/%timeit (line) or %%time/%%timeit (cell) run: scanned as if it stood there."""
        magic, *arguments = [argument.value for argument in call.args if isinstance(argument, ast.Constant)]
        if magic not in TIMING_MAGICS or not arguments:
            return
        code = arguments[-1] if call.func.attr == "run_cell_magic" else re.sub(r"^(\s*-\w\s*\d*)*", "", arguments[0])
        try:
            tree = ast.parse(python_code(code))
        except (SyntaxError, ValueError):
            self.flag(call, f"runs code under %{magic} that the scan cannot read")
            return
        ast.increment_lineno(tree, call.lineno - (call.func.attr == "run_line_magic"))
        self.visit(tree)

    def visit_Name(self, node):
        if node.id in DYNAMIC_BUILTINS and not isinstance(node.ctx, ast.Store):
            self.flag(node, f"uses {node.id}, which runs or reaches code given as data")
        elif node.id in SHELL_INTERNALS | INTROSPECTION and id(node) not in self.harmless:
            self.flag(node, f"uses {node.id} (IPython, kernel or interpreter internals)")
        elif node.id == "__builtins__":
            self.flag(node, "uses __builtins__")

    def visit_Attribute(self, node):
        changes = isinstance(node.ctx, (ast.Store, ast.Del))
        self.check_attribute(node, dotted(node) or ast.unparse(node), node.attr, changes)
        if changes:
            self.check_assignment(node)
        self.visit(node.value)

    def check_attribute(self, node, name, attribute, changes=False):
        """`name`: the attribute as the code spells it (os.sys.modules), `attribute`: its last part (modules)."""
        owners = name.split(".")[:-1]
        if attribute in SYS_HOOKS and "sys" in owners:
            self.flag(node, f"uses {name} (interpreter hooks)")
        elif attribute in SHELL_INTERNALS:
            self.flag(node, f"uses {name} (IPython or kernel internals)")
        elif attribute in INTROSPECTION or (attribute in ("__class__", "__dict__") and changes):
            self.flag(node, f"uses {name} (surgery on functions, frames or classes)")
        elif attribute == "__dict__" or (attribute == "session" and "kernel" in name):
            self.flag(node, f"uses {name}")
        elif attribute in REACHABLE_MODULES and owners:
            self.flag(node, f"reaches the module {attribute} through {name}")

    def check_assignment(self, node):
        name = dotted(node)
        if name is None or name.split(".")[0] not in self.modules:
            return
        if not name.startswith(CONFIGURATION):
            verb = "deletes" if isinstance(node.ctx, ast.Del) else "assigns"
            self.flag(node, f"{verb} {name}, an attribute of an imported module (it can replace what the tests use)")

    def visit_Subscript(self, node):
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            name = dotted(node.value)
            if name and name.split(".")[0] in self.modules and not name.startswith(CONFIGURATION + ("os.environ",)):
                self.flag(node, f"changes an entry of {name}, part of an imported module")
        self.generic_visit(node)

    def visit_FunctionDef(self, node):
        self.check_method(node)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def check_method(self, node):
        if node.name in ASSERTION_DUNDERS:
            self.flag(node, f"defines {node.name}, which can decide how an assertion or comparison turns out")

    def visit_Assign(self, node):
        for target in node.targets:
            if isinstance(target, ast.Name) and target.id in ASSERTION_DUNDERS:
                self.flag(node, f"defines {target.id}, which can decide how an assertion or comparison turns out")
        self.generic_visit(node)

    def visit_Constant(self, node):
        if isinstance(node.value, str) and "/proc/" in node.value:
            self.flag(node, "names a /proc path (the process's own memory or state)")


def names_used_by_tests(notebook):
    """The names the notebook's test cells read (torch, abs, KLD...)."""
    names = set()
    for cell in notebook.cells:
        if is_test_cell(cell):
            try:
                tree = ast.parse(python_code(cell.source))
            except (SyntaxError, ValueError):
                continue
            names |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    return names


def on_self(call):
    """Whether a call's first argument is self or cls (setattr(self, ...) in a method is ordinary code)."""
    return bool(call.args) and isinstance(call.args[0], ast.Name) and call.args[0].id in ("self", "cls")


def top_level_statements(body):
    """The statements of a cell that run at the notebook's top level (not inside a def or class)."""
    for node in body:
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from top_level_statements(getattr(node, field, []))


def top_level_bindings(tree):
    """[(node, name, module it imports or None)] for the names a cell binds at the notebook's top level."""
    bindings = []
    for node in top_level_statements(tree.body):
        if isinstance(node, ast.Import):
            bindings += [(node, alias.asname or alias.name.split(".")[0],
                          alias.name if alias.asname else alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            bindings += [(node, alias.asname or alias.name, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bindings.append((node, node.name, None))
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bindings.append((node, node.name, None))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor, ast.With,
                               ast.AsyncWith)):
            targets = (node.targets if isinstance(node, ast.Assign) else [item.optional_vars for item in node.items]
                       if isinstance(node, (ast.With, ast.AsyncWith)) else [node.target])
            bindings += [(node, name, None) for target in targets for name in target_names(target)]
    return bindings


def target_names(target):
    """The names an assignment target binds: `a, *b = ...` binds a and b; `a.x = ...` and `a[0] = ...` none."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in target_names(element)]
    if isinstance(target, ast.Starred):
        return target_names(target.value)
    return []


def rebinding_evidence(trees, used_by_tests):
    """{index: [(line, what)]}: top-level names rebound so that the tests see something else than they expect:
    a builtin the tests use (abs = ...), or a module name (torch = FakeTorch(), import numpy as torch)."""
    import builtins

    bindings = {index: top_level_bindings(tree) for index, tree in sorted(trees.items())}
    modules = {}  # name: the module its first import binds it to
    for found in bindings.values():
        for _, name, module in found:
            if module is not None:
                modules.setdefault(name, module)
    evidence = {}
    for index, found in bindings.items():
        for node, name, module in found:
            if module is None and name in modules:
                what = f"rebinds {name}, which an import binds to {modules[name]}, to something else"
            elif module is not None and module != modules[name]:
                what = f"binds {name} to {module}, which an earlier import binds to {modules[name]}"
            elif module is None and name in used_by_tests and hasattr(builtins, name):
                what = f"rebinds the builtin {name}, which the tests use"
            else:
                continue
            evidence.setdefault(index, []).append((node.lineno, what))
    return evidence


def python_code(source):
    """The cell's code as Python, magics (%matplotlib, !ls) turned into the calls IPython makes for them."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def student_cells(notebook):
    """[(index, cell)] of the code cells the student wrote or could edit: every code cell that nbgrader does not
    restore from the gradebook (locked cells, such as the test cells, are restored)."""
    return [(index, cell) for index, cell in enumerate(notebook.cells)
            if cell.cell_type == "code" and not cell.get("metadata", {}).get("nbgrader", {}).get("locked", False)]


def imported_names(trees):
    """The names that import statements bind in any of the parsed cells (torch, np, F, nn...)."""
    names = {"sys", "os", "builtins", "torch", "numpy", "np", "math"}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def cell_name(notebook, index):
    grade_id = notebook.cells[index].get("metadata", {}).get("nbgrader", {}).get("grade_id")
    return f"cell {grade_id!r} (cell {index})" if grade_id else f"cell {index}"


def scan_notebook(notebook):
    """What the static scan finds in the student's cells: ['cell 'kld' (cell 26), line 3: assigns ...']."""
    items, trees = [], {}
    for index, cell in enumerate(notebook.cells):
        if is_canary(cell):
            items.append(f"{cell_name(notebook, index)}: the submission carries a cell marked as a grader canary")
    for index, cell in student_cells(notebook):
        try:
            trees[index] = ast.parse(python_code(cell.source))
        except (SyntaxError, ValueError):
            continue  # it fails when it runs, and scores accordingly
    modules = imported_names(trees.values())
    rebound = rebinding_evidence(trees, names_used_by_tests(notebook))
    for index, tree in trees.items():
        scan = TamperScan(modules)
        scan.visit(tree)
        found = sorted(set(scan.found + rebound.get(index, [])))
        items += [f"{cell_name(notebook, index)}, line {line}: {what}" for line, what in found]
    return items

