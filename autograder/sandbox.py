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

    options, env = nbgrader_launch(Limits(), state_dir, hidden=[course, repository])
    subprocess.run([python, "-m", "nbgrader", "autograde", ..., *options], env={**os.environ, **env})
"""
import json
import os
import select
import shutil
import signal
import subprocess
import sys
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


def nbgrader_launch(limits, state_dir, hidden):
    """Extra nbgrader command-line options and environment variables that make every kernel that nbgrader
    process starts run sandboxed: hidden paths invisible, only a scratch copy of the kernel's working folder
    writable, no network, own PID namespace, limits applied; state_dir (trusted, outside the sandbox) receives
    what the launcher saw (exit code, signal, killed for memory)."""
    bwrap = bwrap_path()
    state_dir = Path(state_dir).resolve()
    runtime = state_dir / "runtime"  # the connection file, and links to the kernel's ipc sockets
    kernelspec = state_dir / "jupyter" / "kernels" / KERNEL_NAME
    for folder in (runtime, kernelspec):
        folder.mkdir(parents=True, exist_ok=True)
    runtime.chmod(0o700)
    settings = {"bwrap": bwrap, "limits": asdict(limits), "state_dir": str(state_dir), "runtime": str(runtime),
                "hidden": [str(Path(path).resolve()) for path in [*hidden, state_dir]],
                "needed": [str(Path(path).resolve()) for path in needed_paths()]}
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

    def enter(self):
        """Move the calling process (the sandbox about to start) into every cgroup."""
        for folder in self.folders.values():
            (folder / "cgroup.procs").write_text(str(os.getpid()))

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


def scratch_copy(folder, fds):
    """bwrap options that recreate `folder` (no notebooks, links not followed) in a tmpfs at the same path.

    Each file is passed as an open descriptor (appended to `fds`) that bwrap copies into the tmpfs."""
    options = []
    for parent, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            path = os.path.join(parent, name)
            if name.endswith(".ipynb"):
                continue
            if os.path.islink(path):
                options += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                options += ["--perms", "0755", "--dir", path]
            elif os.path.isfile(path):
                options += file_copy(path, fds)
    return options


def file_copy(path, fds):
    """bwrap options that copy one file (not followed if a link) into the sandbox at the same path."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    fds.append(fd)
    return ["--perms", "0755" if os.access(path, os.X_OK) else "0644", "--file", str(fd), path]


def bwrap_command(settings, workdir, kernel, fds, info_fd):
    """The bwrap command line that runs `kernel` sandboxed with `workdir` as a private scratch copy; bwrap
    writes the sandbox's first process id to `info_fd`."""
    limits = Limits(**settings["limits"])
    memory = str(limits.memory_bytes)
    command = [settings["bwrap"], *sandbox_options(), "--hostname", "sandbox", "--info-fd", str(info_fd),
               "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/run"]
    for private in (PRIVATE_TMP, home_folder()):  # empty and writable, in memory counted against the limit
        command += ["--perms", "0700", "--size", memory, "--tmpfs", private]
    hidden = [path for path in settings["hidden"] if os.path.exists(path)]
    for path in hidden:
        command += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
    for path in settings["needed"]:
        command += ["--ro-bind", path, path]
    # The runtime folder inside is private too: the kernel creates its sockets there; expose_sockets links them.
    command += ["--perms", "0700", "--size", memory, "--tmpfs", settings["runtime"],
                *file_copy(connection_file(kernel), fds)]
    command += ["--perms", "0755", "--size", memory, "--tmpfs", workdir, *scratch_copy(workdir, fds)]
    command += [option for path in hidden if os.path.isdir(path) for option in ("--remount-ro", path)]
    command += ["--remount-ro", "/run", "--chdir", workdir]
    return [*command, *kernel]


def kernel_environment():
    """The variables the kernel gets: an allow-list of the grader's (no JPY_PARENT_PID: ipykernel would exit)."""
    passed = {name: value for name, value in os.environ.items()
              if name in PASSED_VARIABLES or name.startswith(PASSED_PREFIXES)}
    # IPython's profile goes to the private /tmp, so that $HOME shows only what the interpreter needs.
    return {**passed, "HOME": home_folder(), "TMPDIR": PRIVATE_TMP, "IPYTHONDIR": os.path.join(PRIVATE_TMP, "ipython")}


PRIVATE_TMP = "/tmp"  # inside the sandbox: an empty tmpfs of its own over the host's /tmp


def home_folder():
    return os.environ.get("HOME", "/root")


def set_resource_limits(limits, cgroups):
    """In the sandbox's first process: the rlimits, for what no cgroup covers."""
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if "memory" not in cgroups.folders:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    if "pids" not in cgroups.folders:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))


def supervise(settings, kernel, grader_alive):
    """Run the sandboxed kernel until it ends or the launcher dies (EOF on `grader_alive`); record what happened.

    Runs in its own session, so the signals nbgrader sends to the launcher's process group (a SIGKILL when the
    kernel does not stop) leave it alive to clean up."""
    limits = Limits(**settings["limits"])
    cgroups = Cgroups(limits)
    fds, links = [], []
    info, fds_info = os.pipe()
    try:
        command = bwrap_command(settings, os.getcwd(), kernel, fds, fds_info)
        # bwrap itself gets the kernel's environment: the sandbox's first process shows its own in /proc/1/environ
        sandbox = subprocess.Popen(command, pass_fds=[*fds, fds_info], stdin=subprocess.DEVNULL,
                                   env=kernel_environment(),
                                   preexec_fn=lambda: (cgroups.enter(), set_resource_limits(limits, cgroups)))
        for fd in [*fds, fds_info]:
            os.close(fd)
        links = expose_sockets(connection_file(kernel), info)
        stopped_by_grader = wait_for_either(sandbox, grader_alive)
        if stopped_by_grader:
            sandbox.kill()
        code = sandbox.wait()
        record = {"kernel": Path(connection_file(kernel)).stem, "exit_code": code if code >= 0 else 128 - code,
                  "oom_kills": cgroups.oom_kills(), "process_limit_hits": cgroups.process_limit_hits(),
                  "stopped_by_grader": stopped_by_grader, "limits": asdict(limits),
                  "enforced_by_cgroup": sorted(cgroups.folders)}
        with open(Path(settings["state_dir"]) / EVENTS_FILE, "a") as events:
            events.write(json.dumps(record) + "\n")
        return record["exit_code"]
    finally:
        cgroups.remove()
        remove_links(links)


def expose_sockets(connection_file, info):
    """Make the ipc sockets that the kernel creates in its private runtime folder reachable from the host: a link
    at each socket's host path into the sandbox's root (/proc/PID/root/...). The kernel writes nothing to the host.

    `info` is the pipe on which bwrap says the sandbox's first process id. Returns the links made."""
    with os.fdopen(info, "rb") as stream:
        started = stream.read()
    if not started:  # bwrap failed; its message is on stderr
        return []
    root = f"/proc/{json.loads(started)['child-pid']}/root"
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


def wait_for_either(sandbox, grader_alive):
    """Wait until the sandbox exits (False) or the launcher is gone (True)."""
    ended = os.pidfd_open(sandbox.pid)
    try:
        ready, _, _ = select.select([ended, grader_alive], [], [])
    finally:
        os.close(ended)
    return ended not in ready


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
