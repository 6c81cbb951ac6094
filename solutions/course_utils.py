"""Helpers shared by every part of the course: finding data, seeding, devices, progress bars, and a clear
message for exercises that are not done yet.

Keep this file next to the notebooks: they import it as `course_utils`.
"""
import base64
import io
import math
import os
import random
import re
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import torch

DATA_DIR_VARIABLE = "DGM_DATA_DIR"  # where the data sets live; see data_root()
DOWNLOAD_VARIABLE = "DGM_DOWNLOAD"  # set to 0 to forbid downloads
DEFAULT_DATA_DIR = "data"  # relative to the working directory, i.e. next to the notebook
REFERENCE_DIR_VARIABLE = "DGM_REFERENCE_DIR"  # where the reference weights live; see load_reference()
REFERENCE_URL_VARIABLE = "DGM_REFERENCE_URL"  # where to download them from (the book's first cell sets it)
DEFAULT_REFERENCE_DIR = "reference"  # next to the notebook: assignment.zip unpacks them there

# nbgrader sets NBGRADER_EXECUTION while it autogrades: training cells then shrink or skip.
AUTOGRADING = "NBGRADER_EXECUTION" in os.environ



def _show_warning_on_stdout(message, category, filename, lineno, file=None, line=None):
    print(warnings.formatwarning(message, category, filename, lineno, line), end="")


if AUTOGRADING:
    # nbgrader fails a test cell that writes anything to stderr. Show warnings on stdout instead, so that a
    # harmless warning (say, from PyTorch about a correct solution) costs no points but still shows in feedback.
    warnings.showwarning = _show_warning_on_stdout

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
GRIMM_URL = "https://www.gutenberg.org/cache/epub/2591/pg2591.txt"


def data_root(root=None):
    """The data folder: the argument if given, else $DGM_DATA_DIR, else ./data."""
    return Path(root or os.environ.get(DATA_DIR_VARIABLE) or DEFAULT_DATA_DIR).expanduser()


def download_allowed(download=None):
    """Downloads happen when asked for, else unless $DGM_DOWNLOAD is 0; never while autograding."""
    if AUTOGRADING:
        return False
    if download is not None:
        return download
    return os.environ.get(DOWNLOAD_VARIABLE, "1") != "0"


class DataNotFoundError(FileNotFoundError):
    """A data set is neither on disk nor downloadable; the message says where to put it."""


def make_grid(images, **options):
    """torchvision.utils.make_grid, imported on first use: importing torchvision loads torch._dynamo (about 1.6
    CPU-seconds), which every notebook would otherwise pay at its first cell, under the autograder too."""
    from torchvision.utils import make_grid as torchvision_make_grid

    return torchvision_make_grid(images, **options)


def mnist(train, transform=None, root=None, download=None):
    """torchvision's MNIST (train: the 60,000 training images, else the 10,000 test images)."""
    from torchvision.datasets import MNIST

    root = data_root(root)
    try:
        return MNIST(root, train=train, transform=transform, download=False)
    except RuntimeError:  # torchvision's "Dataset not found"
        pass
    problem = "downloads are switched off"
    if download_allowed(download):
        try:
            return MNIST(root, train=train, transform=transform, download=True)
        except Exception as error:  # no network, a mirror down, a full disk...
            problem = f"the download failed ({error})"
    raise DataNotFoundError(
        f"MNIST is not in {(root / 'MNIST' / 'raw').resolve()} and {problem}. Put the four files "
        f"{', '.join(MNIST_FILES)} (uncompressed) in that folder, or point ${DATA_DIR_VARIABLE} "
        f"(or the root argument) at the folder that holds MNIST/raw/.")


def fetch(url, path):
    """Download `url` to `path`: None when that worked, else what went wrong (nothing is left at `path`)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        urllib.request.urlretrieve(url, path)
        return None
    except Exception as error:  # no network, a mirror down, a full disk...
        path.unlink(missing_ok=True)
        return f"the download from {url} failed ({error})"


GUTENBERG_BODY = re.compile(r"^\*\*\* ?START OF (?:THE|THIS) PROJECT GUTENBERG EBOOK[^\n]*\n(.*?)"
                            r"^\*\*\* ?END OF (?:THE|THIS) PROJECT GUTENBERG EBOOK", re.MULTILINE | re.DOTALL)


def gutenberg_body(text):
    """The book alone, without Project Gutenberg's header and licence, when `text` has their markers (else the
    text as it is): in Grimms' Fairy Tales the licence is the last 19,000 characters, a third of a 10%
    validation split, and no fairy tale."""
    body = GUTENBERG_BODY.search(text)
    return body.group(1).strip() + "\n" if body else text


def text_file(path=None, root=None, download=None):
    """The text of a UTF-8 file: `path` if given, else Grimms' Fairy Tales under <data root>/text/; a Project
    Gutenberg ebook without its header and licence (gutenberg_body)."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataNotFoundError(f"No text file at {path.resolve()}: give the path of a UTF-8 text file.")
        return gutenberg_body(path.read_text(encoding="utf-8-sig"))  # -sig: a byte-order mark is not text
    path = data_root(root) / "text" / "grimms_fairy_tales.txt"
    if not path.is_file():
        problem = "downloads are switched off"
        if download_allowed(download):
            problem = fetch(GRIMM_URL, path) or problem
        if not path.is_file():
            raise DataNotFoundError(
                f"Grimms' Fairy Tales is not at {path.resolve()} and {problem}. Save Project Gutenberg "
                f"ebook 2591 as plain text (UTF-8) there, point ${DATA_DIR_VARIABLE} at the folder that "
                f"holds text/, or give the path of any UTF-8 text file.")
    return gutenberg_body(path.read_text(encoding="utf-8-sig"))  # -sig: a byte-order mark is not text


class ReferenceMismatchError(RuntimeError):
    """Reference weights do not fit the model they are loaded into; the message says why and what to do."""


def reference_file(name, root=None, download=None):
    """The path of the reference weights `name`: in `root`, else $DGM_REFERENCE_DIR, else ./reference/;
    downloaded there from $DGM_REFERENCE_URL when missing (a notebook opened from the book sets it)."""
    path = Path(root or os.environ.get(REFERENCE_DIR_VARIABLE) or DEFAULT_REFERENCE_DIR).expanduser() / name
    if path.is_file():
        return path
    url = os.environ.get(REFERENCE_URL_VARIABLE)
    if not download_allowed(download):
        problem = "downloads are switched off"
    elif not url:
        problem = f"there is no address to download it from (${REFERENCE_URL_VARIABLE})"
    else:
        problem = fetch(f"{url.rstrip('/')}/{name}", path)
        if problem is None:
            return path
    raise DataNotFoundError(
        f"The reference weights {name} are not at {path.resolve()} and {problem}. They come with the course's "
        f"assignment.zip (folder reference/) and with the book (the link under the results of this part): put "
        f"the file in that folder, point ${REFERENCE_DIR_VARIABLE} at the folder that holds it, or train the "
        f"model instead (LOAD_REFERENCE = False).")


def load_reference(model, name, root=None, download=None):
    """Load the course's reference weights `name` (a state dict saved by the reference trainer) into `model`,
    for a look at a fully trained model without training it. They fit the reference solution's layers: a model
    written with other layers gets a ReferenceMismatchError that says so (train it instead)."""
    state = torch.load(reference_file(name, root, download), map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        details = "; ".join(line.strip() for line in str(error).splitlines()[1:3])[:300]
        raise ReferenceMismatchError(
            f"The reference weights {name} do not fit your model ({details}). "
            f"They were trained with the reference solution's layers and names, which your solution may rightly "
            f"write otherwise: train your model instead (LOAD_REFERENCE = False).") from None
    model.eval()
    return model


def seed_everything(seed):
    """Seed Python, NumPy and PyTorch so that a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_training_state(path, **state):
    """Save a trainer's state (models, optimizers, history, ...) and the random generators' states to `path`, so
    that a long run can stop and go on later (load_training_state). Written whole or not at all: a run stopped
    while saving keeps the previous state."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state["rng_states"] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    partial.replace(path)


def load_checkpoint(path):
    """The trainer's checkpoint at `path` as saved, or SystemExit with what to do when there is none."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"Nothing to resume: {path} does not exist. Train without --resume first (same --out).")
    return torch.load(path, map_location="cpu", weights_only=False)  # our own file: histories, RNG states


def load_training_state(path):
    """The state save_training_state wrote to `path`, with the random generators put back where they were (the
    run goes on as if it had not stopped), or SystemExit with what to do when there is none."""
    state = load_checkpoint(path)
    rng_states = state.pop("rng_states")
    random.setstate(rng_states["python"])
    np.random.set_state(rng_states["numpy"])
    torch.set_rng_state(rng_states["torch"])
    return state


# Hidden tests, split in two: a probe runs the student's code in the student's kernel and
# returns plain observations; a judge, in the grader's own process, compares them with what it computes itself.
# The observations cross as data only: JSON, with each tensor as NumPy's .npy format (no pickle), in one output.
JUDGE_SEED_VARIABLE = "DGM_JUDGE_SEED"  # the grader's seed for a notebook's probes, set only while it grades
OBSERVATIONS_TYPE = "application/vnd.dgm.observations+json"  # the output's MIME type
PROBE_STARTED = {"probe": "started"}  # the output that marks where a probe began
OBSERVATIONS = "observations"  # the key of the output that holds what the probe observed


def send_to_judge(probe):
    """Grading only (the hidden tests call it): run `probe(seed)` on the grader's seed and display what it
    observed as data, for the judge. A first output marks where the probe began: its own outputs are not shown."""
    from IPython.display import display

    seed = int(os.environ[JUDGE_SEED_VARIABLE])
    display({OBSERVATIONS_TYPE: PROBE_STARTED}, raw=True)
    display({OBSERVATIONS_TYPE: {OBSERVATIONS: observations_to_data(probe(seed))}}, raw=True)


def observations_to_data(value):
    """A probe's observations as JSON data: numbers (inf and nan included), strings, booleans, None, lists, tuples,
    dicts with string keys, torch.Size, dtypes, devices and tensors (any device; a meta tensor keeps only its
    shape, dtype and device, having no values)."""
    if isinstance(value, torch.Tensor):
        requires_grad, value = value.requires_grad, value.detach()
        data = None
        if not value.is_meta:
            values = value.cpu()
            values = values.float() if values.dtype == torch.bfloat16 else values  # NumPy has no bfloat16
            buffer = io.BytesIO()
            np.save(buffer, values.resolve_conj().resolve_neg().numpy(), allow_pickle=False)
            data = base64.b64encode(buffer.getvalue()).decode()
        return {"tensor": {"npy": data, "shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
                           "device": value.device.type, "requires_grad": requires_grad}}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": str(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, (list, tuple, torch.Size)):
        return [observations_to_data(item) for item in value]
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return {"dict": {key: observations_to_data(item) for key, item in value.items()}}
    raise TypeError(f"a probe observes numbers, strings, tensors, dtypes, devices and lists or dicts of them, "
                    f"not {type(value).__name__}")


def observations_from_data(data):
    """The observations that observations_to_data wrote (lists for tuples and sizes; meta tensors on the meta
    device; requires_grad kept), read without trusting them: a ValueError says what is not as it writes them."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [observations_from_data(item) for item in data]
    if not (isinstance(data, dict) and len(data) == 1):
        raise ValueError(f"not an observation: {str(data)[:80]}")
    (kind, value), = data.items()
    if kind == "dict" and isinstance(value, dict):
        return {str(key): observations_from_data(item) for key, item in value.items()}
    if kind == "float" and value in ("inf", "-inf", "nan"):
        return float(value)
    if kind == "dtype" and isinstance(getattr(torch, str(value), None), torch.dtype):
        return getattr(torch, value)
    if kind == "device" and isinstance(value, str):
        return torch.device(value)
    if kind == "tensor" and isinstance(value, dict):
        return tensor_from_data(value)
    raise ValueError(f"not an observation: {str(data)[:80]}")


def tensor_from_data(value):
    dtype = getattr(torch, str(value.get("dtype")), None)
    shape = value.get("shape")
    if not isinstance(dtype, torch.dtype) or not (isinstance(shape, list) and all(type(n) is int for n in shape)):
        raise ValueError("a tensor observation without a valid dtype and shape")
    if value.get("npy") is None:
        if value.get("device") != "meta":
            raise ValueError("a tensor observation without values that is not on the meta device")
        tensor = torch.empty(shape, dtype=dtype, device="meta")
    else:
        array = np.load(io.BytesIO(base64.b64decode(value["npy"])), allow_pickle=False)
        tensor = torch.from_numpy(array.copy()).to(dtype)
        if list(tensor.shape) != shape:
            raise ValueError(f"a tensor observation of shape {list(tensor.shape)} that says {shape}")
    return tensor.requires_grad_(bool(value.get("requires_grad"))) if tensor.is_floating_point() else tensor


def default_device():
    """The first GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def progress(iterable, **kwargs):
    """A tqdm progress bar (the notebook widget in Jupyter); silent while autograding."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=AUTOGRADING or kwargs.pop("disable", False), **kwargs)


# The course's test machine: the training cells' time estimates were measured on it.
TEST_MACHINE = "a 2-core CPU"


def duration(seconds):
    """'about 40 s', 'about 7 minutes': a rough duration for a person to plan with."""
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    return f"about {round(seconds / 60):.0f} minutes"


def announce_training(what, cpu_seconds, device):
    """Print, before a training cell starts, what it trains and how long that takes on the course's test machine."""
    estimate = f"{duration(cpu_seconds)} on {TEST_MACHINE}, measured when the course was made"
    if torch.device(device).type == "cpu":
        print(f"Training {what}: {estimate} (a busy machine is slower).", flush=True)
    else:
        print(f"Training {what} on {device}, much faster than the CPU ({estimate}).", flush=True)


class NotReadyError(RuntimeError):
    """A cell needs what a cell above makes, and that cell has not run (or failed)."""


def require(namespace, cell, **expected_types):
    """Raise NotReadyError, naming `cell`, unless every keyword's name is in `namespace` with the given type.

    A plotting cell calls require(globals(), "the training cell above", samples=dict): after a failed training
    cell it then says what to run, instead of failing on a missing name or on a test's stand-in of that name.
    """
    for name, expected_type in expected_types.items():
        if name not in namespace:
            raise NotReadyError(f"`{name}` is not defined yet: run {cell} first.")
        if not isinstance(namespace[name], expected_type):
            raise NotReadyError(f"`{name}` is a {type(namespace[name]).__name__}, not what {cell} makes "
                                f"(a {expected_type.__name__}): run {cell} first.")


def unfinished_exercise(error):
    """The name of the function or method whose stub raised `error`, e.g. 'KLD' or 'VAE.forward'."""
    traceback = error.__traceback__
    if traceback is None:
        return "An exercise"
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    code = traceback.tb_frame.f_code
    return getattr(code, "co_qualname", code.co_name).rsplit("<locals>.", 1)[-1]


def explain_unfinished_exercises():
    """In IPython, report a NotImplementedError as 'exercise X is not done yet' instead of a traceback, and a
    NotReadyError by its message alone.

    The cell still fails (so an autograder counts it as failed); only the message changes.
    """
    try:
        shell = get_ipython()  # noqa: F821, defined inside IPython only
    except NameError:
        return

    def explain(shell, kind, error, traceback, tb_offset=None):
        if isinstance(error, NotReadyError):
            message = f"NotReadyError: {error}"
        else:
            message = (f"NotImplementedError: {unfinished_exercise(error)} is not done yet. Fill in its block "
                       f"marked PUT YOUR CODE HERE, run that cell, then run this one again.")
        shell._showtraceback(kind, error, [message])  # shown as the cell's error, in place of the traceback

    shell.set_custom_exc((NotImplementedError, NotReadyError), explain)
