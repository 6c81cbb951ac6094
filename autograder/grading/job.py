"""The model of a grading job: what one student's notebook is graded from (a Job) and what comes back (a Result).

Both are plain picklable data: the coordinator sends jobs to its worker processes through a pipe and to Dask
workers on other machines, so a job carries every byte it needs (the assignment's nbgrader source and release
folders, the student's submitted folder) and no path of the coordinator's machine but those the sandbox hides.
"""
import hashlib
from dataclasses import dataclass, field

from ..limits import Limits


def content_hash(files):
    """sha256 of a {relative_path: bytes} folder (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path}\0{len(files[path])}\0".encode())
        digest.update(files[path])
    return digest.hexdigest()


@dataclass(frozen=True)
class Job:
    """One student's notebook to autograde. The folders are {relative path: bytes}."""
    assignment: str  # e.g. "part1_vae", also the notebook's name
    student: str
    source: dict  # the nbgrader source folder of the assignment (solutions, the hidden tests' probes)
    release: dict  # the release folder (the notebook students got, course_utils.py ...)
    submission: dict  # the student's submitted folder
    limits: Limits = Limits()
    sandbox: bool = True  # False only for --unsafe-no-sandbox
    hidden: tuple = ()  # folders (str) the kernel must not see besides the repository: the course folder
    judges: bytes = b'{"module": "", "preamble": [], "tests": {}}'  # <course>/judges/<assignment>.json (judge.py)

    @property
    def notebook(self):
        """The file name of the assignment's notebook in every folder of the job."""
        return f"{self.assignment}.ipynb"

    def submission_hash(self):
        return content_hash(self.submission)

    def release_hash(self):
        """The hash of what the assignment is graded with: a change to the source or the release grades again."""
        return content_hash({**{f"source/{path}": data for path, data in self.source.items()},
                             **{f"release/{path}": data for path, data in self.release.items()},
                             "judges": self.judges})


@dataclass(frozen=True)
class Result:
    """What grading one student's notebook gave."""
    assignment: str
    student: str
    status: str  # "ok"; "flagged": scores withheld for an instructor to review; "failed": no scores
    reason: str = ""  # why it is flagged or failed, or notes on an ok one (a cell that timed out)
    scores: dict = field(default_factory=dict)  # {test grade_id: (score, max_score)}
    autograded: bytes | None = None  # the autograded notebook, canaries removed; None when failed
    log: str = ""
    submission_hash: str = ""  # the Job's hashes; empty for a submission refused before it became a job
    release_hash: str = ""
    seconds: float = 0.0

    @classmethod
    def of(cls, job, status, reason="", **values):
        """A result of `job`, with the job's hashes (the coordinator skips it next time if they are unchanged)."""
        return cls(job.assignment, job.student, status, reason, submission_hash=job.submission_hash(),
                   release_hash=job.release_hash(), **values)

    @classmethod
    def failed(cls, job, reason, log=None):
        """The failed result of `job`; its log is the reason unless told."""
        return cls.of(job, "failed", reason, log=reason if log is None else log)

    @classmethod
    def refused(cls, assignment, student, reason):
        """The failed result of a submission refused before it became a job (a student folder that is a link,
        a notebook that is a link...): no hashes, so it is looked at again on the next run."""
        return cls(assignment, student, "failed", reason, log=reason)
