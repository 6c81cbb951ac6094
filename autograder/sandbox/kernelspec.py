"""A sandboxed Jupyter kernel for every student, started by nbgrader itself.

nbgrader (trusted, outside) starts each notebook's kernel from a kernelspec; `nbgrader_launch` writes one whose
command is this file run as a launcher, so the gradebook, the course and nbgrader stay outside while the
student's code runs inside bubblewrap (`bwrap`):

- its own network namespace (no network, not even the host's loopback: the kernel talks to nbgrader over ipc
  sockets it creates inside, which the launcher links from the host), its own PID, IPC and user namespaces, all
  capabilities dropped;
- the whole file system read-only; the hidden paths (the course, the repository...), /tmp, /run and $HOME of
  the host invisible (empty); the interpreter's environment bound back read-only;
- the only writable places are private and in memory: a scratch copy of the kernel's working folder (without
  its notebooks, which hold the hidden tests while nbgrader executes them) at the same path, an empty /tmp and
  $HOME, and its runtime folder (its connection file and sockets); they vanish with the kernel;
- limits: memory (a cgroup where the host has one, v1 or v2, else RLIMIT_AS), processes (cgroup pids, else
  RLIMIT_NPROC) and CPU time (RLIMIT_CPU); the whole process tree is killed when the kernel ends.

The launcher itself runs outside the sandbox, imports only the standard library, and appends what happened to
each kernel (exit code, killed for memory...) to <state_dir>/events.jsonl, which `kernel_events` reads.

With a `Zygote` (what the grading workers use), the launcher asks it for the kernel instead of starting bwrap:
the zygote is a fork server, started once in a bwrap sandbox with the same hidden paths, that has imported what
every kernel imports and forks each kernel into the same isolation as above but for the user and network
namespaces, which the kernels of one worker share with it one after the other (no network there either);
autograder/sandbox/zygote.py says how. That saves a fresh interpreter's start-up for every student.

    options, env = nbgrader_launch(Limits(), state_dir, hidden=[course, repository], zygote=None)
    subprocess.run([python, "-m", "nbgrader", "autograde", ..., *options], env={**os.environ, **env})
"""
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

KERNEL_NAME = "dgm-sandbox"
EVENTS_FILE = "events.jsonl"
# The kernel's environment: only these variables (and names with these prefixes) pass, so that no token or
# password of the grader's environment reaches student code.
PASSED_VARIABLES = {"PATH", "LANG", "LANGUAGE", "TZ", "TERM", "LD_LIBRARY_PATH", "MPLBACKEND", "PYTHONHASHSEED",
                    "PYTHONWARNINGS", "PYTHONIOENCODING", "PYTHONUNBUFFERED", "PYDEVD_DISABLE_FILE_VALIDATION"}
PASSED_PREFIXES = ("DGM_", "NBGRADER_", "LC_", "OMP_", "MKL_", "OPENBLAS_", "CUDA_", "NVIDIA_", "TORCH_")
# Read by the kernel although they may lie inside a hidden path or $HOME: bound back read-only.
NEEDED_VARIABLES = ("DGM_DATA_DIR",)
# The sandboxed kernel: ipykernel_launcher's two steps (the working folder leaves sys.path, so that a student's
# file cannot shadow a library; then the kernel app), and an exit without the interpreter's teardown once the
# kernel has answered the shutdown request: with torch loaded the teardown takes over a second, a wait at the end
# of every notebook (measured: 1.36 s against 0.09 s with os._exit, a 2-core machine under load).
KERNEL_CODE = """\
import os, sys
if sys.path[0] == "":
    del sys.path[0]
from ipykernel.kernelapp import launch_new_instance
launch_new_instance()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)"""
INSTALL_HINT = ("install bubblewrap (as root: apt-get install bubblewrap; `make` does it where it can), "
                "or grade without a sandbox at your own risk with --unsafe-no-sandbox")


@dataclass(frozen=True)
class Limits:
    """What one student's kernel may use; the defaults suit this course."""
    memory_bytes: int = 4 * 2**30  # cgroup memory limit (v1 or v2) where the host has one, else RLIMIT_AS
    processes: int = 256  # pids controller where available, else RLIMIT_NPROC inside the user namespace
    cpu_seconds: int = 1200  # RLIMIT_CPU of the kernel
    # wall time per cell (nbgrader's Execute.timeout) and per notebook (the unit's time limit) live elsewhere


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create its namespaces here; the message says why and what to do."""


def sandbox_options():
    """bwrap's isolation options, the same for the availability check and the kernels."""
    return ["--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--disable-userns", "--cap-drop", "ALL", "--new-session", "--die-with-parent"]


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
    writable, no network, own PID namespace, limits applied; state_dir (trusted, outside the sandbox) receives
    what the launcher saw (exit code, signal, killed for memory). With a Zygote (that hides at least `hidden`
    outside its scratch root), kernels whose folders lie in that root are forked from it."""
    bwrap = bwrap_path()
    state_dir = Path(state_dir).resolve()
    runtime = state_dir / "runtime"  # the connection file, and links to the kernel's ipc sockets
    kernelspec = state_dir / "jupyter" / "kernels" / KERNEL_NAME
    for folder in (runtime, kernelspec):
        folder.mkdir(parents=True, exist_ok=True)
    runtime.chmod(0o700)
    settings = {"bwrap": bwrap, "limits": asdict(limits), "state_dir": str(state_dir), "runtime": str(runtime),
                "hidden": [str(Path(path).resolve()) for path in [*hidden, state_dir]],
                "needed": [str(Path(path).resolve()) for path in needed_paths()],
                "zygote": zygote and {"socket": str(zygote.socket), "scratch_root": str(zygote.scratch_root)}}
    (state_dir / "sandbox.json").write_text(json.dumps(settings, indent=1))
    kernel = [sys.executable, "-c", KERNEL_CODE, "-f", "{connection_file}"]
    (kernelspec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(Path(__file__).resolve()), str(state_dir / "sandbox.json"), "--", *kernel],
        "display_name": "Python 3 (sandboxed)", "language": "python",
        "interrupt_mode": "message",  # SIGINT does not cross bwrap; ipykernel interrupts itself on request
        "metadata": {"debugger": False}}, indent=1))
    jupyter_path = os.pathsep.join(filter(None, [str(state_dir / "jupyter"), os.environ.get("JUPYTER_PATH")]))
    # ipc sockets next to the connection file (TCP cannot reach the kernel's network namespace); nbgrader runs
    # one kernel at a time, and each kernel manager writes the file afresh and removes it with the sockets.
    options = [f"--Execute.kernel_name={KERNEL_NAME}", "--KernelManager.transport=ipc",
               f"--KernelManager.connection_file={runtime / 'kernel.json'}"]
    return options, {"JUPYTER_PATH": jupyter_path}


def needed_paths():
    """What the kernel must read even where it lies in a hidden path: the interpreter's environment, the data."""
    paths = {Path(sys.prefix), Path(sys.base_prefix)}
    paths.update(Path(os.environ[name]) for name in NEEDED_VARIABLES if os.environ.get(name))
    return sorted(path.resolve() for path in paths if path.exists())


class Zygote:
    """A kernel fork server (autograder/sandbox/zygote.py) for one grading worker: started once in a bwrap sandbox that
    hides `hidden` and everything below `scratch_root` (where the workers' private courses live), it imports what
    every kernel imports, then nbgrader_launch(..., zygote=it) forks each kernel from it, in a sandbox of its own.
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
    source = (Path(__file__).parent / "zygote.py").read_text()
    return [*command, sys.executable, "-c", source, str(socket_path)]


def kernel_events(state_dir):
    """Human-readable events of the kernels launched with that state_dir, e.g.
    'killed for memory at 4 GiB', 'kernel died (exit code -9)'. Empty when nothing happened."""
    path = Path(state_dir) / EVENTS_FILE
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        events += describe(json.loads(line))
    return events


def describe(record):
    """What a person should know about one kernel's end (nothing when it ended normally)."""
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
        events.append(f"kernel died (killed by {signal.Signals(code - 128).name})")
    elif code:
        events.append(f"kernel died (exit code {code})")
    return events


def size(count):
    """4294967296 -> '4 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:g} {unit}"
        count /= 1024


# ---- the launcher: everything below runs in the process the kernelspec starts, outside the sandbox ----

class Cgroups:
    """The kernel's own cgroup in each controller the host lets us use (v1 or v2, whichever carries it), or none.

    Each is created inside the launcher's own cgroup where possible, so any limit the host applies still holds."""

    def __init__(self, limits):
        self.folders = {}  # controller ("memory", "pids") -> this kernel's cgroup folder
        name = f"{KERNEL_NAME}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        for controller, settings in (("memory", memory_settings(limits)), ("pids", {"pids.max": limits.processes})):
            parent = cgroup_parent(controller)
            if parent is None:
                continue
            folder = parent / name
            try:
                folder.mkdir()
                for file, value in settings.items():
                    if (folder / file).exists():
                        (folder / file).write_text(str(value))
            except OSError:
                remove_cgroup(folder)
                continue
            self.folders[controller] = folder

    @staticmethod
    def usable(controller):
        """Whether kernels get a cgroup for `controller` ("memory", "pids") on this host."""
        return cgroup_parent(controller) is not None

    def enter(self, pid=None):
        """Move process `pid` (default: the calling one, the sandbox about to start) into every cgroup."""
        for folder in self.folders.values():
            (folder / "cgroup.procs").write_text(str(pid or os.getpid()))

    def counter(self, controller, file, key):
        """A counter such as `oom_kill` in memory.events; 0 where it does not exist."""
        try:
            lines = (self.folders[controller] / file).read_text().splitlines()
        except (KeyError, OSError):
            return 0
        return sum(int(line.split()[1]) for line in lines if line.split()[0] == key)

    def oom_kills(self):
        return self.counter("memory", "memory.events", "oom_kill") + self.counter("memory", "memory.oom_control",
                                                                                 "oom_kill")

    def process_limit_hits(self):
        return self.counter("pids", "pids.events", "max")

    def remove(self):
        """Kill whatever is left in the cgroups and remove them."""
        for folder in self.folders.values():
            remove_cgroup(folder)


def memory_settings(limits):
    """Files that limit memory, v2 and v1 names (only those that exist are written); no swap either."""
    return {"memory.max": limits.memory_bytes, "memory.swap.max": 0,
            "memory.limit_in_bytes": limits.memory_bytes, "memory.memsw.limit_in_bytes": limits.memory_bytes}


def cgroup_parent(controller):
    """The cgroup folder in which to create a kernel's cgroup for `controller`, or None where we may not."""
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    for hierarchy, controllers, path in (line.split(":", 2) for line in
                                         Path("/proc/self/cgroup").read_text().splitlines()):
        for _, mount, kind, options, *_ in mounts:
            if kind == "cgroup" and controller in controllers.split(",") and controller in options.split(","):
                return Path(mount + path) if os.access(mount + path, os.W_OK) else None  # v1: below ours
            if kind == "cgroup2" and hierarchy == "0" and not controllers:
                # v2 forbids controllers below a cgroup that holds processes, as ours usually does: then the
                # kernel's cgroup is a sibling of ours.
                own = Path(mount + path)
                for folder in (own, own.parent):
                    if folder.is_relative_to(mount) and delegate_v2(folder, controller):
                        return folder
    return None


def delegate_v2(folder, controller):
    """Whether children of this v2 cgroup folder can get `controller` (enabling it if possible)."""
    try:
        if controller not in (folder / "cgroup.controllers").read_text().split() or not os.access(folder, os.W_OK):
            return False
        if controller not in (folder / "cgroup.subtree_control").read_text().split():
            (folder / "cgroup.subtree_control").write_text(f"+{controller}")
        return True
    except OSError:  # e.g. processes in this cgroup itself ("no internal processes")
        return False


def remove_cgroup(folder):
    """Kill every process in a cgroup, then remove it."""
    for _ in range(100):
        try:
            pids = (folder / "cgroup.procs").read_text().split()
        except OSError:
            return
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        select.select([], [], [], 0.01)
    try:
        folder.rmdir()
    except OSError:
        pass


def scratch_entries(folder):
    """What of `folder` the kernel gets a scratch copy of, parents first: (kind, path) with kind 'dir', 'link'
    or 'file'; no notebooks (they hold the hidden tests while nbgrader executes them), links not followed."""
    for parent, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            path = os.path.join(parent, name)
            if name.endswith(".ipynb"):
                continue
            if os.path.islink(path):
                yield "link", path
            elif os.path.isdir(path):
                yield "dir", path
            elif os.path.isfile(path):
                yield "file", path


def file_mode(path):
    return 0o755 if os.access(path, os.X_OK) else 0o644


def scratch_copy(folder, fds):
    """bwrap options that recreate `folder`'s scratch entries in a tmpfs at the same path.

    Each file is passed as an open descriptor (appended to `fds`) that bwrap copies into the tmpfs."""
    options = []
    for kind, path in scratch_entries(folder):
        if kind == "link":
            options += ["--symlink", os.readlink(path), path]
        elif kind == "dir":
            options += ["--perms", "0755", "--dir", path]
        else:
            options += file_copy(path, fds)
    return options


def file_copy(path, fds):
    """bwrap options that copy one file (not followed if a link) into the sandbox at the same path."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    fds.append(fd)
    return ["--perms", f"{file_mode(path):04o}", "--file", str(fd), path]


def scratch_listing(folder):
    """The scratch entries of `folder` as the zygote's request carries them (files' contents in base64)."""
    import base64

    listing = []
    for kind, path in scratch_entries(folder):
        if kind == "link":
            listing.append(["link", path, os.readlink(path)])
        elif kind == "dir":
            listing.append(["dir", path, None])
        else:
            with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as file:
                listing.append(["file", path, [file_mode(path), base64.b64encode(file.read()).decode()]])
    return listing


def file_system(memory_bytes, hidden, needed):
    """bwrap options for the file system every sandbox shows: the host's read-only, fresh /dev, /proc and /run,
    private in-memory /tmp and $HOME, the hidden paths empty, the needed ones bound back read-only."""
    memory = str(memory_bytes)
    options = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/run"]
    for private in (PRIVATE_TMP, home_folder()):  # empty and writable, in memory counted against the limit
        options += ["--perms", "0700", "--size", memory, "--tmpfs", private]
    for path in hidden:
        options += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
    for path in needed:
        options += ["--ro-bind", path, path]
    return options


def read_only_again(hidden):
    """bwrap options, last before the command: the hidden folders' and /run's tmpfs read-only."""
    return [option for path in [*hidden, "/run"] if os.path.isdir(path) for option in ("--remount-ro", path)]


def existing(paths):
    return [path for path in paths if os.path.exists(path)]


def bwrap_command(settings, workdir, kernel, fds, info_fd):
    """The bwrap command line that runs `kernel` sandboxed with `workdir` as a private scratch copy; bwrap
    writes the sandbox's first process id to `info_fd`."""
    memory = str(Limits(**settings["limits"]).memory_bytes)
    hidden = existing(settings["hidden"])
    command = [settings["bwrap"], *sandbox_options(), "--hostname", "sandbox", "--info-fd", str(info_fd),
               *file_system(memory, hidden, settings["needed"])]
    # The runtime folder inside is private too: the kernel creates its sockets there; expose_sockets links them.
    command += ["--perms", "0700", "--size", memory, "--tmpfs", settings["runtime"],
                *file_copy(connection_file(kernel), fds)]
    command += ["--perms", "0755", "--size", memory, "--tmpfs", workdir, *scratch_copy(workdir, fds)]
    return [*command, *read_only_again(hidden), "--chdir", workdir, *kernel]


def kernel_environment():
    """The variables the kernel gets: an allow-list of the grader's (no JPY_PARENT_PID: ipykernel would exit)."""
    passed = {name: value for name, value in os.environ.items()
              if name in PASSED_VARIABLES or name.startswith(PASSED_PREFIXES)}
    # IPython's profile goes to the private /tmp, so that $HOME shows only what the interpreter needs.
    return {**passed, "HOME": home_folder(), "TMPDIR": PRIVATE_TMP, "IPYTHONDIR": os.path.join(PRIVATE_TMP, "ipython")}


PRIVATE_TMP = "/tmp"  # inside the sandbox: an empty tmpfs of its own over the host's /tmp
PRIVATE_SHM = "/dev/shm"  # POSIX shared memory: a fresh tmpfs in every kernel forked from a zygote


def home_folder():
    return os.environ.get("HOME", "/root")


def resource_limits(limits, cgroups):
    """{RLIMIT name: (soft, hard)} for the sandbox's first process: CPU time, no core files, and what no cgroup
    covers."""
    rlimits = {"RLIMIT_CPU": (limits.cpu_seconds, limits.cpu_seconds + 5), "RLIMIT_CORE": (0, 0)}
    if "memory" not in cgroups.folders:
        rlimits["RLIMIT_AS"] = (limits.memory_bytes, limits.memory_bytes)
    if "pids" not in cgroups.folders:
        rlimits["RLIMIT_NPROC"] = (limits.processes, limits.processes)
    return rlimits


def set_resource_limits(rlimits):
    import resource

    for name, values in rlimits.items():
        resource.setrlimit(getattr(resource, name), values)


class BwrapKernel:
    """A kernel started in a sandbox of its own by bwrap (a fresh interpreter)."""

    def __init__(self, settings, kernel, cgroups, limits):
        fds = []
        info, fds_info = os.pipe()
        try:
            command = bwrap_command(settings, os.getcwd(), kernel, fds, fds_info)
            rlimits = resource_limits(limits, cgroups)
            # bwrap gets the kernel's environment: the sandbox's first process shows its own in /proc/1/environ
            self.process = subprocess.Popen(command, pass_fds=[*fds, fds_info], stdin=subprocess.DEVNULL,
                                            env=kernel_environment(),
                                            preexec_fn=lambda: (cgroups.enter(), set_resource_limits(rlimits)))
        finally:
            for fd in [*fds, fds_info]:
                os.close(fd)
        with os.fdopen(info, "rb") as stream:
            started = stream.read()
        self.pid = json.loads(started)["child-pid"] if started else None  # None: bwrap failed, said why on stderr

    def wait(self, grader_alive):
        """Wait until the kernel ends (False) or the launcher's parent is gone (True)."""
        ended = os.pidfd_open(self.process.pid)
        try:
            ready, _, _ = select.select([ended, grader_alive], [], [])
        finally:
            os.close(ended)
        return ended not in ready

    def kill(self):
        self.process.kill()

    def exit_code(self):
        code = self.process.wait()
        return code if code >= 0 else 128 - code


class ZygoteKernel:
    """A kernel forked by the worker's Zygote into a sandbox of its own."""

    def __init__(self, settings, kernel, cgroups, limits):
        self.connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.connection.connect(settings["zygote"]["socket"])
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        with open(connection_file(kernel)) as file:
            connection_info = file.read()
        private = [PRIVATE_TMP, home_folder(), PRIVATE_SHM, settings["zygote"]["scratch_root"]]
        request = {"kernel": kernel, "cwd": os.getcwd(), "files": scratch_listing(os.getcwd()),
                   "runtime": settings["runtime"], "connection_file": connection_file(kernel),
                   "connection": connection_info, "private": existing(outermost(private)),
                   "needed": settings["needed"], "memory_bytes": limits.memory_bytes,
                   "environment": kernel_environment(),
                   "rlimits": resource_limits(limits, cgroups)}
        body = json.dumps(request).encode()
        with open(os.devnull) as stdin:
            socket.send_fds(self.connection, [struct.pack("<Q", len(body))], [stdin.fileno(), 1, 2])
        self.connection.sendall(body)
        # The fork says who it is; the kernel translates its process id into ours. Into the cgroups, then go.
        _, ancillary, _, _ = self.connection.recvmsg(1, socket.CMSG_SPACE(struct.calcsize("3i")))
        self.pid = next((struct.unpack("3i", data)[0] for level, kind, data in ancillary
                         if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)), None)
        if self.pid is not None:  # else the fork failed, and said why on stderr
            cgroups.enter(self.pid)
            self.connection.sendall(b"g")

    def wait(self, grader_alive):
        """Wait until the zygote reports the kernel's end (False) or the launcher's parent is gone (True)."""
        ready, _, _ = select.select([self.connection, grader_alive], [], [])
        return self.connection not in ready

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)  # its init and kernel follow (parent-death signals)
        except (ProcessLookupError, TypeError):  # gone, or never started
            pass

    def exit_code(self):
        """The kernel's exit code as the zygote saw it; 1 where the zygote could not say (it died)."""
        reply = self.connection.recv(4)
        self.connection.close()
        return struct.unpack("<i", reply)[0] if len(reply) == 4 else 1


def outermost(folders):
    """The folders that are not inside another of them."""
    return sorted({folder for folder in folders
                   if not any(folder != other and Path(folder).is_relative_to(other) for other in folders)})


def forked_from_zygote(settings):
    """Whether the launcher asks the zygote: there is one, and the kernel's folders lie where it can make them."""
    zygote = settings.get("zygote")
    if not zygote:
        return False
    roots = [PRIVATE_TMP, zygote["scratch_root"]]
    return all(any(Path(path).is_relative_to(root) for root in roots) for path in (os.getcwd(), settings["runtime"]))


def supervise(settings, kernel, grader_alive):
    """Run the sandboxed kernel until it ends or the launcher dies (EOF on `grader_alive`); record what happened.

    Runs in its own session, so the signals nbgrader sends to the launcher's process group (a SIGKILL when the
    kernel does not stop) leave it alive to clean up."""
    limits = Limits(**settings["limits"])
    cgroups = Cgroups(limits)
    links = []
    try:
        start = ZygoteKernel if forked_from_zygote(settings) else BwrapKernel
        sandbox = start(settings, kernel, cgroups, limits)
        links = expose_sockets(connection_file(kernel), sandbox.pid)
        stopped_by_grader = sandbox.wait(grader_alive)
        if stopped_by_grader:
            sandbox.kill()
        code = sandbox.exit_code()
        record = {"kernel": Path(connection_file(kernel)).stem, "exit_code": code,
                  "oom_kills": cgroups.oom_kills(), "process_limit_hits": cgroups.process_limit_hits(),
                  "stopped_by_grader": stopped_by_grader, "limits": asdict(limits),
                  "enforced_by_cgroup": sorted(cgroups.folders)}
        with open(Path(settings["state_dir"]) / EVENTS_FILE, "a") as events:
            events.write(json.dumps(record) + "\n")
        return code
    finally:
        cgroups.remove()
        remove_links(links)


def expose_sockets(connection_file, pid):
    """Make the ipc sockets that the kernel creates in its private runtime folder reachable from the host: a link
    at each socket's host path into the root of the sandbox's process `pid` (/proc/PID/root/...). The kernel
    writes nothing to the host. Returns the links made (none without a sandbox)."""
    if pid is None:
        return []
    root = f"/proc/{pid}/root"
    connection = json.loads(Path(connection_file).read_text())
    links = []
    for name in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
        socket_path = f"{connection['ip']}-{connection[name]}"
        link = Path(socket_path)
        link.unlink(missing_ok=True)  # a link left by an earlier kernel that was killed
        link.symlink_to(root + socket_path)
        links.append((link, root + socket_path))
    return links


def remove_links(links):
    """Remove our links, unless a later kernel already replaced one with its own."""
    for link, target in links:
        if link.is_symlink() and os.readlink(link) == target:
            link.unlink()


def connection_file(kernel):
    return kernel[kernel.index("-f") + 1]


def launch(settings_file, kernel):
    """The kernelspec's command: start a supervisor in its own session and wait for it."""
    import ctypes

    # Die with the nbgrader process that started us (a killed nbgrader must not leave kernels running);
    # the supervisor sees our pipe close and kills the sandbox.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    settings = json.loads(Path(settings_file).read_text())
    grader_alive, launcher_alive = os.pipe()
    supervisor = os.fork()
    if supervisor == 0:
        os.close(launcher_alive)
        os.setsid()
        code = 1
        try:
            code = supervise(settings, kernel, grader_alive)
        finally:
            os._exit(code)
    os.close(grader_alive)
    _, status = os.waitpid(supervisor, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    separator = sys.argv.index("--")
    sys.exit(launch(sys.argv[1], sys.argv[separator + 1:]))
