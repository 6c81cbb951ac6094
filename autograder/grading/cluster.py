"""Grading on a Dask cluster: the coordinator (coordinator.py) sends batches of students to Dask workers on other
machines and writes the gradebook alone, from the results that come back.

    python -m autograder.grading --scheduler tcp://grader0:8786             # an existing Dask scheduler
    python -m autograder.grading --cluster slurm --cluster-config cluster.yml  # or ssh, kubernetes, local

The unit of work is a batch of jobs (job.py: each student's submission with the assignment's source and
release) that worker.grade_batch grades: plain data in, plain data out, so a worker needs no file of the
coordinator's machine, only the course's environment: the same Python, torch and nbgrader, the same grader code
(autograder/ and the solution modules) and a working sandbox. A worker plugin checks that when a worker joins; a worker that differs says
why in the coordinator's output and leaves the cluster before it is sent any work.

A worker that dies mid-batch loses nothing: Dask's scheduler sends the lost batch to another worker. A batch that
kills every worker it lands on (Dask's KilledWorker, after `distributed.scheduler.allowed-failures` tries) is split
into one task per student, so only the student that kills workers fails, with a reason that says so. Every
(assignment, student) result is handed to the coordinator once, however often its batch ran.

Cluster settings (--cluster-config) are a YAML file with one section per kind of cluster: the keyword arguments of
its class, plus `workers`, how many worker processes to ask for; autograder/grading/cluster.yml is an example.
"""
import importlib
import importlib.metadata
import logging
import math
import platform
import sys
from pathlib import Path

import yaml
from distributed import Client, Reschedule, WorkerPlugin, get_worker, wait
from distributed.scheduler import KilledWorker

from ..course import AUTOGRADER, EXAMPLES, ROOT, SOLUTIONS
from .job import Result, content_hash
from .worker import grade_batch

ENVIRONMENT_TOPIC = "dgm-course-environment"  # the event a refused worker sends to the coordinator
WAIT_SECONDS = 5  # how often the coordinator looks whether any worker is left while it waits for results
BATCH_SIZE = 5  # students per task: a worker process's start-up (nbgrader's import) is paid once per batch
logger = logging.getLogger(__name__)

# --cluster KIND: the class that starts that kind of cluster, and the package that has it
CLUSTERS = {
    "local": ("distributed", "LocalCluster", "distributed"),  # worker processes on this machine
    "slurm": ("dask_jobqueue", "SLURMCluster", "dask-jobqueue"),
    "ssh": ("distributed", "SSHCluster", "asyncssh"),
    "kubernetes": ("dask_kubernetes.operator", "KubeCluster", "dask-kubernetes"),
}


# ---------------------------------------------------------------------------------------------------------------
# The course's environment, which every worker must share with the coordinator

def grader_hash():
    """sha256 of the grader's code: every file below autograder/ but the example students (what a worker
    executes, reads or ships into the sandbox), and the solution modules, with which its judges compute the hidden
    tests' expected answers (grading/judge.py)."""
    files = [path for path in sorted(AUTOGRADER.rglob("*")) if path.is_file() and "__pycache__" not in path.parts
             and path.parent != EXAMPLES] + sorted(SOLUTIONS.glob("*.py"))
    return content_hash({str(path.relative_to(ROOT)): path.read_bytes() for path in files})


def course_environment(sandbox=True):
    """What grades depend on besides the job's own files (the source and release travel with every job)."""
    return {"python": ".".join(platform.python_version_tuple()[:2]),
            "torch": importlib.metadata.version("torch"),
            "nbgrader": importlib.metadata.version("nbgrader"),
            "grader code": grader_hash()[:12],
            "sandbox": sandbox}


def environment_problems(expected):
    """How this machine's environment differs from the coordinator's `expected` one (empty when it does not)."""
    found = course_environment(expected["sandbox"])
    problems = [f"{name} {found[name]} here, {expected[name]} on the coordinator"
                for name in ("python", "torch", "nbgrader", "grader code") if found[name] != expected[name]]
    if expected["sandbox"]:
        from ..sandbox import kernelspec as sandbox

        try:
            sandbox.check_available()
        except sandbox.SandboxUnavailable as error:
            problems.append(f"no sandbox: {error}")
    return problems


class CourseEnvironmentCheck(WorkerPlugin):
    """Run on every worker when it joins: a worker whose environment differs is closed before it gets work."""
    name = ENVIRONMENT_TOPIC

    def __init__(self, expected):
        self.expected = expected
        self.problems = None  # None until checked on a worker

    def setup(self, worker):
        self.problems = environment_problems(self.expected)
        if self.problems:
            logger.error("This worker cannot grade the course (%s); closing it. Install the course's environment "
                         "on it (see README, Grading on a cluster).", "; ".join(self.problems))
            worker.log_event(ENVIRONMENT_TOPIC, {"worker": worker.address, "problems": self.problems})
            worker.loop.add_callback(worker.close, reason="the course's environment differs")


def grade_batch_on_worker(jobs):
    """The Dask task: grade a batch of jobs, only on a worker whose environment was checked and found equal."""
    check = get_worker().plugins.get(ENVIRONMENT_TOPIC)
    if check is None or check.problems is None or check.problems:
        raise Reschedule()  # this worker is closing (or was never checked): the scheduler sends the batch elsewhere
    return grade_batch(jobs)


# ---------------------------------------------------------------------------------------------------------------
# The executor the coordinator uses

def batches(jobs, size):
    """Lists of at most `size` jobs, each of one assignment (a worker builds an assignment's gradebook once)."""
    by_assignment = {}
    for job in jobs:
        by_assignment.setdefault(job.assignment, []).append(job)
    for group in by_assignment.values():
        yield from (group[start:start + size] for start in range(0, len(group), size))


def lost_result(job, error):
    """The failed result of a student whose one-student task failed on the cluster."""
    if isinstance(error, KilledWorker):
        reason = (f"the grading worker died every time it graded this student ({error.allowed_failures + 1} "
                  f"times); look for what in the submission brings a machine down and grade it by hand")
    else:
        reason = f"the cluster could not grade it: {type(error).__name__}: {str(error)[:300]}"
    return Result.failed(job, reason, log=f"{reason}\n{error!r}")


def dashboard_link(client):
    try:
        return client.dashboard_link
    except KeyError:  # a scheduler started without its dashboard
        return None


class DaskExecutor:
    """Grades jobs on a Dask cluster: map_batches(jobs) yields one result per job, in the order they finish."""

    def __init__(self, client, cluster=None, batch_size=BATCH_SIZE, sandbox=True):
        self.client, self.cluster, self.batch_size = client, cluster, batch_size
        self.refused = {}  # worker address -> what differs
        client.subscribe_topic(ENVIRONMENT_TOPIC, self.refuse)
        client.register_plugin(CourseEnvironmentCheck(course_environment(sandbox)))
        if link := dashboard_link(client):
            print(f"Dask dashboard: {link}", flush=True)

    def refuse(self, event):
        """Say once why a worker was refused (an event sent by CourseEnvironmentCheck)."""
        _, message = event
        if message["worker"] in self.refused:
            return
        self.refused[message["worker"]] = message["problems"]
        print(f"Refused worker {message['worker']}: {'; '.join(message['problems'])}. Install the course's "
              f"environment on it (README, Grading on a cluster).", file=sys.stderr, flush=True)

    def batch_size_for(self, count):
        """At most --batch-size students per task, fewer when that would leave some of the workers idle."""
        threads = sum(self.client.nthreads().values())
        return max(1, min(self.batch_size, math.ceil(count / max(threads, 1))))

    def submit(self, batch):
        future = self.client.submit(grade_batch_on_worker, batch, pure=False, retries=1)
        return future, batch

    def map_batches(self, jobs):
        """Yield a result for every job, each (assignment, student) once, as its batch comes back."""
        pending = dict(self.submit(batch) for batch in batches(jobs, self.batch_size_for(len(jobs))))
        delivered = set()
        while pending:
            try:
                done, _ = wait(list(pending), timeout=WAIT_SECONDS, return_when="FIRST_COMPLETED")
            except TimeoutError:
                self.check_workers_left()
                continue
            for future in done:
                batch = pending.pop(future)
                for result in self.results_of(future, batch, pending):
                    key = (result.assignment, result.student)
                    if key not in delivered:
                        delivered.add(key)
                        yield result

    def results_of(self, future, batch, pending):
        """The results of a finished task. A batch that failed (e.g. killed every worker it ran on) is sent again
        one student per task, so that only the student who caused it fails."""
        try:
            return future.result()
        except Exception as error:
            if len(batch) == 1:
                return [lost_result(batch[0], error)]
            pending.update(self.submit([job]) for job in batch)
            return []

    def check_workers_left(self):
        """Stop with a clear message when every worker was refused (the run would wait forever)."""
        for event in self.client.get_events(ENVIRONMENT_TOPIC):  # also those sent before the subscription
            self.refuse(event)
        if self.refused and not self.client.scheduler_info(n_workers=-1)["workers"]:
            raise SystemExit("No Dask worker can grade this course: every worker that joined was refused "
                             "(see the messages above). Install the course's environment on the workers.")

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# Connecting: an existing scheduler, or a cluster started from a config file

def cluster_class(kind):
    module, name, package = CLUSTERS[kind]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as error:
        raise SystemExit(f"--cluster {kind} needs the {package} package ({error}): "
                         f"pip install -e '.[{kind}]' (or pip install {package})") from None


def start_cluster(kind, config_path):
    """Start a `kind` cluster with the options of that section of the config file; return it."""
    if config_path is None:
        raise SystemExit(f"--cluster {kind} needs --cluster-config FILE (autograder/grading/cluster.yml is an example)")
    settings = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
    if kind not in settings:
        raise SystemExit(f"{config_path} has no `{kind}:` section (sections: {', '.join(settings) or 'none'})")
    options = dict(settings[kind])
    workers = options.pop("workers", None)
    cluster = cluster_class(kind)(**options)
    if workers:
        cluster.scale(workers)
    return cluster


def add_arguments(parser):
    """The coordinator's options for grading on Dask."""
    group = parser.add_argument_group("grading on a Dask cluster (default: a local process pool)")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="address of a running Dask scheduler, e.g. "
                       "tcp://grader0:8786, whose workers have the course's environment")
    where.add_argument("--cluster", choices=sorted(CLUSTERS), help="start a Dask cluster of this kind with the "
                       "options of --cluster-config")
    group.add_argument("--cluster-config", type=Path, metavar="FILE",
                       help="YAML file of cluster options (example: autograder/grading/cluster.yml)")
    group.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                       help="students per Dask task (default %(default)s)")


def executor_from(args, sandbox=True):
    """The DaskExecutor that the options ask for, or None for the local process pool."""
    if args.scheduler:
        return DaskExecutor(Client(args.scheduler), batch_size=args.batch_size, sandbox=sandbox)
    if args.cluster:
        cluster = start_cluster(args.cluster, args.cluster_config)
        return DaskExecutor(Client(cluster), cluster, batch_size=args.batch_size, sandbox=sandbox)
    return None
