"""What a grading worker process does (autograder/grading/worker.py runs this): autograde one Job, and write one
student's feedback page in the course folder.

A job is autograded in-process, in a private temporary nbgrader course built from the job's bytes (fresh source
and release files, its own gradebook), so that nothing one student's kernel does can reach the next student.
Before running, the submission is checked (submission.py) and tamper canaries are added (autograder/tamper); the
kernel runs sandboxed (autograder/sandbox), forked from the worker's zygote. The parent enforces the notebook's
wall-time limit (worker.Worker); this side logs which cell runs, so that a notebook stopped for time says where.
"""
import os
import re
import secrets
import shutil
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import nbformat

from solutions import course_utils

from .. import notebooks, tamper
from ..course import ROOT, nbgrader_config
from ..preprocessors import OUTPUTS_CUT, readable_size
from ..sandbox import kernelspec as sandbox
from . import judge
from .job import Job, Result
from .submission import Refused, checked_submission, read_submission

PROGRESS = "progress"  # in a job's working folder: a line per cell started and ended (log_progress)
SANDBOX_STATE = "sandbox-state"  # in a job's working folder: the sandbox's kernelspec and its kernels' events


# ---------------------------------------------------------------------------------------------------------------
# What the parent asks a worker process (worker.Worker.call); each answers request.run(the worker's state)

@dataclass(frozen=True)
class Autograde:
    """Autograde `job` in a private course below `workdir`; the answer is its Result."""
    job: Job
    workdir: Path

    def run(self, state):
        return grade(self.job, self.workdir, state)


@dataclass(frozen=True)
class WriteFeedback:
    """Write one student's feedback in the course folder `course`; the answer is a problem to report, or ''."""
    course: Path
    assignment: str
    student: str

    def run(self, state):
        return generate_feedback(self.course, self.assignment, self.student)


class WorkerState:
    """What one worker process keeps from one job to the next: the empty gradebook of each release (nbgrader's
    generate_assignment, paid once per assignment) and its kernel fork servers (zygotes, one per set of hidden
    folders). The worker process owns one (worker.serve) and closes it when it ends."""

    def __init__(self):
        self.gradebooks = {}  # release hash -> bytes of a gradebook holding the assignment, no student
        self.zygotes = {}  # sorted hidden folders -> a sandbox.Zygote hiding them, or False when none can start
        self.judges = {}  # release hash -> (judge.Judges, the names its judges see), built once

    def empty_gradebook(self, job, scratch):
        """A gradebook with the assignment's notebooks and cells (nbgrader generate_assignment), no student."""
        key = job.release_hash()
        if key not in self.gradebooks:
            from nbgrader.apps import NbGraderAPI

            course = scratch / "template"
            write_files(course / "source" / job.assignment, job.source)
            outcome = NbGraderAPI(config=nbgrader_config(course)).generate_assignment(job.assignment, force=True)
            if not outcome["success"]:
                raise RuntimeError(f"nbgrader generate_assignment failed on the source:\n"
                                   f"{outcome.get('log', '')[-3000:]}")
            self.gradebooks[key] = (course / "gradebook.db").read_bytes()
            shutil.rmtree(course)
        return self.gradebooks[key]

    def judges_of(self, job):
        """The judges of the job's assignment and the namespace they share (the reference module imported once)."""
        key = job.release_hash()
        if key not in self.judges:
            judges = judge.Judges.from_bytes(job.judges)
            self.judges[key] = judges, judges.namespace()
        return self.judges[key]

    def zygote_for(self, hidden, workdir):
        """This worker's sandbox.Zygote hiding `hidden` (started on first use, again if it died), or None where
        kernels start in a sandbox of their own: the private course `workdir` is not in its scratch root (which
        it hides), or it cannot start here (its error is logged, and it is not tried again)."""
        key = tuple(sorted(str(path) for path in hidden))
        zygote = self.zygotes.get(key)
        if zygote is None or (zygote and not zygote.alive()):
            try:
                zygote = sandbox.Zygote(hidden)
            except sandbox.SandboxUnavailable as error:
                print(f"kernels start one by one, each in a sandbox of its own: {error}", file=sys.stderr)
                zygote = False
            self.zygotes[key] = zygote
        return zygote if zygote and workdir.resolve().is_relative_to(zygote.scratch_root) else None

    def close(self):
        """Stop the zygotes and remove their folders (Worker.stop does it for a worker it killed)."""
        for zygote in self.zygotes.values():
            if zygote:
                zygote.close()


# ---------------------------------------------------------------------------------------------------------------
# Autograding one job

def grade(job, workdir, state):
    """autograde(), every error turned into a failed result that says what happened."""
    started = time.perf_counter()
    try:
        result = autograde(job, workdir, state)
    except Refused as refusal:
        result = Result.failed(job, str(refusal))
    except Exception as error:
        result = Result.failed(job, f"grader error: {type(error).__name__}: {str(error)[:300]}",
                               log=traceback.format_exc())
    return replace(result, seconds=time.perf_counter() - started)


def autograde(job, workdir, state):
    """Grade one job in a private course below `workdir` (this process runs nbgrader; the kernel is sandboxed)."""
    submitted, source, suspicions = checked_submission(job)
    nonce = secrets.token_hex(16)
    course = private_course(job, workdir, with_canaries(submitted, nonce), state)
    outcome = run_autograde(job, course, workdir, state)
    log = outcome.get("log", "") + outcome.get("error", "")
    if not outcome["success"]:
        return Result.failed(job, failure_reason(job, workdir, log, submitted), log=log)

    executed = nbformat.read(course / "autograded" / job.student / job.assignment / job.notebook, as_version=4)
    cut = executed.metadata.pop(OUTPUTS_CUT, None)
    evidence, autograded = tamper_check(executed, submitted, source, nonce)
    judge_log = judge.judged(autograded, *state.judges_of(job), seed=judge_seed(job))
    notes = [f"timed out in {where} (over {job.limits.cell_seconds} s)"
             for where in timed_out_cells(executed, submitted)] + outputs_cut(cut, submitted)
    flags = ["tampering: " + item for item in evidence] + suspicions
    log += "".join(f"\n{line}" for line in [*kernel_events(job, workdir), *judge_log, *flags, *notes])
    return Result.of(job, "flagged" if flags else "ok", "; ".join(flags + notes), log=log,
                     scores=scores_of(autograded), autograded=nbformat.writes(autograded).encode())


def judge_seed(job):
    """The seed of a notebook's hidden tests (probe and judge build their inputs from it): the grader's, from the
    submission, so that each student's tests draw their own inputs and grading a notebook again gives its grade
    again (a grade never depends on luck)."""
    return int(job.submission_hash()[:8], 16)


def private_course(job, workdir, submitted, state):
    """The nbgrader course folder of this job alone: the assignment's source and release, the `submitted`
    notebook, and a gradebook that knows the assignment."""
    course = workdir / "course"
    write_files(course / "source" / job.assignment, job.source)
    write_files(course / "release" / job.assignment, job.release)
    folder = course / "submitted" / job.student / job.assignment
    folder.mkdir(parents=True)
    nbformat.write(submitted, folder / job.notebook)
    (course / "gradebook.db").write_bytes(state.empty_gradebook(job, workdir))
    return course


def write_files(folder, files):
    for relative, data in files.items():
        path = folder / relative
        if not path.resolve().is_relative_to(folder.resolve()):
            raise Refused(f"file name {relative!r} points outside its folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def run_autograde(job, course, workdir, state):
    """nbgrader autograde of the job's student in the private `course`, under the job's limits; nbgrader's
    outcome ({"success", "log", "error"})."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.preprocessors import Execute
    from traitlets.config.loader import KVArgParseConfigLoader

    from ..preprocessors import ExecuteWithinLimits

    options, variables = sandbox_launch(job, workdir, state)
    variables = {**variables, course_utils.JUDGE_SEED_VARIABLE: str(judge_seed(job))}  # for the probes
    config = nbgrader_config(course)
    config.merge(KVArgParseConfigLoader(argv=options).load_config())
    config.Execute.timeout = job.limits.cell_seconds
    config.TruncateLongOutputs.max_characters = job.limits.output_characters
    # nbgrader's Execute, keeping a bounded total of outputs as they come (preprocessors.ExecuteWithinLimits)
    config.Autograde.autograde_preprocessors = [ExecuteWithinLimits if step is Execute else step
                                                for step in config.Autograde.autograde_preprocessors]
    config.ExecuteWithinLimits.max_outputs = job.limits.notebook_outputs
    config.ExecuteWithinLimits.max_output_bytes = job.limits.notebook_output_bytes
    config.ExecuteWithinLimits.max_observation_bytes = job.limits.observation_bytes
    config.ExecuteWithinLimits.max_characters = job.limits.output_characters
    progress = workdir / PROGRESS
    config.Execute.on_cell_start = lambda cell, cell_index: log_progress(progress, "start", cell)
    config.Execute.on_cell_complete = lambda cell, cell_index: log_progress(progress, "end", cell)
    with environment(variables):
        return NbGraderAPI(config=config).autograde(job.assignment, job.student, force=True, create=True)


@contextmanager
def environment(variables):
    """os.environ with `variables` set, restored after: nbgrader finds the sandbox's kernelspec through them."""
    saved = dict(os.environ)
    os.environ.update(variables)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def sandbox_launch(job, workdir, state):
    """(nbgrader options, environment variables) that run the kernel sandboxed, or none with the sandbox off. The
    kernel sees neither the repository (solutions, grader) nor the job's hidden folders nor its private course."""
    if not job.sandbox:
        return [], {}
    hidden = [ROOT, *map(Path, job.hidden)]
    return sandbox.nbgrader_launch(job.limits, workdir / SANDBOX_STATE, [workdir, *hidden],
                                   state.zygote_for(hidden, workdir))


def kernel_events(job, workdir):
    """What the sandbox saw happen to the job's kernels ('killed for memory at 4 GiB'...); [] without one."""
    return sandbox.kernel_events(workdir / SANDBOX_STATE) if job.sandbox else []


def scores_of(autograded):
    """{test grade_id: (score, max_score)} of the judged notebook, as nbgrader scores a test cell (what the
    coordinator's SaveAutoGrades writes into the course's gradebook)."""
    from nbgrader.utils import determine_grade

    return {grade_id: determine_grade(cell) for grade_id, cell in notebooks.test_cells(autograded).items()}


# The tamper checks (autograder/tamper), in one place: canaries around the test cells before the run; after it,
# what the executed canaries and a scan of the submission show, and the executed notebook without its canaries.

def with_canaries(submitted, nonce):
    return tamper.add_canaries(submitted, nonce)


def tamper_check(executed, submitted, source, nonce):
    """(evidence of tampering, [] when none; the executed notebook without its canaries)."""
    return tamper.evidence(executed, submitted, source, nonce), tamper.remove_canaries(executed)


# ---------------------------------------------------------------------------------------------------------------
# Where a notebook stopped, and why

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


def where_it_stopped(job, workdir, submitted=None):
    """(the sandbox's events, ' in cell 12 (kld)') of a notebook that did not finish: what happened to its
    kernels, and the cell it got stuck in ('' when not known). `submitted` is read from the job when not given."""
    events = kernel_events(job, workdir)
    if submitted is None:
        try:
            submitted = read_submission(job)
        except Refused:
            return events, ""
    running = notebooks.cell_label_by_id(submitted, stuck_cell(workdir / PROGRESS, job.limits.cell_seconds))
    return events, f" in {running}" if running else ""


def failure_reason(job, workdir, log, submitted):
    """The reason of a notebook nbgrader could not autograde: what happened to its kernels (a kernel that died
    says its last line on stderr), then the cause nbgrader's `log` names and the cell it stopped in."""
    events, where = where_it_stopped(job, workdir, submitted)
    return "; ".join([*events, failure_cause(log, submitted) + where])


def failure_cause(error, submitted=None):
    """Why nbgrader could not autograde the notebook, from its log and error: the cause its traceback names, by
    cell where it names one (in the `submitted` notebook), never its closing 'see the above traceback'."""
    if "DeadKernelError" in error or "Kernel died" in error:
        return "kernel died"
    if "CellTimeoutError" in error or "TimeoutError" in error:  # e.g. a cell that ignores interrupts
        return "timed out"
    if found := re.findall(r"Inconsistent checksums for cell ([\w.-]+)$", error, re.MULTILINE):
        grade_id = found[-1]
        return (f"{cell_label_by_grade_id(submitted, grade_id)}: nbgrader cannot restore it from the assignment, "
                f"its nbgrader metadata was changed (nbgrader: Inconsistent checksums for cell {grade_id}); ask "
                f"the student to start from the release and copy the answers in")
    last = [line.strip() for line in error.strip().splitlines() if line.strip()]
    # nbgrader ends with "There was an error processing ...", "Please see the above traceback ...": the cause is the
    # last exception its tracebacks show
    raised = [line for line in last if re.match(r"^[\w.]*(Error|Exception|Exit|Interrupt)\b.*:", line)
              and "above traceback" not in line]
    chosen = raised or last
    return f"nbgrader could not autograde it: {chosen[-1][:300] if chosen else 'no error message'}"


def cell_label_by_grade_id(notebook, grade_id):
    """cell_label of the cell of `notebook` with that grade_id ('cell test_kld' without the notebook or the cell)."""
    for index, cell in enumerate(notebook.cells if notebook is not None else []):
        if notebooks.nbgrader_of(cell).get("grade_id") == grade_id:
            return notebooks.cell_label(cell, index)
    return f"cell {grade_id}"


def outputs_cut(cut, submitted):
    """['outputs cut: 19,900 of 20,000 outputs dropped after the notebook's limit of 2,000 outputs / 4 MiB, in
    cell 5 (sample_reparameterize)'] from what ExecuteWithinLimits wrote in the executed notebook's metadata;
    [] when it cut nothing."""
    if not cut:
        return []
    cells = [notebooks.cell_label_by_id(submitted, cell_id) or (f"cell {grade_id}" if grade_id else "a cell")
             for cell_id, grade_id in cut["cells"]]
    return [f"outputs cut: {cut['dropped']:,} of {cut['outputs']:,} outputs dropped after the notebook's limit "
            f"of {cut['max_outputs']:,} outputs / {readable_size(cut['max_bytes'])}, in {', '.join(cells)}"]


def timed_out_cells(executed, submitted):
    """The labels of the cells stopped at the cell time limit (the notebook went on after them)."""
    return [notebooks.cell_label_by_id(submitted, cell.get("id")) for cell in executed.cells
            if any(output.get("ename") == "CellTimeoutError" for output in cell.get("outputs", []))]


# ---------------------------------------------------------------------------------------------------------------
# Feedback

def generate_feedback(course, assignment, student):
    """nbgrader generate_feedback for one student of a course folder (no student code runs here); nbgrader's
    error, or '' when it worked."""
    from nbgrader.apps import NbGraderAPI

    outcome = NbGraderAPI(config=nbgrader_config(course)).generate_feedback(assignment, student, force=True)
    return outcome.get("error", "") if not outcome["success"] else ""
