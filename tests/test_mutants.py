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


def test_equivalent_mutants_are_reviewed():
    for notebook in NOTEBOOKS:
        for (exercise, diff), reason in mutants.equivalents(notebook).items():
            assert reason and diff.startswith("-"), f"{notebook}.equivalent.yml: {exercise} needs a diff and a reason"
