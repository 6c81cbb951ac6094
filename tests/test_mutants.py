"""The course's tests catch mistakes: a mutation score of at least 95% on every exercise (python -m autograder.authoring.mutants).

The three notebooks run side by side, each in its own process, with at most MUTANTS_PER_EXERCISE mutants per
exercise (the same evenly spread ones every run); `make mutants` runs them all.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autograder.authoring import mutants

NOTEBOOKS = ("part1_vae", "part2_aae", "part3_gpt")
MUTANTS_PER_EXERCISE = 25
FLOOR = 0.95


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    """{notebook: {exercise: counts}} from one run of every notebook's mutants, the notebooks in parallel."""
    out = tmp_path_factory.mktemp("mutants")
    jobs = max(1, (os.cpu_count() or 1) // len(NOTEBOOKS))
    runs = {notebook: subprocess.Popen(
        [sys.executable, "-m", "autograder.authoring.mutants", notebook, "--limit", str(MUTANTS_PER_EXERCISE),
         "--jobs", str(jobs), "--json", str(out / f"{notebook}.json")],
        cwd=mutants.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for notebook in NOTEBOOKS}
    reports = {notebook: run.communicate()[0] for notebook, run in runs.items()}
    for notebook, run in runs.items():
        assert run.returncode == 0, f"autograder.authoring.mutants {notebook} failed:\n{reports[notebook]}"
    return {notebook: json.loads((out / f"{notebook}.json").read_text())[notebook] for notebook in NOTEBOOKS}


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_exercise_kills_its_mutants(scores, notebook):
    low = {exercise: counts for exercise, counts in scores[notebook].items()
           if counts["killed"] < FLOOR * counts["counted"]}
    survivors = "\n".join(f"{exercise}: {counts['killed']}/{counts['counted']} killed; survivors:\n" + "\n".join(
        counts["survivors"]) for exercise, counts in low.items())
    assert not low, \
        f"mutation score below {FLOOR:.0%} (review with python -m autograder.authoring.mutants {notebook}):\n{survivors}"


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_exercise_has_mutants_and_tests(scores, notebook):
    cells = mutants.code_cells(mutants.ROOT / "solutions" / f"{notebook}.md")
    solutions = [cell.metadata["grade_id"] for cell in cells if cell.metadata.get("role") == "solution"]
    assert sorted(scores[notebook]) == sorted(solutions), "every solution cell is followed by its test cells"
    assert all(counts["counted"] > 0 for counts in scores[notebook].values())


def test_mutants_change_only_the_solution_and_compile():
    source = "def f(x, y):\n    scale = 2\n    ### BEGIN SOLUTION\n    return (x - y).abs().sum(dim=-1) * scale\n" \
             "    ### END SOLUTION\n"
    found = mutants.mutants_of("f", source)
    diffs = [mutant.diff for mutant in found]
    assert all("scale = 2" not in diff for diff in diffs), "code outside the solution markers is never mutated"
    for expected in ("(x + y)", ".mean(dim=-1)", "dim=0", "(x - y).sum(dim=-1)", "+    pass"):
        assert any(expected in diff for diff in diffs), f"no mutant with {expected!r}"
    for mutant in found:
        compile(mutant.source, "mutant", "exec")


def solution_mutants(code, operator):
    """The mutants that `operator` makes of `code`, a solution (its source, the markers dropped)."""
    source = f"{mutants.notebooks.SOLUTION_MARKERS[0]}\n{code}\n{mutants.notebooks.SOLUTION_MARKERS[1]}\n"
    found = [mutant for mutant in mutants.mutants_of("f", source) if mutant.operator == operator]
    for mutant in found:
        compile(mutant.source, "mutant", "exec")
    return {mutant.source for mutant in found}


# (operator, solution code, a mutant it must make of it, code of the same kind it must leave alone)
CONTRACT_MISTAKES = [
    ("dimension argument dropped", "y = x.squeeze(1)", "y = x.squeeze()", "y = x.squeeze(dim=1)"),
    ("dimension argument dropped", "y = torch.squeeze(x, 1)", "y = torch.squeeze(x)", "y = torch.squeeze(x)"),
    ("dimension argument dropped", "y = x.flatten(1)", "y = x.flatten()", "y = self.squeeze(1)"),
    ("dimension counted from the other end", "p = F.softmax(s, dim=-1)", "p = F.softmax(s, dim=1)",
     "z = torch.cat([x, y], dim=-1)"),
    ("dimension counted from the other end", "p = s.sum(dim=1)", "p = s.sum(dim=-1)", "p = s.sum(dim=0)"),
    ("numerically naive form", "y = F.logsigmoid(x)", "y = torch.log(torch.sigmoid(x))", "y = torch.sigmoid(x)"),
    ("numerically naive form", "y = F.softplus(x)", "y = torch.log(1 + torch.exp(x))", "y = F.softplus(x, beta=2)"),
    ("numerically naive form", "y = x.log_softmax(dim=1)", "y = torch.log(torch.softmax(x, dim=1))",
     "y = self.log_softmax(x)"),
    ("numerically naive form", "y = torch.logsumexp(x, -1)", "y = torch.log(torch.sum(torch.exp(x), -1))",
     "y = torch.log(x)"),
    ("numerically naive form", "p = F.softmax(s, dim=-1)",
     "p = (torch.exp(s) / torch.sum(torch.exp(s), dim=-1, keepdim=True))", "p = F.softmax(f(s), dim=-1)"),
    ("numerically naive form", "l = F.binary_cross_entropy_with_logits(y, t, reduction='sum')",
     "l = F.binary_cross_entropy(torch.sigmoid(y), t, reduction='sum')", "l = F.binary_cross_entropy(y, t)"),
    ("numerically naive form", "l = F.cross_entropy(y, t)", "l = F.nll_loss(torch.log(torch.softmax(y, dim=1)), t)",
     "l = F.nll_loss(y, t)"),
    ("device and dtype of the input lost", "e = torch.randn_like(std)", "e = torch.randn(std.shape)",
     "e = torch.randn(3, device=d)"),
    ("device and dtype of the input lost", "o = torch.full_like(x, 2.0)", "o = torch.full(x.shape, 2.0)",
     "o = x.new_ones(3)"),
    ("training mode assumed", "y = F.dropout(x, 0.1, training=self.training)", "y = F.dropout(x, 0.1, training=True)",
     "self.training = False"),
    ("dropout on in evaluation", "y = self.attn_dropout(w)", "y = torch.nn.functional.dropout(w, self.attn_dropout.p)",
     "y = self.attn(w)"),
    ("gradient cut (.detach() added)", "l = F.mse_loss(y, x)", "l = F.mse_loss(y.detach(), x)", "l = F.relu(y)"),
    ("no_grad removed", "with torch.no_grad():\n    y = f(x)", "if True:\n    y = f(x)",
     "with open(p) as f:\n    y = f(x)"),
    ("no_grad removed", "@torch.no_grad()\ndef f(x):\n    return x", "def f(x):\n    return x",
     "@staticmethod\ndef f(x):\n    return x"),
    ("only the first parameter or group", "for g in optimizer.param_groups:\n    g['lr'] = lr",
     "for g in list(optimizer.param_groups)[:1]:\n    g['lr'] = lr", "optimizer.param_groups[0]['lr'] = lr"),
    ("only the first parameter or group", "clip_grad_norm_(model.parameters(), 1.0)",
     "clip_grad_norm_(list(model.parameters())[:1], 1.0)", "device = next(model.parameters()).device"),
    ("only the first parameter or group", "o = torch.optim.AdamW(groups, lr=lr)",
     "o = torch.optim.AdamW(list(groups)[:1], lr=lr)", "s = torch.optim.lr_scheduler.StepLR(o, 1)"),
    ("kept dimension indexed away", "k = v[:, [-1]]", "k = v[:, -1]", "k = v[:, -1]"),
    ("batch dimension indexed", "y = x[:, -1, :]", "y = x[-1, :]", "y = x[1:, -1]"),
]


@pytest.mark.parametrize("operator, code, expected, unrelated", CONTRACT_MISTAKES,
                         ids=[f"{case[0]}: {case[1]}" for case in CONTRACT_MISTAKES])
def test_mistakes_right_only_on_usual_inputs_are_made_where_their_pattern_is(operator, code, expected, unrelated):
    assert expected in solution_mutants(code, operator), f"{operator!r} misses {code!r} -> {expected!r}"
    assert not solution_mutants(unrelated, operator), f"{operator!r} changes {unrelated!r}"


def test_equivalent_mutants_are_reviewed():
    for notebook in NOTEBOOKS:
        for (exercise, diff), reason in mutants.equivalents(notebook).items():
            assert reason and diff.startswith("-"), f"{notebook}.equivalent.yml: {exercise} needs a diff and a reason"
