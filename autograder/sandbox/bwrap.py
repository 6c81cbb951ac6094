"""What every sandbox looks like from inside: bubblewrap's isolation options, its file system (the host's read-only,
hidden paths empty, private in-memory /tmp and $HOME, a scratch copy of the kernel's working folder) and the
kernel's environment. Both sides use it: the grader (kernelspec.py, for the zygote's sandbox) and the launcher
(launcher.py, for a kernel's own sandbox), so it imports only the standard library.
"""
import base64
import os
import sys

PRIVATE_TMP = "/tmp"  # inside the sandbox: an empty tmpfs of its own over the host's /tmp
PRIVATE_SHM = "/dev/shm"  # POSIX shared memory: a fresh tmpfs in every kernel forked from a zygote
# The kernel's environment: only these variables of the grader's pass, each by its name (no prefix, which would let
# a token such as NVIDIA_API_KEY or a DGM_..._TOKEN through), so that no token or password reaches student code.
PASSED_VARIABLES = frozenset({
    "PATH", "LANG", "LANGUAGE", "TZ", "TERM", "LD_LIBRARY_PATH",
    "LC_ALL", "LC_CTYPE", "LC_COLLATE", "LC_MESSAGES", "LC_MONETARY", "LC_NUMERIC", "LC_TIME",
    "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONIOENCODING", "PYTHONUNBUFFERED", "PYDEVD_DISABLE_FILE_VALIDATION",
    "MPLBACKEND",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",  # the kernel's share of the CPUs
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUBLAS_WORKSPACE_CONFIG",  # which GPU, deterministic cuBLAS
    "DGM_DATA_DIR", "DGM_DOWNLOAD", "DGM_REFERENCE_DIR", "DGM_REFERENCE_URL",  # solutions/course_utils.py reads them
    "DGM_JUDGE_SEED",  # the seed of the hidden tests' probes, which the grader sets (grading/judge.py)
    "NBGRADER_EXECUTION",  # set by nbgrader while it autogrades: the notebooks' training cells shrink or skip
})
# Read by the kernel although they may lie inside a hidden path or $HOME: bound back read-only.
NEEDED_VARIABLES = ("DGM_DATA_DIR",)


def sandbox_options():
    """bwrap's isolation options, the same for the availability check, the kernels and (less what it must keep
    to build its forks' sandboxes) the zygote."""
    return ["--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--disable-userns", "--cap-drop", "ALL", "--new-session", "--die-with-parent"]


def home_folder():
    return os.environ.get("HOME", "/root")


def needed_paths():
    """What the kernel must read even where it lies in a hidden path or a private folder (an environment under
    /tmp or $HOME): the interpreter's environments (sys.prefix, sys.base_prefix, their site-packages, the folders
    of the links that lead from sys.executable to the interpreter), the data. Each at its real path and, where a
    symbolic link leads to it, at the path it is reached by too (the kernel starts as sys.executable and finds its
    packages below sys.prefix, as the grader does); sorted, none inside another."""
    import site

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages(),
             *map(os.path.dirname, link_chain(sys.executable))}
    paths.update(os.environ[name] for name in NEEDED_VARIABLES if os.environ.get(name))
    found = set()
    for path in map(os.path.abspath, paths):
        if os.path.exists(path):
            found.update({path, os.path.realpath(path)})
    return sorted(path for path in found if not any(path != other and is_inside(path, other) for other in found))


def link_chain(path):
    """`path` and every path its symbolic links lead through, to the file itself (absolute, not resolved)."""
    chain = [os.path.abspath(path)]
    while os.path.islink(chain[-1]) and len(chain) < 40:
        chain.append(os.path.normpath(os.path.join(os.path.dirname(chain[-1]), os.readlink(chain[-1]))))
    return chain


def is_inside(path, folder):
    return os.path.commonpath([path, folder]) == folder


def kernel_environment():
    """The variables the kernel (and the zygote) gets: an allow-list of the grader's (no JPY_PARENT_PID: ipykernel
    would exit), and private folders."""
    passed = {name: value for name, value in os.environ.items() if name in PASSED_VARIABLES}
    # IPython's profile goes to the private /tmp, so that $HOME shows only what the interpreter needs.
    return {**passed, "HOME": home_folder(), "TMPDIR": PRIVATE_TMP, "IPYTHONDIR": os.path.join(PRIVATE_TMP, "ipython")}


def file_system(memory_bytes, hidden, needed):
    """bwrap options for the file system every sandbox shows: the host's read-only, fresh /dev, /proc and /run,
    private in-memory /tmp and $HOME, the hidden paths empty, the needed ones bound back read-only."""
    memory = str(memory_bytes)
    options = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/run"]
    for private in (PRIVATE_TMP, home_folder()):  # empty and writable, in memory counted against the limit
        options += ["--perms", "0700", "--size", memory, "--tmpfs", private]
    for path in hidden:
        options += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
    # A needed path reached through a link is bound where the sandbox replaced what held it (the private folders,
    # the hidden ones); elsewhere the host's link shows, and leads to the real path, bound too.
    replaced = [PRIVATE_TMP, home_folder(), *hidden]
    for path in needed:
        if os.path.realpath(path) == path or any(is_inside(path, folder) for folder in replaced):
            options += ["--ro-bind", path, path]
    return options


def read_only_again(hidden):
    """bwrap options, last before the command: the hidden folders' and /run's tmpfs read-only."""
    return [option for path in [*hidden, "/run"] if os.path.isdir(path) for option in ("--remount-ro", path)]


def existing(paths):
    return [path for path in paths if os.path.exists(path)]


def connection_file(kernel):
    """The connection file in the kernel's command line (`... -f PATH`)."""
    return kernel[kernel.index("-f") + 1]


def bwrap_command(settings, workdir, kernel, fds, info_fd):
    """The bwrap command line that runs `kernel` sandboxed with `workdir` as a private scratch copy; bwrap
    writes the sandbox's first process id to `info_fd`. `settings`: what kernelspec.nbgrader_launch wrote."""
    memory = str(settings["limits"]["memory_bytes"])
    hidden = existing(settings["hidden"])
    command = [settings["bwrap"], *sandbox_options(), "--hostname", "sandbox", "--info-fd", str(info_fd),
               *file_system(memory, hidden, settings["needed"])]
    # The runtime folder inside is private too: the kernel creates its sockets there; the launcher links them.
    command += ["--perms", "0700", "--size", memory, "--tmpfs", settings["runtime"],
                *file_copy(connection_file(kernel), fds)]
    command += ["--perms", "0755", "--size", memory, "--tmpfs", workdir, *scratch_copy(workdir, fds)]
    return [*command, *read_only_again(hidden), "--chdir", workdir, *kernel]


# ---- the scratch copy of the kernel's working folder ----

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
    """The scratch entries of `folder` as a request to the zygote carries them (files' contents in base64); the
    zygote's `recreate` makes them."""
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
