"""Grading on a Dask cluster (autograder.grading.cluster): a real `dask scheduler` and two `dask worker` processes on
127.0.0.1 grade example students exactly as the local pool does, a worker killed in the middle of a batch loses
no student and doubles none, and a worker whose environment differs from the coordinator's is refused."""
import collections
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import yaml
from distributed import Client

from autograder import examples, notebooks
from autograder.course import ASSIGNMENT_FOLDERS, AUTOGRADER, ROOT
from autograder.grading import cluster, coordinator, records
from autograder.grading.job import Job

# A few example students per part (each loses points on its own tests). Part 1 has three so that one worker
# gets a batch of two of them, the one that is killed.
STUDENTS = {"part1_vae": ["kld_mean", "reference", "untouched"],
            "part2_aae": ["reference"],
            "part3_gpt": ["untouched"]}
KILLED_BATCH = ("part1_vae", "reference")  # the second student of part 1's first batch: kill its worker then
DASK = Path(sys.executable).parent / "dask"


def course_with_students(fresh_build, folder):
    """A course folder with the release of `fresh_build` and the STUDENTS' submissions."""
    for part in ASSIGNMENT_FOLDERS:
        shutil.copytree(fresh_build.course / part, folder / part)
    shutil.copy(fresh_build.course / "gradebook.db", folder / "gradebook.db")
    for notebook, students in STUDENTS.items():
        release = notebooks.read(folder / "release" / notebook / f"{notebook}.ipynb")
        source = notebooks.read(folder / "source" / notebook / f"{notebook}.ipynb")
        for example in examples.load_examples(notebook):
            if example.student in students:
                path = folder / "submitted" / example.student / notebook / f"{notebook}.ipynb"
                path.parent.mkdir(parents=True)
                path.write_text(nbformat.writes(examples.submission(example, release, source)), encoding="utf-8")
    return folder


def start(command, log, **environment):
    """Start a Dask process in its own session, its output in `log`."""
    return subprocess.Popen([str(DASK), *command], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **environment})


def kill_tree(process):
    """SIGKILL a process and everything below it, as when the machine it runs on goes down."""
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=30)
    psutil.wait_procs(tree, timeout=30)


class LoopbackCluster:
    """`dask scheduler` and `workers` `dask worker` processes (one process, one thread each) on 127.0.0.1."""

    def __init__(self, folder, workers, dashboard=False):
        folder.mkdir()
        self.folder, self.workers = folder, []
        scheduler_file = folder / "scheduler.json"
        dashboard_options = ["--dashboard-address", "127.0.0.1:0"] if dashboard else ["--no-dashboard"]
        self.scheduler = start(["scheduler", "--host", "127.0.0.1", "--port", "0", *dashboard_options,
                                "--scheduler-file", str(scheduler_file)], folder / "scheduler.log")
        deadline = time.monotonic() + 120
        while not scheduler_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.address = json.loads(scheduler_file.read_text())["address"]
        for index in range(workers):
            # each worker's TMPDIR, where the jobs' working folders show which student it grades; short, as the
            # kernel's sockets below it must have paths under 108 bytes
            scratch = Path(tempfile.mkdtemp(prefix="dgm-worker"))
            self.workers.append((scratch, start(
                ["worker", self.address, "--host", "127.0.0.1", "--nworkers", "1", "--nthreads", "1",
                 "--no-dashboard", "--name", f"worker{index}"], folder / f"worker{index}.log", TMPDIR=str(scratch))))
        with Client(self.address) as client:
            client.wait_for_workers(workers, timeout=180)

    def close(self):
        for scratch, process in self.workers:
            kill_tree(process)
            shutil.rmtree(scratch, ignore_errors=True)
        kill_tree(self.scheduler)

    def log(self):
        return "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}" for path in sorted(self.folder.glob("*.log")))


@pytest.fixture
def loopback_cluster(tmp_path):
    created = []

    def make(workers, dashboard=False):
        created.append(LoopbackCluster(tmp_path / f"cluster{len(created)}", workers, dashboard))
        return created[-1]

    yield make
    for made in created:
        made.close()
        print(made.log())  # in pytest's report when the test failed


def gradebook_rows(course):
    """{(student, notebook): (submitted notebook rows, grade rows)} of the course's gradebook."""
    with sqlite3.connect(course / "gradebook.db") as database:
        rows = database.execute(
            "SELECT submitted_assignment.student_id, notebook.name, COUNT(DISTINCT submitted_notebook.id), "
            "COUNT(grade.id) FROM submitted_notebook "
            "JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id "
            "JOIN notebook ON submitted_notebook.notebook_id = notebook.id "
            "LEFT JOIN grade ON grade.notebook_id = submitted_notebook.id "
            "GROUP BY submitted_assignment.student_id, notebook.name").fetchall()
    return {(student, notebook): (submitted, grades) for student, notebook, submitted, grades in rows}


def scores_of(course):
    """{(student, notebook): {test: score}} of the course's gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        return {(student, notebook): {grade.name: grade.score for grade in gradebook.find_submission_notebook(
                    notebook, notebook, student).grades} for notebook, students in STUDENTS.items()
                for student in students}


def kill_worker_mid_batch(loopback, finished):
    """Wait until a worker grades the second student of a batch, then kill it with everything below it."""
    notebook, student = KILLED_BATCH
    while not finished.is_set():
        for scratch, process in loopback.workers:
            if any(scratch.glob(f"dgm-grade-{student}-*")) and process.poll() is None:
                time.sleep(2)  # its kernel is starting: the batch's first student is graded but not sent back
                kill_tree(process)
                return f"{notebook}/{student}"
        time.sleep(0.2)
    return None


def test_a_loopback_cluster_grades_as_the_local_pool_and_a_killed_worker_loses_nothing(
        fresh_build, tmp_path, loopback_cluster, monkeypatch, capsys):
    local = course_with_students(fresh_build, tmp_path / "local")
    on_dask = course_with_students(fresh_build, tmp_path / "dask")
    coordinator.main(["--course", str(local), "--jobs", "2"])

    recorded = collections.Counter()
    record = records.record
    monkeypatch.setattr(records, "record", lambda course, result, *rest: (
        recorded.update([(result.student, result.assignment)]), record(course, result, *rest))[1])
    loopback = loopback_cluster(workers=2, dashboard=True)
    finished, failure = threading.Event(), []

    def grade_on_dask():
        try:
            coordinator.main(["--course", str(on_dask), "--scheduler", loopback.address, "--batch-size", "2"])
        except BaseException as error:  # SystemExit included: the test fails with it below
            failure.append(error)
        finally:
            finished.set()

    thread = threading.Thread(target=grade_on_dask)
    thread.start()
    killed = kill_worker_mid_batch(loopback, finished)
    thread.join(timeout=1200)
    output = capsys.readouterr().out
    print(output)
    assert not thread.is_alive() and not failure, failure
    assert killed, "no worker was killed mid-batch: the test did not test what it says"
    assert f"Dask dashboard: http://127.0.0.1:" in output

    expected = {(student, notebook) for notebook, students in STUDENTS.items() for student in students}
    assert set(recorded) == expected and set(recorded.values()) == {1}  # every student recorded once
    assert scores_of(on_dask) == scores_of(local)
    report = {key: (row["score"], row["max"], row["status"]) for key, row in records.read_report(on_dask).items()}
    assert report == {key: (row["score"], row["max"], row["status"]) for key, row in records.read_report(local).items()}
    rows = gradebook_rows(on_dask)
    assert set(rows) == expected and {submitted for submitted, _ in rows.values()} == {1}
    assert {key: grades for key, (_, grades) in rows.items()} == {
        key: grades for key, (_, grades) in gradebook_rows(local).items()}


def test_a_worker_whose_environment_differs_is_refused_and_sent_no_work(loopback_cluster, monkeypatch, capsys):
    loopback = loopback_cluster(workers=1)
    coordinators = cluster.course_environment
    monkeypatch.setattr(cluster, "course_environment", lambda sandbox: {**coordinators(sandbox), "torch": "0.0.1"})
    monkeypatch.setattr(cluster, "WAIT_SECONDS", 1)
    stand_in = Job("part1_vae", "ada", source={}, release={}, submission={})
    with cluster.DaskExecutor(Client(loopback.address)) as executor, pytest.raises(SystemExit) as stopped:
        list(executor.map_batches([stand_in]))
    (_, worker), = loopback.workers
    assert worker.wait(timeout=60) is not None  # the refused worker left (its nanny too)
    refusal = capsys.readouterr().err
    assert "Refused worker tcp://127.0.0.1:" in refusal and "0.0.1 on the coordinator" in refusal
    assert "torch " in refusal and "No Dask worker can grade this course" in str(stopped.value)
    assert "dgm-grade-" not in " ".join(os.listdir(loopback.workers[0][0]))  # it graded nothing


def test_a_cluster_is_started_with_its_section_of_the_config(tmp_path, monkeypatch):
    started = {}

    class StandIn:
        def __init__(self, **options):
            started["options"] = options

        def scale(self, workers):
            started["workers"] = workers

    monkeypatch.setattr(cluster, "cluster_class", lambda kind: StandIn)
    config = tmp_path / "cluster.yml"
    config.write_text("slurm:\n  workers: 12\n  cores: 4\n  processes: 4\nssh:\n  hosts: [a, b]\n")
    assert isinstance(cluster.start_cluster("slurm", config), StandIn)
    assert started == {"options": {"cores": 4, "processes": 4}, "workers": 12}
    with pytest.raises(SystemExit, match="no `kubernetes:` section"):
        cluster.start_cluster("kubernetes", config)


def test_a_missing_cluster_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(cluster.CLUSTERS, "slurm", ("no_such_module_here", "SLURMCluster", "dask-jobqueue"))
    with pytest.raises(SystemExit, match=r"pip install -e '\.\[slurm\]'"):
        cluster.cluster_class("slurm")


def test_the_example_config_has_a_section_for_every_kind_of_cluster():
    config = yaml.safe_load((AUTOGRADER / "grading" / "cluster.yml").read_text(encoding="utf-8"))
    assert set(config) == set(cluster.CLUSTERS)


def test_batches_hold_one_assignment_each():
    jobs = [Job(notebook, str(index), source={}, release={}, submission={}) for notebook in ("a", "b")
            for index in range(3)]
    assert [[(job.assignment, job.student) for job in batch] for batch in cluster.batches(jobs, 2)] == [
        [("a", "0"), ("a", "1")], [("a", "2")], [("b", "0"), ("b", "1")], [("b", "2")]]
