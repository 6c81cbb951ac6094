"""The hostile corpus (tests/hostile/part1_vae.yml) graded in ONE sandboxed batch next to two honest control
students: each submission gets its expected status and reason, the controls score exactly as in a clean run,
the instructor's and the repository's files are byte-identical afterwards, no output shows a solution or a
hidden test, no connection reaches the grader's loopback, and no process survives. Small limits keep it quick."""
import ast
import copy
import hashlib
import json
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import nbformat
import psutil
import pytest
import torch
import yaml

from autograder import examples, notebooks
from autograder.grading import coordinator, records, worker
from autograder.course import ASSIGNMENT_FOLDERS, ROOT

NOTEBOOK = "part1_vae"
CORPUS = Path(__file__).parent / "hostile" / f"{NOTEBOOK}.yml"
# 2 GiB: a kernel that prints 200 MB holds a few copies of it while it sends them (killed for memory at 1 GiB).
LIMITS = ["--jobs", "2", "--memory-gib", "2", "--cell-seconds", "20", "--notebook-seconds", "150",
          "--feedback-seconds", "40"]
CONTROLS = {"zz_control_reference": "reference", "zz_control_kld_mean": "kld_mean"}  # graded last
NESTED_MARKDOWN = "[" * 20000 + "x" + "]" * 20000
MARKER = "dgm-hostile"  # in the command line of processes that must not outlive grading
# In the grader's environment during the hostile batch: no file the batch writes may show the value.
GRADER_SECRETS = ("NVIDIA_API_KEY", "AWS_SECRET_ACCESS_KEY", "DGM_UPLOAD_TOKEN")
SECRET = "dgm-secret-" + uuid.uuid4().hex
STDERR_READ = 2**20  # of a worker's stderr, read back: more is a flood that reached it
SMALL_FILE_BYTES = 2 * 2**20  # an autograded notebook, feedback page or log of a flooding submission


def corpus():
    return yaml.safe_load(CORPUS.read_text(encoding="utf-8"))


def index_of(notebook, grade_id):
    return next(i for i, cell in enumerate(notebook.cells) if cell.metadata.get("nbgrader", {}).get("grade_id")
                == grade_id)


def apply(notebook, edit, port):
    """One edit of tests/hostile/README.md."""
    code = lambda text: text.replace("{port}", str(port))  # noqa: E731
    if "prepend" in edit:
        cell = notebook.cells[index_of(notebook, edit["cell"])]
        cell.source = code(edit["prepend"]) + "\n" + cell.source
    elif "source" in edit:
        notebook.cells[index_of(notebook, edit["cell"])].source = edit["source"].replace("{nested_markdown}",
                                                                                          NESTED_MARKDOWN)
    elif "add_cell" in edit:
        notebook.cells.insert(index_of(notebook, edit["after"]) + 1, nbformat.v4.new_code_cell(code(edit["add_cell"])))
    elif "copy_cell" in edit:
        cell = copy.deepcopy(notebook.cells[index_of(notebook, edit["copy_cell"])])
        cell.id = f"copy-{cell.id}"
        if not edit["keep_metadata"]:
            cell.metadata = {}
        notebook.cells.insert(index_of(notebook, edit["after"]) + 1, cell)
    elif "delete_cell" in edit:
        del notebook.cells[index_of(notebook, edit["delete_cell"])]
    elif "cell_metadata" in edit:
        notebook.cells[index_of(notebook, edit["cell_metadata"])].metadata.nbgrader.update(edit["nbgrader"])
    elif "metadata" in edit:
        notebook.metadata.update(edit["metadata"])
    else:
        raise ValueError(f"{CORPUS}: unknown edit {edit}")


def write_submission(course, entry, port):
    release = notebooks.read(course / "release" / NOTEBOOK / f"{NOTEBOOK}.ipynb")
    source = notebooks.read(course / "source" / NOTEBOOK / f"{NOTEBOOK}.ipynb")
    folder = course / "submitted" / entry["student"] / NOTEBOOK
    folder.mkdir(parents=True)
    path = folder / entry.get("filename", f"{NOTEBOOK}.ipynb")
    if "symlink" in entry:
        path.symlink_to(course / entry["symlink"] / NOTEBOOK / f"{NOTEBOOK}.ipynb")
    elif "file" in entry:
        path.write_text(entry["file"], encoding="utf-8")
    else:
        start = examples.reference_notebook(release, source) if entry.get("start") == "solution" else release
        notebook = copy.deepcopy(start)
        for edit in entry.get("edits", []):
            apply(notebook, edit, port)
        notebooks.write(notebook, path)


def write_controls(course):
    release = notebooks.read(course / "release" / NOTEBOOK / f"{NOTEBOOK}.ipynb")
    source = notebooks.read(course / "source" / NOTEBOOK / f"{NOTEBOOK}.ipynb")
    by_name = {example.student: example for example in examples.load_examples(NOTEBOOK)}
    for student, example in CONTROLS.items():
        notebooks.write(examples.submission(by_name[example], release, source),
                        course / "submitted" / student / NOTEBOOK / f"{NOTEBOOK}.ipynb")


def new_course(released, folder):
    """A course folder with the assignment of the fresh release build (source, release, gradebook), no student."""
    for name in ASSIGNMENT_FOLDERS:
        shutil.copytree(released / name, folder / name)
    shutil.copy(released / "gradebook.db", folder / "gradebook.db")
    return folder


def tree_hashes(*folders):
    """{path: sha256} of every file below the folders (links not followed)."""
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in folders for path in sorted(Path(folder).rglob("*")) if path.is_file()
            and not path.is_symlink() and "__pycache__" not in path.parts}


def per_test_scores(course):
    """{(student, test grade_id): (score, manual score)} in the course's gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(records.gradebook_url(course)) as gradebook:
        return {(submission.student.id, g.name): (g.score, g.manual_score)
                for submission in gradebook.notebook_submissions(NOTEBOOK, NOTEBOOK)
                for g in submission.grades if g.cell.cell_type == "code"}


class Listener:
    """A TCP listener on the grader's 127.0.0.1 that records every connection."""

    def __init__(self):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.connections = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                self.connections.append(self.socket.accept())
            except OSError:
                return


@pytest.fixture(scope="module")
def graded(fresh_build, tmp_path_factory):
    """The clean run of the controls, then the hostile batch; what a test needs to check them."""
    clean = new_course(fresh_build.course, tmp_path_factory.mktemp("clean") / "course")
    write_controls(clean)
    coordinator.main(["--course", str(clean), NOTEBOOK, *LIMITS])

    listener = Listener()
    course = new_course(fresh_build.course, tmp_path_factory.mktemp("hostile") / "course")
    for entry in corpus():
        write_submission(course, entry, listener.port)
    write_controls(course)
    protected = [course / "source", course / "release", course / "submitted", ROOT / "solutions",
                 ROOT / "autograder", ROOT / "assignment", Path(torch.__file__).parent / "__init__.py"]
    before = tree_hashes(*protected)
    started = time.perf_counter()
    worker_stderr = []  # what each grading worker's stderr (a file on the host's disk) held when it closed
    real_close = worker.Worker.close

    def close(self):
        self.errors.seek(0)
        worker_stderr.append(self.errors.read(STDERR_READ))
        real_close(self)

    with pytest.MonkeyPatch.context() as patch:
        for name in GRADER_SECRETS:
            patch.setenv(name, SECRET)
        patch.setattr(worker.Worker, "close", close)
        coordinator.main(["--course", str(course), NOTEBOOK, *LIMITS])
    print(f"hostile batch: {time.perf_counter() - started:.0f} s")
    listener.socket.close()
    return SimpleNamespace(course=course, clean=clean, listener=listener, protected=protected, before=before,
                           report=records.read_report(course), worker_stderr=worker_stderr)


@pytest.mark.parametrize("entry", corpus(), ids=lambda entry: entry["student"])
def test_each_hostile_submission_gets_its_status_and_reason(graded, entry):
    row = graded.report[(entry["student"], NOTEBOOK)]
    assert (row["status"], entry.get("reason", "") in row["reason"]) == (entry["expect"], True), row["reason"]
    if row["status"] != "ok":
        assert row["score"] == ""  # withheld
    if entry.get("full_marks"):
        assert row["score"] == row["max"], "the read-only cells are restored from the source"
    assert len(row["reason"]) < 2000


def test_the_controls_score_exactly_as_in_a_clean_run(graded):
    hostile, clean = per_test_scores(graded.course), per_test_scores(graded.clean)
    for student in CONTROLS:
        assert {k: v for k, v in hostile.items() if k[0] == student} == {k: v for k, v in clean.items()
                                                                          if k[0] == student}
        assert graded.report[(student, NOTEBOOK)]["status"] == "ok"
        assert (graded.course / "feedback" / student / NOTEBOOK / f"{NOTEBOOK}.html").is_file()


def test_instructor_and_repository_files_are_unchanged(graded):
    assert tree_hashes(*graded.protected) == graded.before
    records.check_gradebook(graded.course)
    # no manual score but the 0 that withholds a flagged student's autograded score
    assert {manual for _, manual in per_test_scores(graded.course).values()} <= {None, 0}


@pytest.mark.parametrize("entry", [entry for entry in corpus() if entry.get("fails")], ids=lambda entry: entry["student"])
def test_each_hostile_submission_fails_the_tests_it_cheats_on(graded, entry):
    """A student who reads what the kernel holds, sends no observations or forges them scores 0 on the tests it
    cheats on (nbgrader's autograded score, before any flag withholds it)."""
    from nbgrader.api import Gradebook

    with Gradebook(records.gradebook_url(graded.course)) as gradebook:
        scores = {grade.name: grade.auto_score for grade in
                  gradebook.find_submission_notebook(NOTEBOOK, NOTEBOOK, entry["student"]).grades}
    assert {test: scores[test] for test in entry["fails"]} == {test: 0 for test in entry["fails"]}


def secret_lines(course):
    """(the solutions' lines, the judges' lines) of the course's assignment: the source's lines outside its hidden
    tests that the release lacks, and the lines of the asserts in <course>/judges that no kernel ran (expected
    answers, tolerances, comparisons)."""
    source = notebooks.read(course / "source" / NOTEBOOK / f"{NOTEBOOK}.ipynb")
    release = notebooks.read(course / "release" / NOTEBOOK / f"{NOTEBOOK}.ipynb")
    judges = json.loads((course / "judges" / f"{NOTEBOOK}.json").read_text(encoding="utf-8"))
    lines = lambda texts: {line.strip() for text in texts for line in text.splitlines() if len(line.strip()) > 25}  # noqa: E731
    released = lines(cell.source for cell in release.cells)
    solutions = lines(notebooks.without_hidden_tests(cell.source) for cell in source.cells) - released
    asserts = {code.splitlines()[node.lineno - 1].strip() for code in [*judges["preamble"], *judges["tests"].values()]
               for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Assert)}
    return solutions, asserts - released - lines(cell.source for cell in source.cells)


def test_no_output_shows_a_solution_or_a_hidden_tests_answer(graded):
    """Nothing a submission prints shows a line of the judges (whatever it reads in its kernel: history, stack,
    callers' frames), nor, starting from the release, a line of the solutions."""
    solutions, judges = secret_lines(graded.course)
    assert len(solutions) > 20 and len(judges) > 20
    for entry in corpus():
        path = graded.course / "autograded" / entry["student"] / NOTEBOOK / f"{NOTEBOOK}.ipynb"
        if not path.is_file():
            continue
        outputs = nbformat.writes(nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_code_cell(outputs=cell.get("outputs", [])) for cell in notebooks.read(path).cells]))
        secrets = judges | (set() if entry.get("start") == "solution" else solutions)
        assert [secret for secret in secrets if secret in outputs] == [], entry["student"]
        if entry["student"] == "print_history":  # it did print the hidden tests the kernel ran: their probes
            assert "course_utils.send_to_judge(probe)" in outputs


def test_a_huge_output_makes_no_huge_file(graded):
    for folder in ("autograded", "feedback"):
        for path in (graded.course / folder / "huge_output").rglob("*"):
            assert path.stat().st_size < 2 * 2**20


@pytest.mark.parametrize("entry", [entry for entry in corpus() if entry.get("small_files")],
                         ids=lambda entry: entry["student"])
def test_a_flood_of_outputs_makes_no_big_file(graded, entry):
    """Many small outputs, big nested data and metadata, writes to file descriptors: every file grading writes of
    the submission stays small (the notebook's outputs are capped in total, not only each)."""
    files = [path for folder in ("autograded", "feedback", "logs") for path in
             (graded.course / folder / entry["student"]).rglob("*") if path.is_file()]
    assert len(files) >= 2 and {path.name: path.stat().st_size for path in files if
                                path.stat().st_size > SMALL_FILE_BYTES} == {}


def test_nothing_a_kernel_writes_reaches_the_graders_stderr(graded):
    """Student code writing to its file descriptors 1 and 2 or to /proc/1/fd/* reaches no stream of the grader's
    (each worker's stderr is a file on the host's disk)."""
    assert graded.worker_stderr and all(len(errors) < STDERR_READ and b"flood" not in errors
                                        for errors in graded.worker_stderr)


def test_no_file_shows_the_graders_secrets(graded):
    """Tokens in the grader's environment (NVIDIA_API_KEY...) reach no kernel: no output, feedback page or log
    shows them, whatever a submission prints of its environment and of every process's it can see."""
    assert "environ:" in (graded.course / "autograded" / "grader_secrets" / NOTEBOOK / f"{NOTEBOOK}.ipynb").read_text()
    leaks = [str(path) for folder in ("autograded", "feedback", "logs") for path in (graded.course / folder).rglob("*")
             if path.is_file() and SECRET.encode() in path.read_bytes()]
    assert leaks == []


def test_nothing_reached_the_loopback_and_no_process_survives(graded):
    assert graded.listener.connections == []
    time.sleep(1)
    survivors = [process.info for process in psutil.process_iter(["pid", "cmdline"])
                 if MARKER in " ".join(process.info["cmdline"] or [])]
    assert survivors == []
    assert psutil.Process().children(recursive=True) == []
