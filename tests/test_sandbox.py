"""The sandboxed kernel (autograder/sandbox/): what student code can see, write, reach and use up, driven
through jupyter_client with nbgrader's options, and one real `nbgrader autograde` of a toy assignment. Every test
runs both ways a kernel starts: in a bwrap sandbox of its own, and forked by a Zygote (what the workers use)."""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbgrader.api import Gradebook
from nbgrader.apps import NbGraderAPI
from traitlets.config import Config
from traitlets.config.loader import KVArgParseConfigLoader

from autograder.grading import unit
from autograder.grading.job import Job
from autograder.grading.unit import WorkerState
from autograder.grading.worker import Worker
from autograder.limits import Limits
from autograder.sandbox import bwrap, kernelspec, launcher
from autograder.sandbox.cgroups import Cgroups

ROOT = Path(__file__).resolve().parent.parent
SECRET = "hunter2-" + uuid.uuid4().hex

try:
    kernelspec.check_available()
except kernelspec.SandboxUnavailable as unavailable:
    pytest.skip(f"no sandbox on this machine: {unavailable}", allow_module_level=True)


class Kernel:
    """A sandboxed kernel started as nbgrader would start it: from the options nbgrader_launch returns."""

    def __init__(self, tmp_path, zygote, limits=Limits(), hidden=()):
        self.state = tmp_path / "state"
        self.workdir = tmp_path / "work"
        self.workdir.mkdir()
        (self.workdir / "helper.py").write_text("VALUE = 7\n")
        (self.workdir / "notebook.ipynb").write_text("{}")  # nbgrader's notebook, with the hidden tests
        options, env = kernelspec.nbgrader_launch(limits, self.state, [ROOT, *hidden], zygote)
        config = KVArgParseConfigLoader([option for option in options if "KernelManager" in option]).load_config()
        self.manager = KernelManager(kernel_name=kernelspec.KERNEL_NAME, config=config)
        with pytest.MonkeyPatch.context() as patch:  # env: JUPYTER_PATH, where the kernelspec is
            for name, value in env.items():
                patch.setenv(name, value)
            self.manager.start_kernel(cwd=str(self.workdir))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def run(self, code, timeout=30):
        """Execute code; return what it printed and the name of the error it raised ('' if none)."""
        printed, error = [], []

        def collect(message):
            content = message["content"]
            if message["msg_type"] == "stream":
                printed.append(content["text"])
            if message["msg_type"] == "error":
                error.append(content["ename"])

        self.client.execute_interactive(code, output_hook=collect, timeout=timeout)
        return "".join(printed), "".join(error)

    def run_until_it_dies(self, code, timeout=30):
        """Execute code that should kill the kernel; return whether it died within `timeout` s."""
        self.client.execute(code)
        deadline = time.monotonic() + timeout
        while self.manager.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        return not self.manager.is_alive()

    def shutdown(self):
        self.client.stop_channels()
        self.manager.shutdown_kernel()

    def events(self):
        return kernelspec.kernel_events(self.state)


@pytest.fixture(scope="module", params=["own sandbox", "zygote"])
def zygote(request):
    """None: each kernel starts in a bwrap sandbox of its own; else the fork server that kernels come from."""
    if request.param == "own sandbox":
        yield None
        return
    with pytest.MonkeyPatch.context() as patch:  # the zygote's environment must not leak the grader's either
        patch.setenv("GRADER_SECRET", SECRET)
        server = kernelspec.Zygote([ROOT])
    yield server
    server.close()


@pytest.fixture(scope="module")
def kernel(tmp_path_factory, zygote):
    """One kernel shared by the read-only checks, started by a grader with a secret in its environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADER_SECRET", SECRET)
        started = Kernel(tmp_path_factory.mktemp("shared"), zygote)
    yield started
    started.shutdown()


def test_the_kernel_runs_cells_in_a_scratch_copy_of_its_folder(kernel):
    printed, error = kernel.run("import helper, os\n"
                                "open('result.txt', 'w').write('x')\n"
                                "print(helper.VALUE, sorted(os.listdir('.')))")
    assert (printed, error) == ("7 ['__pycache__', 'helper.py', 'result.txt']\n", "")
    assert sorted(path.name for path in kernel.workdir.iterdir()) == ["helper.py", "notebook.ipynb"]


@pytest.mark.parametrize("path", [ROOT / "solutions", ROOT / "autograder", ROOT / "tests", ROOT / ".git",
                                  Path(__file__)])
def test_hidden_paths_are_invisible(kernel, path):
    printed, _ = kernel.run(f"import os; print(os.path.exists({str(path)!r}) and os.listdir({str(path)!r}))")
    assert printed in ("False\n", "[]\n")


def test_home_shows_only_the_interpreter(kernel):
    """$HOME is empty but for the folders the interpreter lives in (with pyenv, ~/.pyenv)."""
    home = Path.home()
    needed = {path.relative_to(home).parts[0] for path in map(Path, bwrap.needed_paths())
              if path.is_relative_to(home)}
    printed, _ = kernel.run(f"import os; print(sorted(os.listdir({str(home)!r})))")
    assert printed == f"{sorted(needed)}\n"


def test_an_environment_reached_through_a_link_in_tmp_works(tmp_path, monkeypatch, zygote):
    """A grader whose Python environment is reached through a symbolic link in /tmp, which the sandbox replaces
    with a private one, and whose target is in the hidden repository: the kernel starts from the link, finds its
    packages below the link's sys.prefix, and cannot write there; in a sandbox of its own, and forked from a
    zygote started the same way."""
    link = tmp_path / "env"
    link.symlink_to(Path(sys.prefix).resolve())
    executable = str(link / Path(sys.executable).relative_to(sys.prefix))
    for name, value in (("executable", executable), ("prefix", str(link)), ("exec_prefix", str(link))):
        monkeypatch.setattr(sys, name, value)
    assert str(link) in bwrap.needed_paths()
    server = kernelspec.Zygote([ROOT]) if zygote is not None else None
    try:
        kernel = Kernel(tmp_path, server)
        printed, error = kernel.run("import numpy, sys\n"
                                    "print(numpy.arange(3).sum(), sys.executable, sys.prefix)\n"
                                    f"open({str(link / 'x')!r}, 'w')")
        kernel.shutdown()
    finally:
        if server is not None:
            server.close()
    assert (printed, error) == (f"3 {executable} {link}\n", "OSError")


def test_the_host_tmp_is_invisible(kernel, tmp_path):
    (tmp_path / "secret.txt").write_text("secret")
    printed, _ = kernel.run(f"import os; print(os.path.exists({str(tmp_path / 'secret.txt')!r}))")
    assert printed == "False\n"


@pytest.mark.parametrize("path", [ROOT / "solutions" / "x.py", ROOT / ".venv" / "x", Path(sys.prefix) / "x",
                                  Path("/etc/x"), Path("/x")])
def test_nothing_outside_the_scratch_copy_is_writable(kernel, path):
    _, error = kernel.run(f"open({str(path)!r}, 'w')")
    assert error in ("OSError", "PermissionError", "FileNotFoundError")
    assert not path.exists()


def test_the_interpreter_and_its_packages_still_work(kernel):
    printed, error = kernel.run("import numpy, sys; print(numpy.arange(3).sum(), sys.executable)")
    assert (printed, error) == (f"3 {sys.executable}\n", "")


def test_no_tcp_connection_reaches_the_host(kernel):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        _, error = kernel.run(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)")
    assert error == "ConnectionRefusedError"


def test_the_grader_environment_does_not_leak(kernel):
    """Neither the kernel's environment nor that of any process it can see holds the grader's variables."""
    printed, _ = kernel.run("import glob, os\n"
                            "environments = [os.environ.get('JPY_PARENT_PID', 'unset')]\n"
                            "for path in glob.glob('/proc/[0-9]*/environ'):\n"
                            "    try:\n"
                            "        environments.append(open(path, 'rb').read().decode())\n"
                            "    except OSError:\n"
                            "        pass\n"
                            "print(len(environments), environments[0], 'GRADER_SECRET' in ''.join(environments))")
    count, jpy_parent_pid, leaked = printed.split()
    assert int(count) >= 3 and jpy_parent_pid == "unset" and leaked == "False"


def test_only_variables_named_in_the_allow_list_reach_the_kernel(tmp_path, zygote):
    """The kernel's environment passes variables by name, no prefix: a token named like a library's setting
    stays outside (so does the launcher's PYTHONPATH), what the notebooks read gets in."""
    secrets = ["NVIDIA_API_KEY", "CUDA_TOKEN", "TORCH_HUB_TOKEN", "DGM_UPLOAD_TOKEN", "NBGRADER_DB_PASSWORD",
               "LC_SECRET", "OMP_SECRET", "MKL_LICENSE_KEY"]
    with pytest.MonkeyPatch.context() as patch:
        for name in secrets:
            patch.setenv(name, SECRET)
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv("NBGRADER_EXECUTION", "autograde")
        kernel = Kernel(tmp_path, zygote)
    printed, error = kernel.run("import glob, os\n"
                                "seen = ''\n"
                                "for path in glob.glob('/proc/[0-9]*/environ'):\n"
                                "    try:\n"
                                "        seen += open(path, 'rb').read().decode()\n"
                                "    except OSError:\n"
                                "        pass\n"
                                f"print([name for name in {[*secrets, 'PYTHONPATH']!r} "
                                "if name in os.environ or name in seen], "
                                f"{SECRET!r} in seen, os.environ['OMP_NUM_THREADS'], os.environ['NBGRADER_EXECUTION'])")
    kernel.shutdown()
    assert (printed, error) == ("[] False 1 autograde\n", "")


def test_what_the_kernel_writes_below_sys_stdout_stays_off_the_graders_streams(tmp_path, zygote, capfd):
    """The kernel's standard streams are its own, not those of the grader (whose stderr is a file on the host's
    disk, outside every limit): what student code writes to file descriptors (C code, subprocesses, os.write;
    ipykernel echoes those to the kernel's own stdout and stderr) goes nowhere near them."""
    kernel = Kernel(tmp_path, zygote)  # its launcher gets this test's captured stdout and stderr
    _, error = kernel.run("import os, subprocess, sys\n"
                          "for fd in (1, 2, sys.stdout.fileno(), sys.stderr.fileno()):\n"
                          "    os.write(fd, b'fd-level marker ' * 10**4)\n"
                          "subprocess.run(['echo', 'subprocess marker'])")
    kernel.shutdown()
    written = capfd.readouterr()
    assert error == "" and "marker" not in written.out + written.err


def test_a_kernel_that_dies_says_why_in_its_events(tmp_path, zygote):
    """The last line a kernel that died wrote to its own stderr (read with a cap, whatever it wrote before) is in
    its events, e.g. the error that stopped it at start-up, before it could answer nbgrader, and so in the
    reason the grading report gives; none of its output reaches the launcher's streams."""
    state, workdir = tmp_path / unit.SANDBOX_STATE, tmp_path / "work"  # where a grading job keeps them
    workdir.mkdir()
    kernelspec.nbgrader_launch(Limits(), state, [ROOT], zygote)
    spec = json.loads((state / "jupyter" / "kernels" / kernelspec.KERNEL_NAME / "kernel.json").read_text())
    connection = state / "runtime" / "kernel.json"  # as nbgrader's kernel manager writes it
    ports = ["shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"]
    connection.write_text(json.dumps({"transport": "ipc", "ip": str(state / "runtime" / "kernel"),
                                      **{name: number for number, name in enumerate(ports, 1)}}))
    failing = ("import sys\n"
               "sys.stdout.write('out' * 10**6)\n"
               "sys.stderr.write('err' * 10**6 + '\\nModuleNotFoundError: no kernel here\\n')\n"
               "sys.stderr.flush()\n"
               "sys.exit(1)")
    launcher_command = spec["argv"][:spec["argv"].index("--") + 1]  # the kernel after "--" is ours
    run = subprocess.run([*launcher_command, sys.executable, "-c", failing, "-f", str(connection)], cwd=workdir,
                         env={**os.environ, **spec["env"]}, capture_output=True, timeout=120)
    assert (run.returncode, run.stdout, run.stderr) == (1, b"", b"")
    assert kernelspec.kernel_events(state) == ["kernel died (exit code 1): ModuleNotFoundError: no kernel here"]
    job = Job("toy", "alice", source={}, release={}, submission={})
    nbgrader_log = ("[ERROR] Kernel died before replying to kernel_info\n"
                    "nbclient.exceptions.DeadKernelError: Kernel died")
    assert unit.failure_reason(job, tmp_path, nbgrader_log, nbformat.v4.new_notebook()) == (
        "kernel died (exit code 1): ModuleNotFoundError: no kernel here; kernel died")


@pytest.mark.skipif(not Cgroups.usable("pids") and os.geteuid() == 0,
                    reason="no pids cgroup, and RLIMIT_NPROC does not bind root")
def test_a_fork_bomb_hits_the_process_limit(tmp_path, zygote):
    kernel = Kernel(tmp_path, zygote, Limits(processes=40))
    printed, _ = kernel.run("import subprocess\n"
                            "children = []\n"
                            "try:\n"
                            "    for _ in range(100):\n"
                            "        children.append(subprocess.Popen(['sleep', '10']))\n"
                            "except OSError as error:\n"
                            "    print(type(error).__name__)\n"
                            "for child in children:\n"
                            "    child.kill(), child.wait()")
    kernel.shutdown()
    assert printed == "BlockingIOError\n"
    assert kernel.events() == (["reached the limit of 40 processes"] if Cgroups.usable("pids") else [])


def test_a_memory_bomb_is_stopped(tmp_path, zygote):
    """A cgroup kills the kernel at its limit, and the events say so; RLIMIT_AS (no cgroup) refuses the memory,
    at a limit the kernel itself can start under."""
    cgroup = Cgroups.usable("memory")
    kernel = Kernel(tmp_path, zygote, Limits(memory_bytes=(300 if cgroup else 1000) * 2**20))
    try:
        if cgroup:
            assert kernel.run_until_it_dies("hog = b'x' * 2 * 10**9")
        else:
            assert kernel.run("hog = b'x' * 2 * 10**9")[1] == "MemoryError"
    finally:
        kernel.shutdown()
    assert kernel.events() == (["killed for memory at 300 MiB"] if cgroup else [])


def processes_with(argument):
    """Host processes with that command-line argument."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if argument.encode() in cmdline.read_bytes().split(b"\0"):
                found.append(cmdline.parent.name)
        except OSError:
            pass
    return found


def eventually(condition, timeout=10):
    """Whether condition() becomes true within `timeout` s (a process just started may not show yet)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def kernel_records(kernel):
    return [json.loads(line) for line in (kernel.state / launcher.EVENTS_FILE).read_text().splitlines()]


def test_a_kernel_leaves_nothing_behind(tmp_path, zygote):
    """What the kernel writes stays inside; after an ordinary shutdown no process it started is left, no event."""
    marker = f"{uuid.uuid4().int % 10**6 + 10**6}"
    kernel = Kernel(tmp_path, zygote)
    runtime = kernel.state / "runtime"
    kernel.run("import subprocess\n"
               f"children = [subprocess.Popen(['sleep', '{marker}'], start_new_session=True) for _ in range(20)]\n"
               f"open({str(runtime / 'left.txt')!r}, 'w')")
    assert eventually(lambda: len(processes_with(marker)) == 20) and not (runtime / "left.txt").exists()
    kernel.shutdown()
    assert processes_with(marker) == [] and list(runtime.iterdir()) == []
    assert kernel.events() == [] and len(kernel_records(kernel)) == 1


def test_a_kernel_that_does_not_shut_down_is_killed(tmp_path, zygote):
    marker = f"{uuid.uuid4().int % 10**6 + 10**6}"
    kernel = Kernel(tmp_path, zygote)
    # Student code that refuses to stop: it ignores the interrupt jupyter_client sends first and drops the shutdown
    # request (as a C call that holds the GIL for hours would, but without depending on when that call starts).
    kernel.run(f"import signal, subprocess; child = subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
               "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
               "get_ipython().kernel.control_handlers['shutdown_request'] = lambda *message: None")
    kernel.manager.shutdown_wait_time = 1
    kernel.shutdown()
    # the supervisor cleans up once jupyter_client's SIGTERM (or SIGKILL) ends the launcher
    assert eventually(lambda: processes_with(marker) == [] and kernel.events()), kernel_records(kernel)
    assert kernel.events() == ["kernel did not shut down when asked and was killed"]


def test_a_forked_kernel_finds_nothing_of_the_one_before(tmp_path, zygote):
    """Kernels forked by one zygote follow each other: what one writes or starts is gone for the next, which
    sees neither the zygote nor its own launcher's processes, and still has what the zygote imported."""
    if zygote is None:
        pytest.skip("kernels in a sandbox of their own share nothing")
    marker = f"{uuid.uuid4().int % 10**6 + 10**6}"
    places = [f"{folder}/left" for folder in (bwrap.PRIVATE_TMP, Path.home(), bwrap.PRIVATE_SHM)] + ["left"]
    (tmp_path / "first").mkdir(), (tmp_path / "second").mkdir()
    first = Kernel(tmp_path / "first", zygote)
    first.run("import subprocess\n"
              f"child = subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
              f"for path in {places!r}:\n"
              "    open(path, 'w').write('secret')")
    first.shutdown()
    assert eventually(lambda: processes_with(marker) == [])
    second = Kernel(tmp_path / "second", zygote)
    printed, error = second.run("import os, sys\n"
                                f"print([os.path.exists(path) for path in {places!r}], "
                                "sorted(name for name in os.listdir('/proc') if name.isdigit()), "
                                "'torch' in sys.modules)")
    second.shutdown()
    assert (printed, error) == ("[False, False, False, False] ['1', '2'] True\n", "")


def test_a_killed_workers_zygote_folder_is_removed_by_its_parent(zygote):
    """A worker killed for a notebook's time limit cannot remove its zygote's folder (its socket, in the temporary
    folder): the folder is named after the process that started the zygote, and the parent's Worker.stop removes
    those of the worker it killed."""
    if zygote is None:
        pytest.skip("no zygote, no folder")
    assert kernelspec.zygote_folders(os.getpid()) == [zygote.folder]
    worker = Worker()
    worker.start()
    left = Path(tempfile.mkdtemp(prefix=kernelspec.zygote_folder_prefix(worker.process.pid)))  # as its zygote would
    worker.stop()
    assert not left.exists()


def test_without_a_zygote_workers_start_kernels_one_by_one(monkeypatch, tmp_path, capsys):
    """A fork server that cannot start says why; the worker then starts each kernel in a sandbox of its own,
    without trying again for every student."""
    failing = [sys.executable, "-c", "import sys; sys.stderr.write('no namespaces here'); sys.exit(1)"]
    monkeypatch.setattr(kernelspec, "zygote_command", lambda *arguments: failing)
    with pytest.raises(kernelspec.SandboxUnavailable, match="no namespaces here"):
        kernelspec.Zygote([ROOT])
    starts = []

    def unavailable_zygote(hidden):
        starts.append(hidden)
        raise kernelspec.SandboxUnavailable("no namespaces here")

    monkeypatch.setattr(kernelspec, "Zygote", unavailable_zygote)
    worker_state = WorkerState()  # what one worker process keeps from one job to the next, its zygotes too
    assert [worker_state.zygote_for([ROOT], tmp_path) for _ in range(3)] == [None] * 3 and len(starts) == 1
    assert "kernels start one by one" in capsys.readouterr().err


def test_check_available_says_what_to_do_without_bwrap(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(kernelspec.SandboxUnavailable, match="apt-get install bubblewrap"):
        kernelspec.check_available()


def test_events_describe_what_happened():
    limits = {"memory_bytes": 4 * 2**30, "processes": 256, "cpu_seconds": 1200}
    record = {"limits": limits, "exit_code": 0, "oom_kills": 0, "process_limit_hits": 0, "stopped_by_grader": False}
    assert kernelspec.describe(record) == []
    assert kernelspec.describe({**record, "exit_code": 137, "oom_kills": 1}) == ["killed for memory at 4 GiB"]
    assert kernelspec.describe({**record, "exit_code": 137}) == ["kernel died (killed by SIGKILL)"]
    assert kernelspec.describe({**record, "exit_code": 3}) == ["kernel died (exit code 3)"]
    assert kernelspec.describe({**record, "exit_code": 152}) == ["stopped after 1200 s of CPU time"]
    assert kernelspec.describe({**record, "exit_code": 137, "stopped_by_grader": True}) == [
        "kernel did not shut down when asked and was killed"]


def test_the_events_of_a_kernel_that_died_end_with_its_last_line_on_stderr():
    limits = {"memory_bytes": 4 * 2**30, "processes": 256, "cpu_seconds": 1200}
    record = {"limits": limits, "exit_code": 1, "oom_kills": 0, "process_limit_hits": 0, "stopped_by_grader": False,
              "stderr_last_lines": ["Traceback (most recent call last):", "ImportError: no ipykernel"]}
    assert kernelspec.describe(record) == ["kernel died (exit code 1): ImportError: no ipykernel"]
    assert kernelspec.describe({**record, "exit_code": 139}) == [
        "kernel died (killed by SIGSEGV): ImportError: no ipykernel"]
    assert kernelspec.describe({**record, "exit_code": 137, "oom_kills": 1}) == ["killed for memory at 4 GiB"]
    assert kernelspec.describe({**record, "stderr_last_lines": []}) == ["kernel died (exit code 1)"]


# ---- a real nbgrader autograde of a toy assignment, with the sandbox's options ----

def cell(kind, source, grade_id, **nbgrader):
    metadata = {"nbgrader": {"grade_id": grade_id, "schema_version": 3, "grade": False, "solution": False,
                             "locked": False, **nbgrader}}
    make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
    return make(source, metadata=metadata)


def write_notebook(notebook, path):
    path.parent.mkdir(parents=True)
    nbformat.write(notebook, path)


def test_nbgrader_autogrades_in_the_sandbox(tmp_path, monkeypatch, zygote):
    course = tmp_path / "course"
    source = nbformat.v4.new_notebook(cells=[
        cell("code", "def answer():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION", "answer",
             solution=True),
        cell("code", "assert answer() == 42\n### BEGIN HIDDEN TESTS\nassert answer() != 41\n### END HIDDEN TESTS",
             "test_answer", grade=True, locked=True, points=1)])
    source.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    write_notebook(source, course / "source" / "toy" / "toy.ipynb")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # alembic
    config = Config()
    config.CourseDirectory.root = str(course)
    assert NbGraderAPI(config=config).generate_assignment("toy")["success"]

    submission = nbformat.read(course / "release" / "toy" / "toy.ipynb", as_version=4)
    submission.cells[0].source = (  # the student's answer, plus a look around
        "import json, os\n"
        "def answer():\n    return 42\n"
        f"print(json.dumps({{'cwd': sorted(os.listdir('.')), 'course': os.listdir({str(course)!r}), "
        f"'grading': os.environ.get('NBGRADER_EXECUTION')}}))")
    submission.cells.insert(1, nbformat.v4.new_code_cell("while True:\n    pass"))  # stopped by the cell timeout
    write_notebook(submission, course / "submitted" / "alice" / "toy" / "toy.ipynb")

    options, env = kernelspec.nbgrader_launch(Limits(), tmp_path / "state", [course, ROOT], zygote)
    subprocess.run([sys.executable, "-m", "nbgrader", "autograde", "toy", "--student=alice",
                    f"--CourseDirectory.root={course}", "--Execute.timeout=3", *options],
                   check=True, cwd=tmp_path, env={**os.environ, **env}, capture_output=True)

    graded = nbformat.read(course / "autograded" / "alice" / "toy" / "toy.ipynb", as_version=4)
    seen = json.loads(graded.cells[0].outputs[0].text)
    # no notebook (it holds the hidden tests); the course empty but for the path to the kernel's scratch folder
    assert seen == {"cwd": [], "course": ["autograded"], "grading": "autograde"}
    assert [output.ename for output in graded.cells[1].outputs] == ["KeyboardInterrupt", "CellTimeoutError"]
    assert graded.cells[2].outputs == []  # the test passed: the kernel lived on after the interrupt
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        assert gradebook.find_submission("toy", "alice").score == 1
    assert kernelspec.kernel_events(tmp_path / "state") == []
