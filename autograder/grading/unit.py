"""Grade one student's notebook: the unit of work of the course's autograder. Plain data in, plain data out, so
that the coordinator (grade.py) runs it on a local process pool and a cluster can ship it to other machines.

    job = {"assignment": "part1_vae", "student": "alice",
           "source": {relative_path: bytes},      # the nbgrader source folder of the assignment
           "release": {relative_path: bytes},     # the release folder (course_utils.py ...)
           "submission": {relative_path: bytes},  # the student's submitted folder
           "limits": {...},                       # Limits fields below; absent ones take their defaults
           "sandbox": True,                       # False only for --unsafe-no-sandbox
           "hidden": [path, ...]}                 # optional: more folders the kernel must not see (the course)
    result = {"assignment", "student", "status": "ok" | "flagged" | "failed", "reason": str,
              "scores": {test_grade_id: [score, max_score]}, "autograded": bytes or None (canaries removed),
              "log": str, "submission_hash": str, "release_hash": str, "seconds": float}

How: `grade_batch` starts one trusted worker process (`python -m autograder.grading.unit`) that imports nbgrader once and
autogrades the jobs one after the other, in-process, each in a private temporary nbgrader course built from the
job's bytes (fresh source and release files, its own gradebook), so that nothing one student's kernel does can
reach the next student. Before running, the submission is checked (valid notebook, every test cell exactly once)
and tamper canaries are added; the kernel runs sandboxed (autograder.sandbox). The parent enforces each notebook's
wall-time limit: past it, it kills the worker with its kernels and starts a fresh worker for the next job.
"""
import atexit
import dataclasses
import hashlib
import json
import os
import pickle
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from ..course import AUTOGRADER, ROOT

SUBMISSION_SIZE_LIMIT = 50 * 2**20  # bytes of one submitted notebook
WORKER_START_SECONDS = 600  # for a worker process to import nbgrader, on a machine however loaded


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one student may use. The kernel's limits are the sandbox's (memory, processes, CPU time)."""
    memory_bytes: int = 4 * 2**30
    processes: int = 256
    cpu_seconds: int = 1200
    cell_seconds: int = 60        # wall time of one cell (nbgrader's Execute.timeout)
    notebook_seconds: int = 600   # wall time of the whole notebook, start-up included
    output_characters: int = 100_000  # kept of each output

    @classmethod
    def of(cls, job):
        return cls(**job.get("limits", {}))


def content_hash(files):
    """sha256 of a {relative_path: bytes} folder (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path}\0{len(files[path])}\0".encode())
        digest.update(files[path])
    return digest.hexdigest()


def release_hash(job):
    return content_hash({**{f"source/{p}": b for p, b in job["source"].items()},
                         **{f"release/{p}": b for p, b in job["release"].items()}})


def new_result(job, status="failed", reason="", **values):
    return {"assignment": job["assignment"], "student": job["student"], "status": status, "reason": reason,
            "scores": {}, "autograded": None, "log": "", "submission_hash": content_hash(job["submission"]),
            "release_hash": release_hash(job), "seconds": 0.0, **values}


# ---------------------------------------------------------------------------------------------------------------
# Checks of the submitted notebook, before anything runs

class Refused(Exception):
    """The submission cannot be graded; the message says why and what to do."""


def test_cells(notebook):
    """{grade_id: cell} of the test cells (graded, not a solution) of an nbgrader notebook."""
    return {cell.metadata.nbgrader.grade_id: cell for cell in notebook.cells
            if cell.metadata.get("nbgrader", {}).get("grade") and not cell.metadata.nbgrader.get("solution")}


def read_submission(job):
    """The submitted notebook as a NotebookNode, or Refused."""
    import nbformat

    name = f"{job['assignment']}.ipynb"
    data = job["submission"].get(name)
    if data is None:
        raise Refused(f"no {name} in the submission (found: {sorted(job['submission']) or 'nothing'}); "
                      f"ask the student to submit it under that name")
    if len(data) > SUBMISSION_SIZE_LIMIT:
        raise Refused(f"{name} is {len(data) / 2**20:.0f} MiB, over the {SUBMISSION_SIZE_LIMIT // 2**20} MiB "
                      f"limit; ask the student to clear the outputs and resubmit")
    try:
        json.loads(data)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise Refused(f"{name} is not valid JSON ({str(error)[:200]}); ask the student to resubmit the notebook "
                      f"file saved by Jupyter") from None
    try:
        notebook = nbformat.reads(data.decode("utf-8"), as_version=4)
    except Exception as error:
        raise Refused(f"{name} is not a notebook ({type(error).__name__}: {str(error)[:200]}); "
                      f"ask the student to resubmit it") from None
    try:
        nbformat.validate(notebook)
    except nbformat.ValidationError as error:
        raise Refused(f"{name} is not a valid notebook ({error.message[:200]}); ask the student to resubmit "
                      f"it") from None
    return notebook


def cell_problems(notebook, source, release):
    """(refusals, suspicions): the nbgrader cells of the submission compared with the source's.

    Every test cell must be there exactly once, with no nbgrader cell unknown to the source; a cell without
    nbgrader metadata that holds a test cell's code is a copy of it, for a person to review.
    """
    known = {cell.metadata.nbgrader.grade_id for cell in source.cells if "nbgrader" in cell.metadata}
    counts = {}
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id is not None:
            counts[grade_id] = counts.get(grade_id, 0) + 1
    refusals = [f"duplicated test cell {grade_id} (its grade_id appears {count} times)"
                for grade_id, count in counts.items() if count > 1 and grade_id in test_cells(source)]
    refusals += [f"duplicated cell {grade_id} (its grade_id appears {count} times)"
                 for grade_id, count in counts.items() if count > 1 and grade_id not in test_cells(source)]
    refusals += [f"missing test cell {grade_id}" for grade_id in test_cells(source) if grade_id not in counts]
    refusals += [f"unknown nbgrader cell {grade_id} (not in the assignment)" for grade_id in counts
                 if grade_id not in known]
    suspicions = []
    visible_tests = {grade_id: cell.source.strip() for grade_id, cell in test_cells(release).items()}
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and "nbgrader" not in cell.metadata:
            suspicions += [f"cell {index} is a copy of test cell {grade_id}"
                           for grade_id, text in visible_tests.items() if text and text in cell.source]
    return refusals, suspicions


# ---------------------------------------------------------------------------------------------------------------
# Autograding in a private course (runs in the worker process)

def write_files(folder, files):
    for relative, data in files.items():
        path = folder / relative
        if not path.resolve().is_relative_to(folder.resolve()):
            raise Refused(f"file name {relative!r} points outside its folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def nbgrader_config(course, limits, options, progress):
    """The course's nbgrader configuration (nbgrader_config.py) for the private course `course`."""
    from traitlets.config.loader import KVArgParseConfigLoader, PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(AUTOGRADER)).load_config()
    config.merge(KVArgParseConfigLoader(argv=options).load_config())
    config.CourseDirectory.root = str(course)
    config.Execute.timeout = limits.cell_seconds
    config.TruncateLongOutputs.max_characters = limits.output_characters
    config.Execute.on_cell_start = lambda cell, cell_index: log_progress(progress, "start", cell)
    config.Execute.on_cell_complete = lambda cell, cell_index: log_progress(progress, "end", cell)
    return config


def log_progress(path, event, cell):
    with path.open("a") as file:
        file.write(f"{event}\t{cell.get('id', '')}\t{time.monotonic()}\n")


def stuck_cell(path, cell_seconds):
    """The id of the cell a notebook got stuck in: the first that ran past the cell time limit (later cells may
    have queued behind a kernel that ignores interrupts), else the last one started; '' when none."""
    if not path.exists():
        return ""
    started, last = {}, ""
    for event, cell_id, when in (line.split("\t") for line in path.read_text().splitlines()):
        if event == "start":
            started[cell_id], last = float(when), cell_id
        elif float(when) - started.get(cell_id, float(when)) >= cell_seconds:
            return cell_id
    return last


_gradebooks = {}  # release hash -> bytes of a gradebook holding the assignment, built once per worker process


def empty_gradebook(job, scratch):
    """A gradebook with the assignment's notebooks and cells (nbgrader generate_assignment), no student."""
    key = release_hash(job)
    if key not in _gradebooks:
        from nbgrader.apps import NbGraderAPI
        from traitlets.config.loader import PyFileConfigLoader

        course = scratch / "template"
        write_files(course / "source" / job["assignment"], job["source"])
        config = PyFileConfigLoader("nbgrader_config.py", path=str(AUTOGRADER)).load_config()
        config.CourseDirectory.root = str(course)
        outcome = NbGraderAPI(config=config).generate_assignment(job["assignment"], force=True)
        if not outcome["success"]:
            raise RuntimeError(f"nbgrader generate_assignment failed on the source:\n{outcome.get('log', '')[-3000:]}")
        _gradebooks[key] = (course / "gradebook.db").read_bytes()
        shutil.rmtree(course)
    return _gradebooks[key]


def scores_from(course, assignment, student):
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        submitted = gradebook.find_submission_notebook(assignment, assignment, student)
        return {grade.name: [grade.score, grade.max_score] for grade in submitted.grades
                if grade.cell.cell_type == "code"}


def cell_name(notebook, cell_id):
    """'cell 12 (kld)' for the submitted notebook's cell with that id ('' for none); grader checks are not
    student cells."""
    if not cell_id:
        return ""
    for index, cell in enumerate(notebook.cells):
        if cell.get("id") == cell_id:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            return f"cell {index}" + (f" ({grade_id})" if grade_id else "")
    return "a grader check cell"


def timed_out_cells(executed, submitted):
    return [cell_name(submitted, cell.get("id")) for cell in executed.cells
            if any(output.get("ename") == "CellTimeoutError" for output in cell.get("outputs", []))]


def failure_reason(error, events, running):
    """Why nbgrader could not autograde the notebook, from the sandbox's events and nbgrader's log and error."""
    where = f" in {running}" if running else ""
    if "DeadKernelError" in error or "Kernel died" in error:
        cause = "kernel died"
    elif "CellTimeoutError" in error or "TimeoutError" in error:  # e.g. a cell that ignores interrupts
        cause = "timed out"
    else:
        last = [line for line in error.strip().splitlines() if line.strip()]
        cause = f"nbgrader could not autograde it: {last[-1][:300] if last else 'no error message'}"
    return "; ".join([*events, cause + where])


def sandbox_launch(job, limits, workdir):
    """(nbgrader options, environment) that run the kernel sandboxed, or none with the sandbox off."""
    if not job.get("sandbox", True):
        return [], {}
    from ..sandbox import kernelspec as sandbox

    kernel_limits = sandbox.Limits(**{field.name: getattr(limits, field.name)
                                      for field in dataclasses.fields(sandbox.Limits)})
    hidden = [ROOT, *map(Path, job.get("hidden", []))]
    return sandbox.nbgrader_launch(kernel_limits, workdir / "sandbox-state", [workdir, *hidden],
                                   zygote_for(hidden, workdir))


_zygotes = {}  # hidden paths -> this worker's kernel fork server that hides them


def zygote_for(hidden, workdir):
    """This worker's sandbox.Zygote hiding `hidden` (started on first use, again if it died), or None where
    kernels start in a sandbox of their own: the private course `workdir` is not in its scratch root (which it
    hides), or it cannot start here (its error is logged)."""
    from ..sandbox import kernelspec as sandbox

    key = tuple(sorted(str(path) for path in hidden))
    zygote = _zygotes.get(key)
    if zygote is None or (zygote and not zygote.alive()):
        try:
            zygote = sandbox.Zygote(hidden)
            atexit.register(zygote.close)  # its folder (a socket) removed; Worker.stop does it for a killed worker
        except sandbox.SandboxUnavailable as error:
            print(f"kernels start one by one, each in a sandbox of its own: {error}", file=sys.stderr)
            zygote = False  # not tried again by this worker
        _zygotes[key] = zygote
    return zygote if zygote and workdir.resolve().is_relative_to(zygote.scratch_root) else None


def kernel_events(job, workdir):
    if not job.get("sandbox", True):
        return []
    from ..sandbox import kernelspec as sandbox

    return sandbox.kernel_events(workdir / "sandbox-state")


def autograde(job, workdir):
    """Grade one job in the private course below `workdir` (this process runs nbgrader; the kernel is sandboxed)."""
    import nbformat
    from nbgrader.apps import NbGraderAPI

    from ..tamper import canaries as tamper

    assignment, student = job["assignment"], job["student"]
    limits = Limits.of(job)
    course = workdir / "course"
    submitted = read_submission(job)
    source = nbformat.reads(job["source"][f"{assignment}.ipynb"].decode(), as_version=4)
    release = nbformat.reads(job["release"][f"{assignment}.ipynb"].decode(), as_version=4)
    refusals, suspicions = cell_problems(submitted, source, release)
    if refusals:
        raise Refused("; ".join(refusals) + "; ask the student to start from the release and copy the answers in")

    nonce = secrets.token_hex(16)
    write_files(course / "source" / assignment, job["source"])
    write_files(course / "release" / assignment, job["release"])
    folder = course / "submitted" / student / assignment
    folder.mkdir(parents=True)
    nbformat.write(tamper.add_canaries(submitted, nonce), folder / f"{assignment}.ipynb")
    (course / "gradebook.db").write_bytes(empty_gradebook(job, workdir))

    options, environment = sandbox_launch(job, limits, workdir)
    progress = workdir / "progress"
    config = nbgrader_config(course, limits, options, progress)
    saved = dict(os.environ)
    os.environ.update(environment)
    try:
        outcome = NbGraderAPI(config=config).autograde(assignment, student, force=True, create=True)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    log = outcome.get("log", "") + outcome.get("error", "")
    events = kernel_events(job, workdir)
    if not outcome["success"]:
        running = cell_name(submitted, stuck_cell(progress, limits.cell_seconds))
        return new_result(job, reason=failure_reason(log, events, running), log=log)

    executed = nbformat.read(course / "autograded" / student / assignment / f"{assignment}.ipynb", as_version=4)
    evidence = tamper.evidence(executed, submitted, nonce)
    autograded = nbformat.writes(tamper.remove_canaries(executed)).encode()
    scores = scores_from(course, assignment, student)
    notes = [f"timed out in {where} (over {limits.cell_seconds} s)" for where in timed_out_cells(executed,
                                                                                                  submitted)]
    flags = ["tampering: " + item for item in evidence] + suspicions
    log += "".join(f"\n{line}" for line in [*events, *flags, *notes])
    if flags:
        return new_result(job, "flagged", "; ".join(flags + notes), scores=scores, autograded=autograded, log=log)
    return new_result(job, "ok", "; ".join(notes), scores=scores, autograded=autograded, log=log)


def grade_in_worker(job, workdir):
    """autograde(), every error turned into a failed result that says what happened."""
    started = time.perf_counter()
    try:
        result = autograde(job, workdir)
    except Refused as refusal:
        result = new_result(job, reason=str(refusal), log=str(refusal))
    except Exception as error:
        result = new_result(job, reason=f"grader error: {type(error).__name__}: {str(error)[:300]}",
                            log=traceback.format_exc())
    result["seconds"] = time.perf_counter() - started
    return result


def generate_feedback(course, assignment, student):
    """nbgrader generate_feedback for one student of a course folder (no student code runs here)."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(AUTOGRADER)).load_config()
    config.CourseDirectory.root = str(course)
    outcome = NbGraderAPI(config=config).generate_feedback(assignment, student, force=True)
    return outcome.get("error", "") if not outcome["success"] else ""


TASKS = {"grade": grade_in_worker, "feedback": generate_feedback}


def serve(requests, replies):
    """The worker process: import what grading needs, say so, then read (task, arguments) frames and answer with
    the task's value until the pipe closes."""
    import nbgrader.apps  # noqa: F401, the start-up that the time limits of the jobs must not count

    from ..tamper import canaries  # noqa: F401
    write_frame(replies, "ready")
    while (request := read_frame(requests)) is not None:
        task, arguments = request
        write_frame(replies, TASKS[task](*arguments))


def write_frame(stream, value):
    data = pickle.dumps(value)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def read_frame(stream):
    header = stream.read(8)
    if len(header) < 8:
        return None
    return pickle.loads(stream.read(struct.unpack("<Q", header)[0]))


# ---------------------------------------------------------------------------------------------------------------
# The parent side: a worker process per batch, killed with its kernels when a notebook runs out of time

class Worker:
    """One worker process (started on first use) that grades jobs one after the other."""

    def __init__(self):
        self.process = None
        self.errors = tempfile.TemporaryFile()

    def start(self):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "autograder.grading.unit"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.errors, start_new_session=True, cwd=tempfile.gettempdir(),
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
        if self.read_reply(time.perf_counter() + WORKER_START_SECONDS) != ["ready"]:
            self.stop()
            raise RuntimeError(f"the grading worker did not start within {WORKER_START_SECONDS} s")

    def stop(self):
        """Kill the worker and, after a grace period for their own clean-up (the sandbox's supervisor removes its
        cgroups when the worker is gone), every process that was below it (kernels run in their own session);
        then remove what the worker's zygote left (its socket's folder)."""
        if self.process is None:
            return
        import psutil

        from ..sandbox import kernelspec as sandbox

        pid = self.process.pid
        try:
            below = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            below = []
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.process = None
        _, alive = psutil.wait_procs(below, timeout=5)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        for folder in sandbox.zygote_folders(pid):
            shutil.rmtree(folder, ignore_errors=True)

    def close(self):
        if self.process is not None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.stop()
        self.errors.close()

    def call(self, task, arguments, seconds):
        """(True, the task's value) from the worker, or (False, None) when it died or ran past `seconds`.

        A worker that did not answer is killed; the next call starts a fresh one."""
        if self.process is None:
            self.start()
        write_frame(self.process.stdin, (task, arguments))
        reply = self.read_reply(time.perf_counter() + seconds)
        return reply is not None, (reply[0] if reply else None)

    def grade(self, job):
        limits = Limits.of(job)
        workdir = Path(tempfile.mkdtemp(prefix=f"dgm-grade-{job['student']}-"))
        started = time.perf_counter()
        try:
            try:
                answered, result = self.call("grade", (job, workdir), limits.notebook_seconds)
            except RuntimeError as error:  # the worker did not start
                answered, result = True, new_result(job, reason=f"grader error: {error}", log=str(error))
            if not answered:
                result = self.lost(job, workdir, limits)
                self.stop()
            result["seconds"] = time.perf_counter() - started
            return result
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def feedback(self, course, assignment, student, seconds):
        """nbgrader's feedback for one student; a problem to report, or ''."""
        try:
            answered, error = self.call("feedback", (str(course), assignment, student), seconds)
        except RuntimeError as problem:  # the worker did not start
            return f"no feedback: {problem}"
        if not answered:
            self.stop()
            return f"no feedback: generating it ran past {seconds} s"
        return f"no feedback: {error.strip().splitlines()[-1]}" if error.strip() else ""

    def read_reply(self, deadline):
        """[the worker's answer], or None when it died or the deadline passed."""
        import select

        stream = self.process.stdout
        chunks, needed, header = [], 8, None
        while needed:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not select.select([stream], [], [], remaining)[0]:
                return None
            chunk = os.read(stream.fileno(), needed)
            if not chunk:
                return None
            chunks.append(chunk)
            needed -= len(chunk)
            if needed == 0 and header is None:
                header = b"".join(chunks)
                chunks, needed = [], struct.unpack("<Q", header)[0]
        return [pickle.loads(b"".join(chunks))]

    def lost(self, job, workdir, limits):
        """The failed result of a job whose worker died or ran past the notebook's time limit."""
        stuck = stuck_cell(workdir / "progress", limits.cell_seconds)
        try:
            running = cell_name(read_submission(job), stuck)
        except Refused:
            running = ""
        where = f" in {running}" if running else ""
        events = kernel_events(job, workdir)
        if self.process.poll() is None:
            reason = f"timed out{where}: the notebook ran past its {limits.notebook_seconds} s limit"
        else:
            reason = f"grader worker died{where} (exit code {self.process.returncode})"
        reason = "; ".join(events + [reason])
        return new_result(job, reason=reason, log=reason)


def grade_batch(jobs):
    """Grade `jobs` one after the other in one worker process (nbgrader's start-up paid once)."""
    worker = Worker()
    try:
        return [worker.grade(job) for job in jobs]
    finally:
        worker.close()


def grade_one(job):
    return grade_batch([job])[0]


if __name__ == "__main__":
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the replies
    serve(sys.stdin.buffer, replies)
