"""`make mutants`: mutation testing of the course's own tests.

    python -m autograder.authoring.mutants part1_vae                     # every exercise of one notebook
    python -m autograder.authoring.mutants part3_gpt --exercise generate # one exercise
    python -m autograder.authoring.mutants part1_vae part2_aae part3_gpt --limit 40 --json build/mutants.json

A mutant is the reference solution of one exercise with one small change a student could make: an operator,
a constant or a dimension off by one, a statement or a call dropped (`detach`, `zero_grad`, `.to(device)`,
`model.train()`...), arguments swapped, a reduction or an activation changed, removed or added; and mistakes that
are right on the inputs tests tend to use only: a squeeze or a reduction over every dimension (a batch of one), a
`dim` counted from the other end, the batch dimension indexed, dropout or `self.training` on in evaluation, a
factory that loses its input's device and dtype (`randn_like(x)` -> `randn(x.shape)`), the numerically naive form
of a stable function (`log(sigmoid(x))`, `log(softmax)`, `binary_cross_entropy(sigmoid(x))`), `no_grad` dropped,
a loss's prediction detached, only the first parameter or parameter group. Only the lines between the solution
markers change. Each mutant runs in its own process, without nbgrader: the notebook up to
the exercise (the reference solutions, training cells skipped as under autograding), the mutated solution cell,
and the cells up to that exercise's last test cell. A mutant is *killed* when one of its test cells fails (or
runs past the time limit), and *survives* when they all pass: a mistake the tests cannot see.

Speed: the notebook's prefix runs once, in this process; each mutant is a fork of it (torch imported once),
several at a time. Survivors that behave exactly as the reference (equivalent mutants) are listed, each with
a reason, in autograder/examples/<notebook>.equivalent.yml, matched by their diff; they do not count.
The last line is `mutation score: K/N killed (E equivalent)`.
"""
import argparse
import ast
import contextlib
import difflib
import io
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import notebooks
from ..grading import judge
from ..release import solution_module
from ..course import ROOT
from ..examples import EXAMPLES

TIME_LIMIT = 30  # seconds for one mutant (solution and tests); a mutant that runs longer counts as killed

# Names a slip of the pen turns into one another (attributes, functions, classes): reductions, activations,
# random draws, masks, modes.
SWAPS = {
    "sum": "mean", "mean": "sum", "max": "min", "min": "max", "amax": "amin", "amin": "amax",
    "argmax": "argmin", "argmin": "argmax", "softmax": "log_softmax", "log_softmax": "softmax",
    "randn": "rand", "rand": "randn", "randn_like": "rand_like", "rand_like": "randn_like",
    "ones_like": "zeros_like", "zeros_like": "ones_like", "ones": "zeros", "zeros": "ones",
    "tril": "triu", "triu": "tril", "cat": "stack", "stack": "cat", "train": "eval", "eval": "train",
    "exp": "log", "log": "exp", "GELU": "ReLU", "LeakyReLU": "ReLU", "Tanh": "Sigmoid", "tanh": "sigmoid",
    "Conv2d": "ConvTranspose2d", "ConvTranspose2d": "Conv2d",
}
MODULES = {"torch", "nn", "F", "math", "np"}
STRING_SWAPS = {"none": "mean", "mean": "sum", "sum": "mean", "-inf": "inf", "ij": "xy"}
BINARY_OPERATORS = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"),
                    ast.FloorDiv: ("//", "/"), ast.Pow: ("**", "*"), ast.MatMult: ("@", "*")}
COMPARISONS = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
               ast.Eq: ("==", "!="), ast.NotEq: ("!=", "==")}

# Mistakes that pass on the inputs tests tend to use and fail on others the exercise allows (a batch of one,
# evaluation mode, another device or dtype, extreme values, several parameter groups):
# calls whose positional dimension arguments, dropped, make them act on every dimension, the batch's included;
ALL_DIMENSIONS = {"squeeze", "flatten", "sum", "mean", "prod", "amax", "amin", "std", "var"}
# calls that reduce or normalize over a dimension, whose `dim=` counted from the other end is right for one rank
# only (softmax(dim=-1) -> softmax(dim=1));
REDUCTIONS = {"sum", "mean", "prod", "amax", "amin", "max", "min", "argmax", "argmin", "std", "var", "norm",
              "logsumexp", "softmax", "log_softmax", "topk", "cumsum"}
DIMENSION_FLIPS = {-1: 1, 1: -1}
# numerically naive forms of stable functions, by the function's name: {x} its input, {rest} its other arguments
# (", ..."), {module} the module it is called from (F); input and rest as in the function form for a method call;
NAIVE_FORMS = {
    "logsigmoid": "torch.log(torch.sigmoid({x}))",
    "softplus": "torch.log(1 + torch.exp({x}))",
    "log_softmax": "torch.log(torch.softmax({x}{rest}))",
    "softmax": "(torch.exp({x}) / torch.sum(torch.exp({x}){rest}, keepdim=True))",
    "logsumexp": "torch.log(torch.sum(torch.exp({x}){rest}))",
    "binary_cross_entropy_with_logits": "{module}.binary_cross_entropy(torch.sigmoid({x}){rest})",
    "cross_entropy": "{module}.nll_loss(torch.log(torch.softmax({x}, dim=1)){rest})",
}
# factories that take the device and dtype of their input -> the plain factory of its shape (CPU, default dtype);
LIKE_FACTORIES = {f"{name}_like": name for name in ("randn", "rand", "zeros", "ones", "empty", "full")}
# context managers and decorators that turn gradient tracking off;
NO_GRAD = {"no_grad", "inference_mode"}
# functional losses by a word of their name (mse_loss, cross_entropy), whose prediction, detached, trains nothing;
LOSS_WORDS = ("loss", "entropy")
# what an optimizer, a loop or a call gets when it sees only the first of several parameters or groups.
FIRST_ONLY = "list({})[:1]"


# ---------------------------------------------------------------------------------------------------------
# Mutations: each is a text edit (start, end, replacement) of the marker-free solution cell.

class SourceText:
    """A cell's source with (line, column) <-> offset conversion, for edits at AST node positions."""

    def __init__(self, source):
        self.source = source
        self.line_starts = [0]
        for line in source.splitlines(keepends=True):
            self.line_starts.append(self.line_starts[-1] + len(line))

    def offset(self, line, column):
        # ast columns count UTF-8 bytes; the solutions are ASCII where code is, so bytes are characters
        return self.line_starts[line - 1] + column

    def start(self, node):
        return self.offset(node.lineno, node.col_offset)

    def end(self, node):
        return self.offset(node.end_lineno, node.end_col_offset)

    def text(self, node):
        return self.source[self.start(node):self.end(node)]

    def operand(self, node):
        """The node's text, in parentheses where it stands in for a bigger expression: (x - y).abs() -> (x - y)."""
        compound = isinstance(node, (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Lambda))
        return f"({self.text(node)})" if compound else self.text(node)


def solution_lines(cell_source):
    """The marker-free cell's source and the set of its line numbers (1-based) inside solution regions."""
    lines, inside, kept = [], set(), False
    for line in cell_source.splitlines():
        marker = line.strip()
        if marker == notebooks.SOLUTION_MARKERS[0]:
            kept = True
        elif marker == notebooks.SOLUTION_MARKERS[1]:
            kept = False
        else:
            lines.append(line)
            if kept:
                inside.add(len(lines))
    return "\n".join(lines), inside


class Mutator(ast.NodeVisitor):
    """Collects the edits (start, end, replacement, operator) for the nodes inside the solution regions."""

    def __init__(self, text, lines):
        self.text, self.lines, self.edits = text, lines, []
        self.signed = set()  # constants under a minus sign
        self.advanced = set()  # iterators advanced by next() or iter(): next(model.parameters()) stays whole

    def inside(self, node):
        return all(line in self.lines for line in range(node.lineno, node.end_lineno + 1))

    def edit(self, start, end, replacement, operator):
        self.edits.append((start, end, replacement, operator))

    def replace(self, node, replacement, operator):
        self.edit(self.text.start(node), self.text.end(node), replacement, operator)

    def generic_visit(self, node):
        if isinstance(node, (ast.expr, ast.stmt)) and self.inside(node):
            self.mutate(node)
        super().generic_visit(node)

    def mutate(self, node):
        method = getattr(self, f"mutate_{type(node).__name__}", None)
        if method:
            method(node)
        if isinstance(node, ast.stmt):
            self.drop_statement(node)

    # operators
    def mutate_BinOp(self, node):
        symbol, other = BINARY_OPERATORS.get(type(node.op), (None, None))
        if symbol:
            self.swap_symbol(node.left, node.right, symbol, other, "arithmetic operator")
        for operand in (node.left, node.right):  # std * epsilon -> epsilon
            self.replace(node, self.text.operand(operand), "operand dropped")

    def mutate_Compare(self, node):
        left = node.left
        for operator, right in zip(node.ops, node.comparators):
            symbol, other = COMPARISONS.get(type(operator), (None, None))
            if symbol:
                self.swap_symbol(left, right, symbol, other, "comparison")
            left = right

    def swap_symbol(self, left, right, symbol, other, operator):
        start, end = self.text.end(left), self.text.start(right)
        gap = self.text.source[start:end]
        position = gap.find(symbol)
        if position >= 0:
            self.edit(start + position, start + position + len(symbol), other, operator)

    def mutate_UnaryOp(self, node):
        if isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            self.signed.add(id(node.operand))  # mutated here as a whole: -1 -> 0, -2
            self.constant(node, -node.operand.value)
        elif isinstance(node.op, (ast.USub, ast.Not)):
            self.replace(node, self.text.operand(node.operand), "sign or negation removed")

    # constants
    def mutate_Constant(self, node):
        if isinstance(node.value, bool):
            self.replace(node, str(not node.value), "boolean flipped")
        elif isinstance(node.value, (int, float)) and id(node) not in self.signed:
            self.constant(node, node.value)
        elif isinstance(node.value, str) and node.value in STRING_SWAPS:
            self.replace(node, repr(STRING_SWAPS[node.value]), "string option changed")

    def constant(self, node, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if isinstance(value, int):
            replacements = {value + 1, value - 1}
        else:
            replacements = {value * 2, 0.0} if value else {1.0}
        for replacement in sorted(replacements - {value}):
            self.replace(node, repr(replacement), "constant changed")

    # names and calls
    def mutate_Attribute(self, node):
        if node.attr in SWAPS:
            start = self.text.end(node) - len(node.attr)
            self.edit(start, self.text.end(node), SWAPS[node.attr], "name swapped")
        if node.attr == "training" and isinstance(node.ctx, ast.Load):  # self.training -> True
            self.replace(node, "True", "training mode assumed")

    def mutate_Call(self, node):
        arguments = [*node.args, *node.keywords]
        if isinstance(node.func, ast.Name) and node.func.id in SWAPS:  # a function or class by its bare name
            self.replace(node.func, SWAPS[node.func.id], "name swapped")
        if isinstance(node.func, ast.Attribute) and not is_module(node.func.value):  # x.detach() -> x
            self.replace(node, self.text.operand(node.func.value), f"call .{node.func.attr}() removed")
        if len(node.args) == 1 and not node.keywords and not isinstance(node.args[0], ast.Starred):
            self.replace(node, self.text.operand(node.args[0]), "call removed")  # torch.exp(s) -> s
        if len(node.args) >= 2 and not any(isinstance(a, ast.Starred) for a in node.args[:2]):
            first, second = node.args[:2]
            self.edit(self.text.start(first), self.text.end(second),
                      self.text.text(second) + self.text.source[self.text.end(first):self.text.start(second)]
                      + self.text.text(first), "arguments swapped")
        for index, argument in enumerate(arguments):
            if isinstance(argument, ast.keyword) or self.is_sequential(node):
                self.drop_argument(arguments, index, "keyword argument dropped"
                                   if isinstance(argument, ast.keyword) else "layer removed")
        if self.is_sequential(node) and node.args:
            end = self.text.end(node.args[-1])
            self.edit(end, end, ", nn.ReLU()", "activation added")
        self.contract_mistakes(node)

    @staticmethod
    def is_sequential(node):
        return isinstance(node.func, ast.Attribute) and node.func.attr == "Sequential"

    def drop_argument(self, arguments, index, operator):
        start, end = self.text.start(arguments[index]), self.text.end(arguments[index])
        if index > 0:
            start = self.text.end(arguments[index - 1])
        elif len(arguments) > 1:
            end = self.text.start(arguments[1])
        self.edit(start, end, "", operator)

    # statements
    def drop_statement(self, node):
        """Drop a call, an update or a return; an assignment only where it rebinds a name (x = f(x))."""
        if isinstance(node, ast.Assign):
            targets = {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            if not targets & {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}:
                return
        elif not isinstance(node, (ast.Expr, ast.AugAssign, ast.Return, ast.If)):
            return
        self.replace(node, "pass", "statement removed")

    # mistakes right on the usual inputs only
    def contract_mistakes(self, node):
        name = call_name(node)
        if name in ("next", "iter"):
            self.advanced.update(id(argument) for argument in node.args)
        if not isinstance(node.func, ast.Attribute) or any(isinstance(a, ast.Starred) for a in node.args):
            return
        function = is_module(node.func.value)  # F.softmax(x, dim=-1), else a method: x.softmax(dim=-1)
        kept = node.args[:1] if function else []
        if name in ALL_DIMENSIONS and len(node.args) > len(kept) and is_tensor_call(node):
            self.replace(node, self.call_text(node, kept), "dimension argument dropped")  # x.squeeze(1) -> x.squeeze()
        for keyword in node.keywords if name in REDUCTIONS else []:
            if keyword.arg == "dim" and integer(keyword.value) in DIMENSION_FLIPS:
                flipped = str(DIMENSION_FLIPS[integer(keyword.value)])
                self.replace(keyword.value, flipped, "dimension counted from the other end")
        if name in NAIVE_FORMS and is_tensor_call(node):
            self.naive_form(node, function)
        if name in LIKE_FACTORIES and function and node.args:  # torch.randn_like(x) -> torch.randn(x.shape)
            factory = self.text.text(node.func)[:-len(name)] + LIKE_FACTORIES[name]
            shape = f"{self.text.operand(node.args[0])}.shape"
            self.replace(node, self.call_text(node, [shape, *node.args[1:]], factory),
                         "device and dtype of the input lost")
        if is_dropout_module(node) and len(node.args) == 1 and not node.keywords:  # self.drop(x) -> F.dropout(x, p)
            self.replace(node, f"torch.nn.functional.dropout({self.text.text(node.args[0])}, "
                               f"{self.text.text(node.func)}.p)", "dropout on in evaluation")
        if function and any(word in name for word in LOSS_WORDS) and node.args:  # F.mse_loss(y.detach(), x)
            self.replace(node.args[0], f"{self.text.operand(node.args[0])}.detach()", "gradient cut (.detach() added)")
        if name in ("parameters", "named_parameters") and id(node) not in self.advanced:
            self.first_only(node)
        if function and self.text.text(node.func.value).split(".")[-1] == "optim" and node.args:  # AdamW(groups)
            self.first_only(node.args[0])

    def naive_form(self, node, function):
        """F.logsigmoid(x) -> torch.log(torch.sigmoid(x)); x.log_softmax(1) -> torch.log(torch.softmax(x, 1))."""
        template = NAIVE_FORMS[call_name(node)]
        x = node.args[0] if function else node.func.value
        rest = [*(node.args[1:] if function else node.args), *node.keywords]
        if ("{module}" in template and not function) or ("{rest}" not in template and rest):
            return  # methods have no module; the naive form has no place for other arguments (softplus's beta)
        if template.count("{x}") > 1 and not is_plain(x):
            return  # an input evaluated twice must be one without side effects
        self.replace(node, template.format(
            x=self.text.operand(x), rest="".join(f", {self.text.text(a)}" for a in rest),
            module=self.text.text(node.func.value) if function else ""), "numerically naive form")

    def first_only(self, node):
        self.replace(node, FIRST_ONLY.format(self.text.text(node)), "only the first parameter or group")

    def call_text(self, node, arguments, function=None):
        """The call's text with these arguments (texts or nodes) and its keywords, by `function` or its own."""
        texts = [a if isinstance(a, str) else self.text.text(a) for a in [*arguments, *node.keywords]]
        return f"{function or self.text.text(node.func)}({', '.join(texts)})"

    def iterated(self, iterable):
        if isinstance(iterable, ast.Attribute) and iterable.attr == "param_groups":
            self.first_only(iterable)  # for group in optimizer.param_groups -> list(optimizer.param_groups)[:1]

    def mutate_For(self, node):
        self.iterated(node.iter)

    def mutate_comprehension_loops(self, node):
        for generator in node.generators:
            self.iterated(generator.iter)

    mutate_ListComp = mutate_SetComp = mutate_DictComp = mutate_GeneratorExp = mutate_comprehension_loops

    def mutate_Subscript(self, node):
        elements = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        for element in elements:  # x[:, [-1]] -> x[:, -1]: the kept dimension indexed away
            if isinstance(element, ast.List) and len(element.elts) == 1:
                self.replace(element, self.text.text(element.elts[0]), "kept dimension indexed away")
        first = elements[0]
        if len(elements) > 1 and isinstance(first, ast.Slice) and not (first.lower or first.upper or first.step):
            self.edit(self.text.start(first), self.text.start(elements[1]), "", "batch dimension indexed")

    def mutate_With(self, node):
        """with torch.no_grad(): -> if True: (gradients tracked)."""
        item = node.items[0]
        if len(node.items) == 1 and not item.optional_vars and call_name(item.context_expr) in NO_GRAD:
            self.edit(self.text.start(node), self.text.end(item.context_expr), "if True", "no_grad removed")

    def mutate_FunctionDef(self, node):
        for decorator in node.decorator_list:  # @torch.no_grad() dropped, its line with it
            if call_name(decorator) in NO_GRAD and decorator.lineno in self.lines:
                line = self.text.line_starts
                self.edit(line[decorator.lineno - 1], line[decorator.end_lineno], "", "no_grad removed")


def is_module(node):
    """Whether `node` names a module (torch, F, nn.utils...) rather than a value whose method is called."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id in MODULES


def call_name(node):
    """The name a call calls: F.softmax(x) -> softmax, x.sum() -> sum, next(it) -> next; None if not a call by name."""
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Attribute):
            return node.func.attr
        if isinstance(node.func, ast.Name):
            return node.func.id
    return None


def is_plain(node):
    """Whether evaluating `node` twice is the same as once: a name or its attributes (scores, self.mask)."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name)


def is_tensor_call(node):
    """Whether the call is a torch function with a tensor first (F.softmax(x)) or a tensor's method (x.softmax()):
    not self.softmax(x), a module of the model, nor a call with no tensor (F.softmax())."""
    if is_module(node.func.value):
        return bool(node.args)
    return not (isinstance(node.func.value, ast.Name) and node.func.value.id == "self")


def is_dropout_module(node):
    """Whether the call calls a dropout module by its attribute: self.dropout(x), self.attn_dropout(x), self.drop(x)."""
    return (isinstance(node.func, ast.Attribute) and not is_module(node.func.value)
            and ("dropout" in node.func.attr.lower() or node.func.attr == "drop"))


def integer(node):
    """The int a constant (1, -1) stands for; None for anything else."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = integer(node.operand)
        return None if value is None else -value
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    return None


@dataclass
class Mutant:
    exercise: str
    number: int
    operator: str
    source: str
    diff: str
    result: dict = field(default_factory=dict)


def unified_diff(before, after):
    """The changed lines only: '-old' and '+new' lines, without headers or line numbers (stable ids)."""
    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    return "\n".join(line for line in lines if line[:1] in "+-" and not line.startswith(("+++", "---")))


def mutants_of(exercise, cell_source):
    """Every distinct, compilable mutant of the solution cell `exercise`."""
    source, lines = solution_lines(cell_source)
    text = SourceText(source)
    mutator = Mutator(text, lines)
    mutator.visit(ast.parse(source))
    seen, mutants = {source}, []
    for start, end, replacement, operator in mutator.edits:
        mutated = source[:start] + replacement + source[end:]
        if mutated in seen:
            continue
        seen.add(mutated)
        try:
            ast.parse(mutated)
        except SyntaxError:
            continue
        mutants.append(Mutant(exercise, len(mutants) + 1, operator, mutated, unified_diff(source, mutated)))
    return mutants


def evenly_spaced(items, limit):
    """At most `limit` of the items, spread over the whole list (the same ones every run)."""
    if limit is None or len(items) <= limit:
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


# ---------------------------------------------------------------------------------------------------------
# Running: the notebook's prefix once, each mutant in a fork.

@dataclass
class Exercise:
    name: str
    cell_index: int
    tests: list  # (cell index, grade_id) of its test cells
    mutants: list = field(default_factory=list)


def code_cells(path):
    """The code cells of a source notebook as nbgrader runs them: module-only and judge-only cells dropped."""
    notebook = notebooks.drop_tagged(notebooks.drop_tagged(notebooks.read_source(path), "module-only"), "judge-only")
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


@dataclass(frozen=True)
class Judging:
    """The judges of a notebook's hidden tests, the names they see and the seed of the run (one for all mutants)."""
    judges: judge.Judges
    namespace: dict
    seed: int = 0

    @classmethod
    def of(cls, notebook):
        source = ROOT / "solutions" / f"{notebook}.md"
        judges = judge.Judges.from_data(notebooks.judges(notebooks.read_source(source), solution_module(source)))
        return cls(judges, judges.namespace())


def exercises_of(cells):
    """The solution cells, each with the test cells that follow it (up to the next solution cell)."""
    exercises = []
    for index, cell in enumerate(cells):
        role = cell.metadata.get("role")
        if role == "solution":
            exercises.append(Exercise(notebooks.grade_id(cell), index, []))
        elif role == "tests" and exercises:
            exercises[-1].tests.append((index, notebooks.grade_id(cell)))
    return [exercise for exercise in exercises if exercise.tests]


def run_cell(cell, index, namespace, judging, source=None):
    """Run a cell's code (or `source` in its place) in the notebook's namespace, its hidden tests as grading runs
    them (probe here, judge on the reference's names: an AssertionError with its message when it fails); what it
    prints is not part of the report."""
    source = cell_code(cell) if source is None else source
    label = notebooks.cell_label(cell, index)
    region = notebooks.hidden_tests(source, label)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(notebooks.without_hidden_tests(source), f"<{label}>", "exec"), namespace)
        if region is not None and (message := judge.probe_and_judge(region, notebooks.grade_id(cell), namespace,
                                                                    judging.judges, judging.namespace, judging.seed)):
            raise AssertionError(message)


def run_mutant(cells, exercise, mutant, namespace, judging):
    """In the forked child: the mutated solution, then the cells up to the last test; {test: why it failed}."""
    failed = {}
    tests = dict(exercise.tests)
    for index in range(exercise.cell_index, exercise.tests[-1][0] + 1):
        try:
            run_cell(cells[index], index, namespace, judging,
                     source=mutant.source if index == exercise.cell_index else None)
        except BaseException as error:  # a mutant may raise anything; it is a result, not a crash
            if index in tests:
                first_line = str(error).splitlines()[0] if str(error) else ""
                failed[tests[index]] = f"{type(error).__name__}: {first_line}"[:200]
    return failed


def cell_code(cell):
    return notebooks.without_solution_markers(cell.source)


def fork_mutant(cells, exercise, mutant, namespace, judging, time_limit):
    """Start one mutant in a child process; return (pid, read end of its result pipe)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: quiet, time-limited, reports its failed tests as JSON, never returns
        try:
            os.close(read_end)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            signal.alarm(time_limit)
            failed = run_mutant(cells, exercise, mutant, namespace, judging)
            os.write(write_end, json.dumps(failed).encode()[:60_000])
        finally:
            os._exit(0)
    os.close(write_end)
    return pid, read_end


def run_mutants(cells, exercise, namespace, judging, jobs, time_limit):
    """Run every mutant of `exercise`, `jobs` at a time; fill in each mutant's result."""
    pending, running = list(exercise.mutants), {}
    while pending or running:
        while pending and len(running) < jobs:
            mutant = pending.pop(0)
            pid, read_end = fork_mutant(cells, exercise, mutant, namespace, judging, time_limit)
            running[pid] = (mutant, read_end)
        pid, status = os.wait()
        if pid not in running:
            continue
        mutant, read_end = running.pop(pid)
        with os.fdopen(read_end, "rb") as pipe:
            output = pipe.read()
        if os.WIFSIGNALED(status):
            reason = "time limit" if os.WTERMSIG(status) == signal.SIGALRM else f"signal {os.WTERMSIG(status)}"
            mutant.result = {"(process)": f"killed by {reason}"}
        else:
            mutant.result = json.loads(output or b"{}")


def mutation_run(notebook, selected=None, jobs=None, time_limit=TIME_LIMIT, limit=None, progress=print):
    """Run the mutants of the exercises of `notebook` (all, or the names in `selected`); return the exercises."""
    cells = code_cells(ROOT / "solutions" / f"{notebook}.md")
    exercises = [e for e in exercises_of(cells) if selected is None or e.name in selected]
    if selected and len(exercises) < len(set(selected)):
        known = [e.name for e in exercises_of(cells)]
        raise SystemExit(f"{notebook} has no exercise {sorted(set(selected) - set(known))}; it has {known}")
    for exercise in exercises:
        exercise.mutants = evenly_spaced(mutants_of(exercise.name, cells[exercise.cell_index].source), limit)
    by_cell = {exercise.cell_index: exercise for exercise in exercises}
    last = max((exercise.tests[-1][0] for exercise in exercises), default=-1)
    namespace, judging = {"__name__": "__main__"}, Judging.of(notebook)
    tests = {index for exercise in exercises for index, _ in exercise.tests}
    for index in range(last + 1):
        if index in by_cell:
            exercise = by_cell[index]
            start = time.perf_counter()
            run_mutants(cells, exercise, namespace, judging, jobs or os.cpu_count(), time_limit)
            progress(f"  {notebook}/{exercise.name}: {len(exercise.mutants)} mutants in "
                     f"{time.perf_counter() - start:.0f} s")
        try:
            run_cell(cells[index], index, namespace, judging)
        except Exception as error:
            if index in tests or index in by_cell:
                raise SystemExit(f"{notebook}: the reference fails {notebooks.cell_label(cells[index], index)}: "
                                 f"{type(error).__name__}: {error}")
    return exercises


# ---------------------------------------------------------------------------------------------------------
# Equivalent mutants and the report.

def equivalents(notebook):
    """{(exercise, diff): reason} from autograder/examples/<notebook>.equivalent.yml (empty if none)."""
    path = EXAMPLES / f"{notebook}.equivalent.yml"
    entries = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return {(entry["exercise"], entry["diff"].strip("\n")): entry["reason"] for entry in entries or []}


def score(exercises, equivalent):
    """Per exercise: (killed, survivors, equivalents) lists of mutants."""
    table = {}
    for exercise in exercises:
        killed = [m for m in exercise.mutants if m.result]
        same = [m for m in exercise.mutants if not m.result and (exercise.name, m.diff) in equivalent]
        survivors = [m for m in exercise.mutants if not m.result and (exercise.name, m.diff) not in equivalent]
        table[exercise.name] = (killed, survivors, same)
    return table


def report(notebook, exercises, equivalent, out=print):
    """Print the per-exercise report; return {exercise: dict of counts} for --json."""
    summary = {}
    for exercise in exercises:
        killed, survivors, same = score([exercise], equivalent)[exercise.name]
        counted = len(killed) + len(survivors)
        by_test = {}
        for mutant in killed:
            for test in mutant.result:
                by_test[test] = by_test.get(test, 0) + 1
        out(f"{notebook}/{exercise.name}: {len(killed)}/{counted} killed ({len(same)} equivalent); "
            f"killed by: {', '.join(f'{test} {count}' for test, count in sorted(by_test.items())) or 'none'}")
        for mutant in survivors:
            out(f"  survivor #{mutant.number} ({mutant.operator}):")
            out("\n".join(f"    {line}" for line in mutant.diff.splitlines()))
        summary[exercise.name] = {"killed": len(killed), "counted": counted, "equivalent": len(same),
                                  "survivors": [m.diff for m in survivors]}
    listed = {diff for name, diff in equivalent if name in {e.name for e in exercises}}
    matched = {m.diff for e in exercises for m in e.mutants}
    for diff in sorted(listed - matched):
        out(f"  note: an equivalent mutant listed in {notebook}.equivalent.yml no longer occurs:\n    "
            + diff.replace("\n", "\n    "))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m autograder.authoring.mutants", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", help="source notebooks by name, e.g. part1_vae")
    parser.add_argument("--exercise", action="append", help="only this exercise (its grade_id); may repeat")
    parser.add_argument("--jobs", type=int, default=None, help="mutants run at once (default: one per core)")
    parser.add_argument("--time-limit", type=int, default=TIME_LIMIT, help="seconds per mutant (%(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many mutants per exercise")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-exercise counts here")
    args = parser.parse_args(argv)
    os.environ["NBGRADER_EXECUTION"] = "autograde"  # training cells skip, as under nbgrader
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.path.insert(0, str(ROOT / "solutions"))  # the notebooks import course_utils from beside them
    import torch
    torch.set_num_threads(1)  # one thread per process: the forks run side by side
    started = time.perf_counter()
    totals, summaries = [0, 0, 0], {}
    for notebook in args.notebooks:
        exercises = mutation_run(notebook.removesuffix(".md"), args.exercise, args.jobs, args.time_limit,
                                 args.limit)
        equivalent = equivalents(notebook)
        summaries[notebook] = report(notebook, exercises, equivalent)
        for counts in summaries[notebook].values():
            totals[0] += counts["killed"]
            totals[1] += counts["counted"]
            totals[2] += counts["equivalent"]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summaries, indent=2) + "\n")
    print(f"({time.perf_counter() - started:.0f} s)")
    print(f"mutation score: {totals[0]}/{totals[1]} killed ({totals[2]} equivalent)")


if __name__ == "__main__":
    main()
