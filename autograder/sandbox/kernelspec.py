"""A sandboxed Jupyter kernel for every student, started by nbgrader itself: the grader's side.

nbgrader (trusted, outside) starts each notebook's kernel from a kernelspec; `nbgrader_launch` writes one whose
command is the launcher (launcher.py), so the gradebook, the course and nbgrader stay outside while the
student's code runs inside bubblewrap (`bwrap`):

- its own network namespace (no network, not even the host's loopback: the kernel talks to nbgrader over ipc
  sockets it creates inside, which the launcher links from the host), its own PID, IPC and user namespaces, all
  capabilities dropped;
- the whole file system read-only; the hidden paths (the course, the repository...), /tmp, /run and $HOME of
  the host invisible (empty); the interpreter's environment bound back read-only (bwrap.py);
- the only writable places are private and in memory: a scratch copy of the kernel's working folder (without
  its notebooks, which hold the hidden tests while nbgrader executes them) at the same path, an empty /tmp and
  $HOME, and its runtime folder (its connection file and sockets); they vanish with the kernel;
- limits: memory (a cgroup where the host has one, v1 or v2, else RLIMIT_AS), processes (cgroup pids, else
  RLIMIT_NPROC) and CPU time (RLIMIT_CPU); the whole process tree is killed when the kernel ends (cgroups.py).

The launcher runs outside the sandbox, imports only the standard library, and appends what happened to each
kernel (exit code, killed for memory...) to <state_dir>/events.jsonl, which `kernel_events` reads.

With a `Zygote` (what the grading workers use), the launcher asks it for the kernel instead of starting bwrap:
the zygote is a fork server, started once in a bwrap sandbox with the same hidden paths, that has imported what
every kernel imports and forks each kernel into the same isolation as above but for the user and network
namespaces, which the kernels of one worker share with it one after the other (no network there either);
zygote.py says how. That saves a fresh interpreter's start-up for every student.

    options, env = nbgrader_launch(autograder.limits.Limits(), state_dir, hidden=[course, repository], zygote=None)
    subprocess.run([python, "-m", "nbgrader", "autograde", ..., *options], env={**os.environ, **env})
"""
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from ..course import ROOT
from ..limits import Limits
from .bwrap import (PRIVATE_TMP, existing, file_system, kernel_environment, needed_paths, read_only_again,
                    sandbox_options)
from .launcher import ENFORCED_LIMITS, EVENTS_FILE

KERNEL_NAME = "dgm-sandbox"
HERE = Path(__file__).resolve().parent
INSTALL_HINT = ("install bubblewrap (as root: apt-get install bubblewrap; `make` does it where it can), "
                "or grade without a sandbox at your own risk with --unsafe-no-sandbox")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create its namespaces here; the message says why and what to do."""


def bwrap_path():
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(f"bubblewrap (bwrap) is not on PATH, so student code cannot be sandboxed: "
                                 f"{INSTALL_HINT}.")
    return bwrap


def check_available():
    """Raise SandboxUnavailable unless bubblewrap can start a sandbox here."""
    bwrap = bwrap_path()
    try:
        trial = subprocess.run([bwrap, *sandbox_options(), "--ro-bind", "/", "/", "--proc", "/proc", "true"],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SandboxUnavailable(f"{bwrap} could not be run ({error}): {INSTALL_HINT}.") from error
    if trial.returncode != 0:
        raise SandboxUnavailable(
            f"{bwrap} cannot create its namespaces here ({trial.stderr.strip() or f'exit code {trial.returncode}'}). "
            f"It needs Linux user namespaces: enable them (sysctl kernel.unprivileged_userns_clone=1, "
            f"user.max_user_namespaces > 0, or an AppArmor profile allowing bwrap; inside a container, run it "
            f"with user namespaces allowed), or grade without a sandbox at your own risk with --unsafe-no-sandbox.")


def nbgrader_launch(limits, state_dir, hidden, zygote=None):
    """Extra nbgrader command-line options and environment variables that make every kernel that nbgrader
    process starts run sandboxed: hidden paths invisible, only a scratch copy of the kernel's working folder
    writable, no network, own PID namespace, the kernel's share of `limits` (an autograder.limits.Limits)
    applied; state_dir (trusted, outside the sandbox) receives what the launcher saw (exit code, signal, killed
    for memory). With a Zygote (that hides at least `hidden` outside its scratch root), kernels whose folders lie
    in that root are forked from it."""
    state_dir = Path(state_dir).resolve()
    runtime = state_dir / "runtime"  # the connection file, and links to the kernel's ipc sockets
    settings = launcher_settings(limits, state_dir, runtime, hidden, zygote)  # first: raises without bwrap
    kernelspec = state_dir / "jupyter" / "kernels" / KERNEL_NAME
    for folder in (runtime, kernelspec):
        folder.mkdir(parents=True, exist_ok=True)
    runtime.chmod(0o700)
    (state_dir / "sandbox.json").write_text(json.dumps(settings, indent=1))
    (kernelspec / "kernel.json").write_text(json.dumps(kernel_spec(state_dir / "sandbox.json"), indent=1))
    jupyter_path = os.pathsep.join(filter(None, [str(state_dir / "jupyter"), os.environ.get("JUPYTER_PATH")]))
    # ipc sockets next to the connection file (TCP cannot reach the kernel's network namespace); nbgrader runs
    # one kernel at a time, and each kernel manager writes the file afresh and removes it with the sockets.
    options = [f"--Execute.kernel_name={KERNEL_NAME}", "--KernelManager.transport=ipc",
               f"--KernelManager.connection_file={runtime / 'kernel.json'}"]
    return options, {"JUPYTER_PATH": jupyter_path}


def launcher_settings(limits, state_dir, runtime, hidden, zygote):
    """What the launcher reads from the settings file: it imports only the standard library, so it learns the
    limits, the hidden paths and the zygote from here."""
    return {"bwrap": bwrap_path(), "limits": {name: getattr(limits, name) for name in ENFORCED_LIMITS},
            "state_dir": str(state_dir), "runtime": str(runtime),
            "hidden": [str(Path(path).resolve()) for path in [*hidden, state_dir]],
            "needed": [str(path) for path in needed_paths()],
            "zygote": zygote and {"socket": str(zygote.socket), "scratch_root": str(zygote.scratch_root)}}


def kernel_spec(settings_file):
    """The kernelspec (kernel.json): the launcher's command, with the kernel's own (kernel_main.py) after `--`."""
    kernel = [sys.executable, "-c", (HERE / "kernel_main.py").read_text(), "-f", "{connection_file}"]
    return {
        # -P: the kernel's working folder (the student's files) stays off the launcher's path; the launcher finds
        # its package through PYTHONPATH, which it does not pass on (bwrap.PASSED_VARIABLES).
        "argv": [sys.executable, "-P", "-m", "autograder.sandbox.launcher", str(settings_file), "--", *kernel],
        "env": {"PYTHONPATH": str(ROOT)},
        "display_name": "Python 3 (sandboxed)", "language": "python",
        "interrupt_mode": "message",  # SIGINT does not cross bwrap; ipykernel interrupts itself on request
        "metadata": {"debugger": False}}


class Zygote:
    """A kernel fork server (zygote.py) for one grading worker: started once in a bwrap sandbox that hides
    `hidden` and everything below `scratch_root` (where the workers' private courses live), it imports what every
    kernel imports, then nbgrader_launch(..., zygote=it) forks each kernel from it, in a sandbox of its own.
    It ends with the process that started it."""

    def __init__(self, hidden, scratch_root=None, start_seconds=600):
        self.scratch_root = Path(scratch_root or tempfile.gettempdir()).resolve()
        # Named after the process that starts it: killed, that process cannot remove it; its parent can.
        self.folder = Path(tempfile.mkdtemp(prefix=zygote_folder_prefix(os.getpid()), dir=self.scratch_root))
        self.socket = self.folder / "zygote.sock"
        self.errors = tempfile.TemporaryFile()
        hidden = [str(Path(path).resolve()) for path in hidden]
        self.process = subprocess.Popen(zygote_command(hidden, self.scratch_root, self.socket),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.errors,
                                        env=kernel_environment(), start_new_session=True)
        ready, _, _ = select.select([self.process.stdout], [], [], start_seconds)
        if not ready or self.process.stdout.readline() != b"ready\n":
            self.errors.seek(0)
            message = self.errors.read().decode(errors="replace")[-2000:] or "no message"
            self.close()
            raise SandboxUnavailable(f"the kernel fork server did not start: {message}")

    def alive(self):
        return self.process.poll() is None

    def close(self):
        self.process.kill()  # bwrap: the zygote and its forks follow (parent-death signals)
        self.process.wait()
        self.errors.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def zygote_folder_prefix(pid):
    return f"dgm-zygote-{pid}-"


def zygote_folders(pid):
    """The folders of the zygotes that process `pid` started in the temporary folder (their default scratch
    root, the one the grading workers use)."""
    return list(Path(tempfile.gettempdir()).resolve().glob(zygote_folder_prefix(pid) + "*"))


def zygote_command(hidden, scratch_root, socket_path):
    """bwrap running the zygote, listening at `socket_path`: the kernels' file system and isolation, but the
    capabilities of its own user namespace kept (as its root) so that each fork can build its sandbox; nobody
    inside can make user namespaces. Its hostname passes to the forks' own UTS namespaces."""
    isolation = [option for option in sandbox_options() if option not in ("--cap-drop", "ALL", "--disable-userns")]
    hidden = existing(hidden)
    command = [bwrap_path(), *isolation, "--uid", "0", "--gid", "0", "--cap-add", "ALL", "--hostname", "sandbox",
               *file_system(Limits().memory_bytes, hidden, [str(path) for path in needed_paths()])]
    if not scratch_root.is_relative_to(PRIVATE_TMP):
        command += ["--tmpfs", str(scratch_root)]
    folder = str(socket_path.parent)
    command += ["--bind", folder, folder, *read_only_again([*hidden, "/dev"])]
    # As text: the repository is hidden inside (zygote.py imports only the standard library and what it preloads).
    return [*command, sys.executable, "-c", (HERE / "zygote.py").read_text(), str(socket_path)]


def kernel_events(state_dir):
    """Human-readable events of the kernels launched with that state_dir, e.g. 'killed for memory at 4 GiB',
    "kernel died (exit code 1): ModuleNotFoundError: No module named 'ipykernel'". Empty when nothing happened."""
    path = Path(state_dir) / EVENTS_FILE
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        events += describe(json.loads(line))
    return events


def describe(record):
    """What a person should know about one kernel's end (nothing when it ended normally); `record`: one line that
    the launcher wrote (launcher.supervise)."""
    limits, code = record["limits"], record["exit_code"]
    events = []
    if record["process_limit_hits"]:
        events.append(f"reached the limit of {limits['processes']} processes")
    if record["oom_kills"]:
        events.append(f"killed for memory at {size(limits['memory_bytes'])}")
    elif code == 128 + signal.SIGXCPU:
        events.append(f"stopped after {limits['cpu_seconds']} s of CPU time")
    elif record["stopped_by_grader"]:
        events.append("kernel did not shut down when asked and was killed")
    elif code - 128 in signal.valid_signals():
        events.append(f"kernel died (killed by {signal.Signals(code - 128).name}){last_words(record)}")
    elif code:
        events.append(f"kernel died (exit code {code}){last_words(record)}")
    return events


def last_words(record):
    """': <the last line it wrote to stderr>' for a kernel that died, e.g. the error that stopped it at start-up;
    '' where it said nothing."""
    lines = record.get("stderr_last_lines")
    return f": {lines[-1][:200]}" if lines else ""


def size(count):
    """4294967296 -> '4 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:g} {unit}"
        count /= 1024
