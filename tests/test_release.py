"""The generated files: up to date, marked as generated; the release stands alone and gives nothing away."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import nbformat
import pytest

from autograder import book as book_pages, notebooks, release
from autograder.course import ROOT, SOLUTIONS, source_notebooks

NOTEBOOKS = [source.stem for source in source_notebooks()]
STUB = "# PUT YOUR CODE HERE  #\n"
SECRET_REGION = re.compile(r"### BEGIN (SOLUTION|HIDDEN TESTS)\n(.*?)### END \1", flags=re.DOTALL)
HIDDEN_TESTS = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", flags=re.DOTALL)
MENTION_OF_SOLUTIONS = re.compile(r"\bsolutions[./]\w")  # solutions.vae, solutions/part1_vae.md
SHORTEST_SECRET_LINE = 12  # shorter lines (")", "return idx") also occur in honest code


def nbgrader_sources():
    return [notebooks.to_nbgrader_source(notebooks.read_source(source)) for source in source_notebooks()]


def secret_lines():
    """The lines (stripped) of every solution region, hidden test and model answer of the source notebooks
    that occur nowhere else in them or in the shared helpers (a line the release shows anyway, such as `)`, is
    no secret)."""
    secret = set()
    public = {line.strip() for line in (SOLUTIONS / "course_utils.py").read_text(encoding="utf-8").splitlines()}
    for source in nbgrader_sources():
        for cell in source.cells:
            if cell.cell_type == "markdown" and notebooks.is_solution_cell(cell):
                secret.update(line.strip() for line in cell.source.splitlines())
                continue
            for region in SECRET_REGION.finditer(cell.source):
                secret.update(line.strip() for line in region.group(2).splitlines())
            public.update(line.strip() for line in SECRET_REGION.sub("", cell.source).splitlines())
    return {line for line in secret - public if len(line) >= SHORTEST_SECRET_LINE}


def what_students_and_readers_receive():
    """{name: text} of every file of assignment/ (notebooks: their cells and metadata) and every book page
    without its book-only cells (those show the reference's results, on purpose)."""
    received = {}
    for path in sorted((ROOT / "assignment").iterdir()):
        if path.suffix == ".ipynb":
            received[str(path.relative_to(ROOT))] = notebook_text(notebooks.read(path))
        elif path.is_file():
            received[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
    for name in NOTEBOOKS:
        page = notebooks.drop_tagged(notebooks.read(ROOT / "book" / f"{name}.ipynb"), "book-only")
        received[f"book/{name}.ipynb (without book-only cells)"] = notebook_text(page)
    return received


def notebook_text(notebook):
    return "\n".join([str(notebook.metadata)] + [cell.source for cell in notebook.cells])


def test_every_generated_file_is_up_to_date(fresh_build):
    stale = release.stale_files(fresh_build.written, fresh_build.out)
    assert not stale, f"run `make release`: these committed files differ from what the sources make: {stale}"


def test_generated_files_say_so(fresh_build):
    """In their first lines, or for notebooks in their metadata (students and readers see a header for them)."""
    for path in fresh_build.written:
        committed = ROOT / path.relative_to(fresh_build.out)
        if committed.suffix == ".ipynb":
            assert notebooks.read(committed).metadata["course"]["generated_by"] == "make release", committed
        else:
            text = committed.read_text(encoding="utf-8")
            notice = text[-200:] if committed.suffix == ".md" else text[:400]
            assert "generated" in notice.lower() and "make release" in notice, committed


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_release_notebooks_and_book_pages_open_with_a_header_for_their_readers(name):
    for folder in ("assignment", "book"):
        header = notebooks.read(ROOT / folder / f"{name}.ipynb").cells[0].source
        assert "make release" not in header and "generated" not in header.lower()
        assert "README.md" in header and "laptop CPU" in header and "minutes" in header


def test_the_release_stands_alone_with_a_readme_and_cpu_requirements(fresh_build):
    assignment = fresh_build.out / "assignment"
    assert {path.name for path in assignment.iterdir()} == {
        "README.md", "requirements.txt", "course_utils.py", *(f"{name}.ipynb" for name in NOTEBOOKS)}
    readme = (assignment / "README.md").read_text(encoding="utf-8")
    assert "pip install -r requirements.txt" in readme and all(f"{name}.ipynb" in readme for name in NOTEBOOKS)
    lines = (assignment / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    assert set(pinned) <= set(lines) and "torch==2.14.1" in lines and "torchvision==0.29.1" in lines
    assert any("GPU" in line and "replace `cpu`" in line for line in lines if line.startswith("#"))


def test_the_release_zip_holds_the_release_folder_and_nothing_else(fresh_build, tmp_path):
    (fresh_build.out / "assignment" / "scratch.txt").write_text("a student's data")  # not generated: left out
    zipped = release.build_zip(fresh_build.written, tmp_path / "assignment.zip")
    (fresh_build.out / "assignment" / "scratch.txt").unlink()
    with zipfile.ZipFile(zipped) as archive:
        names = set(archive.namelist())
        assert names == ({f"assignment/{path.name}" for path in (fresh_build.out / "assignment").iterdir()}
                         | {f"assignment/reference/{path.name}" for path in release.reference_weights()})
        assert {"vae_z2.pt", "ae_z2.pt", "aae_z2.pt"} <= {path.name for path in release.reference_weights()}
        assert archive.read("assignment/requirements.txt") == (
            fresh_build.out / "assignment" / "requirements.txt").read_bytes()


def test_nothing_students_or_readers_receive_names_the_solutions():
    mentions = [f"{name}: ...{text[max(0, match.start() - 40):match.end() + 20]}..."
                for name, text in what_students_and_readers_receive().items()
                for match in MENTION_OF_SOLUTIONS.finditer(text)]
    assert not mentions, "the release and the book must not send students to the solutions:\n" + "\n".join(mentions)


def test_no_solution_hidden_test_or_model_answer_line_reaches_students_or_readers():
    secrets = secret_lines()
    assert len(secrets) > 500, "the source notebooks' secrets were not found: is the test still reading them?"
    leaks = [f"{name}: {line}" for name, text in what_students_and_readers_receive().items()
             for line in {line.strip() for line in text.splitlines()} & secrets]
    assert not leaks, "secret lines in what students or readers receive:\n" + "\n".join(sorted(leaks))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_hidden_assert_says_what_it_checked(name):
    """The feedback shows a failing hidden test by its message alone (autograder/lms/feedback.py)."""
    source = notebooks.read_source(ROOT / "solutions" / f"{name}.md")
    bare = [f"{notebooks.grade_id(cell)}: {ast.unparse(node)[:90]}"
            for cell in source.cells if cell.metadata.get("role") == "tests"
            for hidden in HIDDEN_TESTS.findall(cell.source)
            for node in ast.walk(ast.parse(textwrap.dedent(hidden)))
            if isinstance(node, ast.Assert) and node.msg is None]
    assert not bare, "hidden asserts need a message saying what was checked:\n" + "\n".join(bare)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_release_holds_no_solution_hidden_test_or_model_answer(name):
    source = notebooks.to_nbgrader_source(notebooks.read_source(ROOT / "solutions" / f"{name}.md"))
    released = notebooks.cells_by_grade_id(notebooks.read(ROOT / "assignment" / f"{name}.ipynb"))
    text = (ROOT / "assignment" / f"{name}.ipynb").read_text(encoding="utf-8")
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text
    for grade_id, cell in notebooks.cells_by_grade_id(source).items():
        given = released[grade_id].source
        if notebooks.is_test_cell(cell):
            shown = re.sub(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", "", cell.source, flags=re.DOTALL)
            assert given.split() == shown.split(), f"{grade_id} must show exactly its visible tests"
        elif not notebooks.is_solution_cell(cell):  # a read-only cell of test helpers, shown as it is
            assert given == cell.source, f"{grade_id} must be released as it is"
        elif cell.cell_type == "code":
            assert STUB in given + "\n", f"{grade_id} has no PUT YOUR CODE HERE stub"
        else:
            assert given == "YOUR ANSWER HERE", f"{grade_id} shows its model answer"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_test_cell_hides_at_least_as_many_checks_as_it_shows(name):
    source = notebooks.read_source(ROOT / "solutions" / f"{name}.md")
    for cell in source.cells:
        if cell.metadata.get("role") == "tests":
            visible, _, hidden = cell.source.partition("### BEGIN HIDDEN TESTS")
            count = lambda code: len(re.findall(r"\bassert", code))  # noqa: E731
            assert count(visible) >= 1, f"{notebooks.grade_id(cell)} shows no test"
            assert count(hidden) >= count(visible), f"{notebooks.grade_id(cell)}: fewer hidden checks than visible ones"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_kernel_gets_each_hidden_tests_probe_and_never_its_judge(fresh_build, name):
    """Every test cell has hidden tests, written as a probe and a judge; the judges go to <course>/judges only:
    no line of a judge is in the grader's nbgrader source or release (what a student's kernel runs or gets)."""
    source = notebooks.read_source(ROOT / "solutions" / f"{name}.md")
    regions = {notebooks.grade_id(cell): notebooks.hidden_tests(cell.source, notebooks.grade_id(cell))
               for cell in source.cells if cell.metadata.get("role") == "tests"}
    assert None not in regions.values(), "a test cell without hidden tests"
    judges = json.loads((fresh_build.course / "judges" / f"{name}.json").read_text(encoding="utf-8"))
    assert judges["tests"] == regions and judges["module"] == release.solution_module(Path(f"{name}.md"))
    folders = [fresh_build.course / folder / name for folder in ("source", "release")]
    texts = [cell.source for folder in folders for path in folder.glob("*.ipynb") for cell in notebooks.read(path).cells]
    texts += [path.read_text(encoding="utf-8") for folder in folders for path in folder.glob("*.py")]
    kernel = {line.strip() for text in texts for line in text.splitlines()}
    released = {line.strip() for path in folders[1].glob("*.ipynb") for cell in notebooks.read(path).cells
                for line in cell.source.splitlines()}
    for grade_id, region in regions.items():
        lines = region.splitlines()
        judge = next(node for node in ast.parse(region).body if getattr(node, "name", "") == notebooks.JUDGE)
        asserts = {lines[node.lineno - 1].strip() for node in ast.walk(judge) if isinstance(node, ast.Assert)}
        assert asserts - released, f"{grade_id}: its judge asserts nothing of its own"
        assert (asserts - released) & kernel == set(), f"{grade_id}: the kernel gets its judge's asserts"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_release_keeps_book_only_cells_out_and_the_book_keeps_them(name):
    source = notebooks.read_source(ROOT / "solutions" / f"{name}.md")
    book_only = [cell.source for cell in source.cells if notebooks.has_tag(cell, "book-only")]
    released = notebooks.read(ROOT / "assignment" / f"{name}.ipynb")
    book = notebooks.read(ROOT / "book" / f"{name}.ipynb")
    for text in book_only:
        assert not any(cell.source == text for cell in released.cells)
        assert any(cell.source == book_pages.fill_placeholders(text, book_pages.RESULTS / name) for cell in book.cells)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_course_releases_the_students_notebook(fresh_build, name):
    """What nbgrader releases from the course folder (to an exchange: make exchange) is assignment/'s notebook,
    without the book-only cells, with the README.md its header points to."""
    for file in (f"{name}.ipynb", "README.md", "course_utils.py"):
        released = fresh_build.course / "release" / name / file
        assert released.read_bytes() == (fresh_build.out / "assignment" / file).read_bytes(), file


def test_the_book_downloads_are_written_by_the_release_and_kept_out_of_git(fresh_build, tmp_path):
    zipped = release.build_zip(fresh_build.written, tmp_path / "assignment.zip")
    written = release.write_downloads(fresh_build.written, zipped, tmp_path / "downloads")
    assert [path.name for path in written] == book_pages.download_names(NOTEBOOKS)
    assert (tmp_path / "downloads" / ".gitignore").read_text().splitlines()[-1] == "*"
    assert (tmp_path / "downloads" / "assignment.zip").read_bytes() == zipped.read_bytes()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_book_pages_link_to_the_downloads_from_their_header(name):
    header = notebooks.read(ROOT / "book" / f"{name}.ipynb").cells[0].source
    for download in ("assignment.zip", f"{name}.ipynb", "course_utils.py"):
        assert f"(path:downloads/{download})" in header, download


def test_nbgraders_own_autograde_in_the_course_folder_refuses_before_student_code_runs(fresh_build, tmp_path):
    """`nbgrader autograde` in the course folder (or the formgrader's button) would run student code unsandboxed:
    it stops, naming `make grade`, and the submission's code never ran."""
    course = tmp_path / "course"
    shutil.copytree(fresh_build.course, course)
    notebook = "part1_vae"
    submission = nbformat.read(course / "release" / notebook / f"{notebook}.ipynb", as_version=4)
    ran = tmp_path / "student code ran"
    first = next(cell for cell in submission.cells if cell.cell_type == "code")
    first.source = f"open({str(ran)!r}, 'w').close()\n" + first.source
    submitted = course / "submitted" / "alice" / notebook
    submitted.mkdir(parents=True)
    nbformat.write(submission, submitted / f"{notebook}.ipynb")
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"  # nbgrader runs alembic
    autograde = subprocess.run([sys.executable, "-m", "nbgrader", "autograde", notebook, "--student", "alice",
                                "--create"], cwd=course, capture_output=True, text=True, env={**os.environ, "PATH": path})
    assert autograde.returncode != 0 and "make grade" in autograde.stdout + autograde.stderr
    assert not ran.exists()
