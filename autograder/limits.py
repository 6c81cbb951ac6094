"""Every limit of the course's grading, defined once: what one student's notebook may use, and how long the
grader waits. nbgrader_config.py, the sandbox and the grading unit read these defaults; `python -m
autograder.grading` overrides some of them per run (--memory-gib, --cell-seconds, --notebook-seconds).
A new limit goes here, as a field of Limits when it applies to one student's notebook."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one student's notebook may use. The sandbox enforces the kernel's share (memory, processes, CPU time);
    nbgrader the cell's wall time; the grading unit the notebook's wall time and the submission's size."""
    memory_bytes: int = 4 * 2**30  # cgroup memory limit (v1 or v2) where the host has one, else RLIMIT_AS
    processes: int = 256  # pids controller where available, else RLIMIT_NPROC inside the user namespace
    cpu_seconds: int = 1200  # RLIMIT_CPU of the kernel
    cell_seconds: int = 60  # wall time of one cell (nbgrader's Execute.timeout)
    notebook_seconds: int = 600  # wall time of the whole notebook, start-up included
    output_characters: int = 100_000  # kept of each output text (TruncateLongOutputs)
    # Kept of the whole notebook's outputs as they arrive (preprocessors.ExecuteWithinLimits), later ones dropped
    # but for each cell's first error: a count, and bytes as JSON once texts are cut, nested data and metadata too.
    notebook_outputs: int = 2_000
    notebook_output_bytes: int = 4 * 2**20
    # The hidden tests' observations (the probes' data, grading/judge.py) have a budget of their own: only in test
    # cells, read by the judges and then dropped, they never reach the autograded notebook.
    observation_bytes: int = 16 * 2**20
    submission_bytes: int = 50 * 2**20  # of one submitted notebook file


WORKER_START_SECONDS = 600  # for a grading worker to import nbgrader, on a machine however loaded
FEEDBACK_SECONDS = 120  # for nbgrader to write one student's feedback page


@dataclass(frozen=True)
class CollectLimits:
    """What `make collect` reads of one LMS download, student archives included: sizes uncompressed (declared by
    the zip, and held to as it is read). `python -m autograder.lms.collect` overrides them (--max-total-mib,
    --max-member-mib, --max-members); a member over them is listed as not collected, the rest still is."""
    total_bytes: int = 8 * 2**30  # everything read from the download
    member_bytes: int = Limits.submission_bytes  # one file: a notebook, or a student's .zip as uploaded
    members: int = 100_000  # files of the download and of the students' archives, together
