"""The canary probe: what every canary cell runs inside the student's kernel (see canaries.py).

The grader ships this file's text into the kernel, where it runs in a namespace of its own, so that the
notebook's names stay as they are. It may therefore use only what the kernel has (the standard library, numpy,
torch, IPython and the course's helpers), nothing of the autograder. Its entry is `report(nonce, index)`; the
fingerprints it takes are compared outside the kernel, by canaries.canary_evidence.
"""
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

# Where installed code lives: code from elsewhere is the notebook's.
LIBRARY = tuple({os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
# Names of the notebook that must hold the module they name.
MODULE_ALIASES = {"torch": "torch", "np": "numpy", "numpy": "numpy", "math": "math", "nn": "torch.nn",
                  "F": "torch.nn.functional", "course_utils": "course_utils"}


def report(nonce, index):
    """One canary's findings, as JSON: what it fingerprints, what misbehaves, what could act behind the tests'
    back, the notebook's rebound names and its custom exception handler."""
    shell = get_ipython()
    record, unusual = first_canary_record(nonce, index, shell)
    fingerprint = {**interpreter_fingerprint(shell), **shell_fingerprint(shell)}
    misbehaving = misbehaviour()
    unusual += event_callbacks(shell) + notebook_threads(record) + notebook_modules(record)
    rebound = rebound_names(shell)
    custom = "none"
    if shell is not None and shell.custom_exceptions:
        custom = describe_custom_exc(shell, record.handler_codes)
    return json.dumps({
        "fingerprint": fingerprint,
        "misbehaving": misbehaving,
        "custom_exceptions": custom,
        "unusual": sorted(set(unusual)),
        "rebound": sorted(rebound),
    })


def first_canary_record(nonce, index, shell):
    """(the first canary's record, [what is unusual about it]). The first canary (index 0) keeps what later
    canaries compare with in a module named after the nonce: the threads that existed, the course's exception
    handler, the modules already checked."""
    name = f"_dgm_canary_{nonce}"
    record = sys.modules.get(name)
    if record is not None:
        return record, []
    # Made now by the first canary, or gone (then a new one, which nothing compares equal to).
    record = types.ModuleType(name)
    sys.modules[name] = record
    record.handler_codes = set_custom_exc_codes(shell)
    record.threads = set(sys._current_frames())
    record.checked_modules = set()  # (name, id) of the modules whose file was checked: each module once
    return record, ([] if index == 0 else ["the first canary's record disappeared"])


# ---------------------------------------------------------------------------------------------------------------
# Fingerprints: the identity of what the tests and nbgrader rely on.

def identity(value):
    """What stays the same as long as `value` is not replaced."""
    function = getattr(value, "__func__", None)  # a bound method is a new object at every access
    return [id(function), id(value.__self__)] if function is not None else id(value)


def watched(label, owner, names):
    """{"label.name": identity of owner.name} for each name (None where reading it fails)."""
    found = {}
    for name in names:
        try:
            found[f"{label}.{name}"] = identity(getattr(owner, name))
        except Exception:
            found[f"{label}.{name}"] = None
    return found


def interpreter_fingerprint(shell):
    """Builtins, modules, the assertion helpers of torch, numpy and math, and the interpreter's hooks."""
    fingerprint = watched("builtins", builtins, [
        "__import__", "__build_class__", "abs", "all", "any", "bool", "callable", "compile", "dict", "exec", "eval",
        "float", "getattr", "hasattr", "id", "int", "isinstance", "issubclass", "iter", "len", "list", "map",
        "max", "min", "next", "object", "open", "print", "range", "repr", "round", "set", "setattr", "sorted",
        "str", "sum", "super", "tuple", "type", "zip", "AssertionError", "Exception", "NotImplementedError"])
    fingerprint["import torch"] = id(torch)
    fingerprint["import numpy"] = id(numpy)
    for name in ("builtins", "sys", "math", "numpy", "numpy.testing", "torch", "torch.testing", "torch.nn",
                 "IPython", "ipykernel", "course_utils", "json", "os"):
        fingerprint[f"sys.modules[{name!r}]"] = id(sys.modules.get(name))
    fingerprint |= watched("torch", torch, [
        "allclose", "equal", "isclose", "all", "any", "abs", "eq", "ne", "lt", "le", "gt", "ge", "isfinite",
        "isnan", "isinf", "is_tensor", "tensor", "as_tensor", "zeros", "ones", "full", "randn", "rand", "randint",
        "max", "min", "sum", "mean", "exp", "log", "sqrt", "cat", "stack", "no_grad",
        "is_grad_enabled", "Tensor", "Size", "nn", "testing", "autograd"])
    fingerprint |= watched("torch.Tensor", torch.Tensor, [
        "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__", "__float__", "__int__",
        "__abs__", "__len__", "__getitem__", "__torch_function__", "all", "any", "abs", "item", "tolist", "sum",
        "mean", "max", "min", "allclose", "isclose", "equal", "eq", "ne", "shape", "size", "dim", "numel",
        "backward", "detach", "clone", "float", "isfinite", "isnan"])
    fingerprint |= watched("torch.nn.Module", torch.nn.Module, ["__call__", "_call_impl", "parameters",
                                                                "named_parameters"])
    fingerprint |= watched("torch.autograd", torch.autograd, ["backward", "grad"])
    fingerprint |= watched("torch.testing", torch.testing, ["assert_close"])
    fingerprint |= watched("numpy", numpy, [
        "allclose", "isclose", "array_equal", "array_equiv", "all", "any", "abs", "isfinite", "isnan", "asarray",
        "array", "ndarray", "testing"])
    fingerprint |= watched("numpy.ndarray", numpy.ndarray, ["__eq__", "__bool__", "all", "any", "item", "tolist"])
    fingerprint |= watched("numpy.testing", numpy.testing, sorted(n for n in dir(numpy.testing)
                                                                  if n.startswith("assert_")))
    fingerprint |= watched("math", math, sorted(n for n in dir(math) if not n.startswith("_")))
    fingerprint |= watched("sys", sys, [
        "settrace", "gettrace", "setprofile", "getprofile", "excepthook", "__excepthook__", "displayhook",
        "stdout", "stderr", "addaudithook", "audit", "_getframe", "modules"])
    fingerprint["sys.gettrace()"] = identity(sys.gettrace())
    fingerprint["sys.getprofile()"] = identity(sys.getprofile())
    fingerprint["threading.gettrace()"] = identity(threading.gettrace())
    fingerprint["threading.getprofile()"] = identity(threading.getprofile())
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        fingerprint[f"sys.{name}.write"] = identity(untee(stream.write, shell))
        fingerprint |= watched(f"sys.{name}", stream, ["flush"])
        fingerprint |= watched(f"type(sys.{name})", type(stream), ["write", "flush"])
    for name in ("SIGALRM", "SIGVTALRM", "SIGPROF", "SIGUSR1", "SIGUSR2", "SIGTERM"):
        fingerprint[f"signal handler {name}"] = identity(signal.getsignal(getattr(signal, name)))
    if course_utils is not None:
        fingerprint |= watched("course_utils", course_utils, ["explain_unfinished_exercises",
                                                              "unfinished_exercise"])
    return fingerprint


def untee(write, shell):
    """sys.stdout.write as it is between cells: while a cell runs, IPython wraps it to record the output."""
    tee = getattr(getattr(type(shell), "_tee", None), "__wrapped__", None)
    tee_writes = [c for c in getattr(getattr(tee, "__code__", None), "co_consts", ())
                  if getattr(c, "co_name", None) == "write"]
    while getattr(write, "__code__", None) in tee_writes:
        write = write.__closure__[write.__code__.co_freevars.index("original_write")].cell_contents
    return write


def shell_fingerprint(shell):
    """IPython's hooks (input and AST transformers, showtraceback, run_cell...) and the kernel's messaging."""
    if shell is None:
        return {}
    fingerprint = {"get_ipython()": id(shell)}
    fingerprint |= watched("get_ipython()", shell, [
        "run_cell", "run_cell_async", "_run_cell", "run_ast_nodes", "run_code", "transform_cell",
        "transform_ast", "showtraceback", "_showtraceback", "showsyntaxerror", "get_exception_only",
        "_get_exc_info", "should_run_async", "set_custom_exc", "_tee", "compile", "displayhook", "display_pub",
        "InteractiveTB", "SyntaxTB", "events", "input_transformer_manager", "kernel", "builtin_trap",
        "input_transformers_post", "ast_transformers"])
    fingerprint |= watched("type(get_ipython().compile)", type(shell.compile), ["__call__", "ast_parse", "cache"])
    fingerprint |= watched("get_ipython().InteractiveTB", shell.InteractiveTB, ["structured_traceback", "text"])
    fingerprint |= watched("get_ipython().display_pub", shell.display_pub, ["publish"])
    manager = shell.input_transformer_manager
    for label, transformers in (("input_transformers_cleanup", manager.cleanup_transforms),
                                ("input_transformer_manager.line_transforms", manager.line_transforms),
                                ("input_transformer_manager.token_transformers", manager.token_transformers),
                                ("input_transformers_post", shell.input_transformers_post),
                                ("ast_transformers", shell.ast_transformers)):
        fingerprint[f"get_ipython().{label}[...]"] = [identity(t) for t in transformers]
    kernel = getattr(shell, "kernel", None)
    if kernel is not None:
        fingerprint |= watched("kernel", kernel, [
            "do_execute", "execute_request", "send_response", "session", "iopub_socket", "iopub_thread",
            "dispatch_shell", "_publish_execute_input", "_publish_status"])
        fingerprint |= watched("kernel.session", kernel.session, ["send", "serialize", "sign", "msg"])
        for name, handler in sorted(kernel.shell_handlers.items()):
            fingerprint[f"kernel.shell_handlers[{name!r}]"] = identity(handler)
    return fingerprint


# ---------------------------------------------------------------------------------------------------------------
# Behaviour: the assertion helpers on small known cases.

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


def known_cases():
    """{what: a check that returns True when it answers known cases right}."""
    tensor = torch.tensor
    return {
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


def misbehaviour():
    """What gives wrong answers on, or fails on, its known cases."""
    misbehaving = []
    for name, check in known_cases().items():
        try:
            if check() is not True:
                misbehaving.append(f"{name} gives wrong answers on a known case")
        except Exception as error:
            misbehaving.append(f"{name} fails on a known case ({type(error).__name__}: {error})"[:300])
    return misbehaving


# ---------------------------------------------------------------------------------------------------------------
# What student code could use to act while a canary or a test runs.

def library_file(filename):
    return filename.startswith("<frozen") or os.path.realpath(filename).startswith(LIBRARY)


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


def event_callbacks(shell):
    """IPython event callbacks that are not a library's."""
    if shell is None:
        return []
    return [f"IPython event callback {event}: {callback!r}"[:300]
            for event, callbacks in shell.events.callbacks.items()
            for callback in callbacks if not from_library(callback)]


def notebook_threads(record):
    """Pending timers, and threads started since the first canary that run the notebook's code."""
    unusual = []
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer) and thread.is_alive():
            unusual.append(f"a pending threading.Timer calls {thread.function!r}"[:300])
        elif thread.ident not in record.threads:
            target = getattr(thread, "_target", None)
            if not from_library(target if target is not None else type(thread).run):
                unusual.append(f"a thread started by the notebook runs {target or type(thread).run!r}"[:300])
    for ident, frame in sys._current_frames().items():
        if ident != threading.get_ident() and ident not in record.threads:
            while frame is not None and library_file(frame.f_code.co_filename):
                frame = frame.f_back
            if frame is not None:
                unusual.append(f"a thread runs {frame.f_code.co_name} from {frame.f_code.co_filename}")
    return unusual


def notebook_modules(record):
    """Modules loaded from the notebook's folder (a .py that came with the submission), the course's helpers
    excepted."""
    unusual = []
    folder = os.path.realpath(os.getcwd()) + os.sep
    for name, module in list(sys.modules.items()):
        # realpath of every file of the thousands of modules torch loads costs a canary most of its time:
        # check those loaded (or replaced) since the last canary only; each is reported where it first shows.
        if (name, id(module)) in record.checked_modules:
            continue
        record.checked_modules.add((name, id(module)))
        filename = str(getattr(module, "__file__", None) or "")
        if not os.path.isabs(filename):
            continue  # built in, or a namespace such as torch.ops
        filename = os.path.realpath(filename)
        if filename.startswith(folder) and not filename.startswith(LIBRARY) and name != "course_utils":
            unusual.append(f"module {name} was loaded from {filename} in the notebook's folder")
    return unusual


def rebound_names(shell):
    """Names of the notebook's namespace that hide a builtin or hold something else than the module they name
    (`abs = ...`, `torch = FakeTorch()`): the grader keeps those that the test cells use."""
    namespace = shell.user_ns if shell is not None else {}
    return [name for name, value in list(namespace.items())
            if (hasattr(builtins, name) and value is not getattr(builtins, name))
            or (name in MODULE_ALIASES and value is not sys.modules.get(MODULE_ALIASES[name]))
            or (isinstance(value, types.ModuleType) and value is not sys.modules.get(value.__name__))]


# ---------------------------------------------------------------------------------------------------------------
# The custom exception handler: the course's own is allowed.

def set_custom_exc_codes(shell):
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
    """'course' when the custom exception handler is the course's own (for the exceptions it handles), else what
    it is."""
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
