"""The static scan: what the student's cells could use to tamper with grading, read from their code with `ast`.

It reads the submitted code cells that nbgrader runs as the student wrote them: every code cell but those the
source notebook locks (nbgrader restores those from the source, whatever the submission's metadata says; it
keeps the code of a solution cell that the submission marks as locked). It flags assignments to attributes of
imported modules (torch.allclose = ...), setattr/delattr on anything but self, getattr with a computed name,
exec/eval/compile/__import__, sys.modules/settrace/... (also reached as os.sys...), IPython and kernel internals
(get_ipython() beyond %matplotlib/%time/%timeit, input transformers, set_custom_exc, events, kernel.session...),
importlib, ctypes, gc, inspect, threads, timers, signals, audit hooks, frame and code object surgery, classes
that define the dunders an assertion consults (__eq__, __bool__, __float__, __torch_function__...), and
top-level names rebound under the tests (abs = ..., torch = ..., import numpy as math).
"""
import ast
import builtins
import re

from IPython.core.inputtransformer2 import TransformerManager

from .. import notebooks

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


def names_used_by_tests(source):
    """The names that the code the tests run, as the student cannot change it, reads (torch, abs, KLD...): the
    source notebook's locked cells, the test cells and the stand-ins they rely on."""
    names = set()
    for cell in source.cells:
        if cell.cell_type != "code" or not notebooks.is_locked_cell(cell):
            continue
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
    return TransformerManager().transform_cell(source)


def student_cells(submitted, source):
    """[(index, cell)] of the submitted code cells whose code nbgrader runs as the student wrote it: all but those
    whose grade_id the source notebook locks (nbgrader restores them from the source)."""
    locked = notebooks.locked_grade_ids(source)
    return [(index, cell) for index, cell in enumerate(submitted.cells)
            if cell.cell_type == "code" and notebooks.nbgrader_of(cell).get("grade_id") not in locked]


def imported_names(trees):
    """The names that import statements bind in any of the parsed cells (torch, np, F, nn...)."""
    names = {"sys", "os", "builtins", "torch", "numpy", "np", "math"}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def scan_notebook(submitted, source):
    """What the static scan finds in the student's cells of `submitted`: ['cell 26 (kld), line 3: assigns ...'].
    `source`: the source notebook, which says which cells are locked and which are tests."""
    trees = {}
    for index, cell in student_cells(submitted, source):
        try:
            trees[index] = ast.parse(python_code(cell.source))
        except (SyntaxError, ValueError):
            continue  # it fails when it runs, and scores accordingly
    modules = imported_names(trees.values())
    rebound = rebinding_evidence(trees, names_used_by_tests(source))
    items = []
    for index, tree in trees.items():
        scan = TamperScan(modules)
        scan.visit(tree)
        found = sorted(set(scan.found + rebound.get(index, [])))
        items += [f"{notebooks.cell_label(submitted.cells[index], index)}, line {line}: {what}" for line, what in found]
    return items
