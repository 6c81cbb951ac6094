"""Grading worker processes. A worker process (`python -m autograder.grading.worker`) imports nbgrader once, then
answers the parent's requests (unit.Autograde, unit.WriteFeedback) one after the other. The parent side, Worker,
starts it, sends it requests, and kills it with its kernels when a notebook runs past its time limit; the next
request starts a fresh one. Pool drives --jobs of them for the coordinator; grade_batch one, for a Dask task.

The protocol, both ways through the worker's stdin and stdout: frames of a pickled value after its 8-byte
length. The worker first says READY, then answers each request with request.run(its unit.WorkerState). No frame
carries None, which read_frame returns at the end of the stream or past its deadline.
"""
import os
import pickle
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

from ..limits import WORKER_START_SECONDS
from ..sandbox import kernelspec as sandbox
from . import unit
from .job import Result

READY = "ready"


# ---------------------------------------------------------------------------------------------------------------
# The worker process, and the frames both sides read and write

def serve(requests, replies):
    """The worker process: import what grading needs, say READY, then answer requests until the pipe closes."""
    import nbgrader.apps  # noqa: F401, the start-up that the time limits of the jobs must not count

    write_frame(replies, READY)
    state = unit.WorkerState()
    try:
        while (request := read_frame(requests)) is not None:
            write_frame(replies, request.run(state))
    finally:
        state.close()


def write_frame(stream, value):
    data = pickle.dumps(value)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def read_frame(stream, deadline=None):
    """The next value on `stream`, or None at its end or, with a `deadline` (a time.perf_counter() value), when
    the deadline passes first."""
    header = read_exactly(stream, 8, deadline)
    if header is None:
        return None
    data = read_exactly(stream, struct.unpack("<Q", header)[0], deadline)
    return None if data is None else pickle.loads(data)


def read_exactly(stream, size, deadline):
    """`size` bytes of `stream`, or None at its end or past the deadline. Read from its file descriptor, never
    its buffer, so that select() sees every byte that has not been read yet."""
    chunks = []
    while size:
        if deadline is not None:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not select.select([stream], [], [], remaining)[0]:
                return None
        chunk = os.read(stream.fileno(), size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def main():
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the replies
    serve(sys.stdin.buffer, replies)


# ---------------------------------------------------------------------------------------------------------------
# The parent side: a worker process, killed with its kernels when a notebook runs out of time

class Worker:
    """One worker process (started on first use) that grades jobs one after the other."""

    def __init__(self):
        self.process = None
        self.errors = tempfile.TemporaryFile()

    def start(self):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "autograder.grading.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.errors, start_new_session=True, cwd=tempfile.gettempdir(),
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
        if read_frame(self.process.stdout, time.perf_counter() + WORKER_START_SECONDS) != READY:
            self.stop()
            raise RuntimeError(f"the grading worker did not start within {WORKER_START_SECONDS} s")

    def stop(self):
        """Kill the worker and, after a grace period for their own clean-up (the sandbox's supervisor removes its
        cgroups when the worker is gone), every process that was below it (kernels run in their own session);
        then remove what the worker's zygote left (its socket's folder)."""
        if self.process is None:
            return
        import psutil

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

    def call(self, request, seconds):
        """The worker's answer to `request` (a unit.Autograde or unit.WriteFeedback), or None when it died or
        ran past `seconds`: the caller stops it then. RuntimeError when the worker does not start."""
        if self.process is None:
            self.start()
        try:
            write_frame(self.process.stdin, request)
        except BrokenPipeError:  # it died since its last answer
            return None
        return read_frame(self.process.stdout, time.perf_counter() + seconds)

    def grade(self, job):
        """The Result of `job`: failed when the worker did not start, died, or ran past the notebook's limit."""
        workdir = Path(tempfile.mkdtemp(prefix=f"dgm-grade-{job.student}-"))
        started = time.perf_counter()
        try:
            try:
                result = self.call(unit.Autograde(job, workdir), job.limits.notebook_seconds)
            except RuntimeError as error:  # the worker did not start
                result = Result.failed(job, f"grader error: {error}")
            if result is None:
                result = self.lost(job, workdir)
                self.stop()
            return replace(result, seconds=time.perf_counter() - started)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def lost(self, job, workdir):
        """The failed result of a job whose worker died or ran past the notebook's time limit."""
        events, where = unit.where_it_stopped(job, workdir)
        if self.process.poll() is None:
            reason = f"timed out{where}: the notebook ran past its {job.limits.notebook_seconds} s limit"
        else:
            reason = f"grader worker died{where} (exit code {self.process.returncode})"
        return Result.failed(job, "; ".join([*events, reason]))

    def feedback(self, course, assignment, student, seconds):
        """nbgrader's feedback for one student; a problem to report, or ''."""
        try:
            error = self.call(unit.WriteFeedback(course, assignment, student), seconds)
        except RuntimeError as problem:  # the worker did not start
            return f"no feedback: {problem}"
        if error is None:
            self.stop()
            return f"no feedback: generating it ran past {seconds} s"
        return f"no feedback: {error.strip().splitlines()[-1]}" if error.strip() else ""


class Pool:
    """`jobs` threads, each driving its own Worker process (start-up paid once per thread, not per student)."""

    def __init__(self, jobs):
        self.executor = ThreadPoolExecutor(max_workers=jobs)
        self.local = threading.local()
        self.workers = []

    def worker(self):
        if not hasattr(self.local, "worker"):
            self.local.worker = Worker()
            self.workers.append(self.local.worker)
        return self.local.worker

    def grade(self, job):
        """A future of the job's Result."""
        return self.executor.submit(lambda: self.worker().grade(job))

    def feedback(self, course, assignment, student, seconds):
        """A future of Worker.feedback's problem to report, or ''."""
        return self.executor.submit(lambda: self.worker().feedback(course, assignment, student, seconds))

    def map_batches(self, jobs):
        """The results of `jobs`, as they finish (the interface of cluster.DaskExecutor)."""
        return (future.result() for future in as_completed([self.grade(job) for job in jobs]))

    def close(self):
        self.executor.shutdown()
        for worker in self.workers:
            worker.close()


def grade_batch(jobs):
    """The Results of `jobs`, graded one after the other in one worker process (nbgrader's start-up paid once)."""
    worker = Worker()
    try:
        return [worker.grade(job) for job in jobs]
    finally:
        worker.close()


if __name__ == "__main__":
    main()
