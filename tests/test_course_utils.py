"""The shared helpers: where data comes from, and what a student is told when it is missing."""
from pathlib import Path

import pytest
import torch

from solutions import course_utils


@pytest.fixture
def no_data_variables(monkeypatch):
    monkeypatch.delenv(course_utils.DATA_DIR_VARIABLE, raising=False)
    monkeypatch.delenv(course_utils.DOWNLOAD_VARIABLE, raising=False)
    monkeypatch.delenv(course_utils.REFERENCE_DIR_VARIABLE, raising=False)
    monkeypatch.delenv(course_utils.REFERENCE_URL_VARIABLE, raising=False)
    monkeypatch.setattr(course_utils, "AUTOGRADING", False)


def test_the_data_root_is_the_argument_else_the_variable_else_data(no_data_variables, monkeypatch, tmp_path):
    assert str(course_utils.data_root()) == "data"
    monkeypatch.setenv(course_utils.DATA_DIR_VARIABLE, str(tmp_path))
    assert course_utils.data_root() == tmp_path
    assert course_utils.data_root(tmp_path / "given") == tmp_path / "given"


def test_downloads_are_allowed_unless_switched_off_or_autograding(no_data_variables, monkeypatch):
    assert course_utils.download_allowed()
    assert not course_utils.download_allowed(False)
    monkeypatch.setenv(course_utils.DOWNLOAD_VARIABLE, "0")
    assert not course_utils.download_allowed()
    monkeypatch.setattr(course_utils, "AUTOGRADING", True)
    assert not course_utils.download_allowed(True)


def test_missing_mnist_says_where_to_put_the_files(no_data_variables, tmp_path):
    with pytest.raises(course_utils.DataNotFoundError) as error:
        course_utils.mnist(train=True, root=tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "train-images-idx3-ubyte" in message
    assert course_utils.DATA_DIR_VARIABLE in message


def test_a_failed_download_is_reported_with_its_cause(no_data_variables, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(course_utils.urllib.request, "urlretrieve", no_network)
    with pytest.raises(course_utils.DataNotFoundError, match="network is unreachable"):
        course_utils.text_file(root=tmp_path, download=True)
    assert not (tmp_path / "text" / "grimms_fairy_tales.txt").exists()


def test_a_missing_text_file_is_named(tmp_path):
    with pytest.raises(course_utils.DataNotFoundError, match="No text file at"):
        course_utils.text_file(tmp_path / "missing.txt")


@pytest.mark.mnist
def test_the_shared_data_loads_when_present():
    root = course_utils.data_root()
    assert len(course_utils.mnist(train=False, root=root, download=False)) == 10_000
    assert "Hansel" in course_utils.text_file(root=root, download=False)


def test_an_unfinished_exercise_is_named_by_its_function_and_class():
    class VAE:
        def forward(self):
            raise NotImplementedError

    def KLD():
        raise NotImplementedError

    for call, name in ((VAE().forward, "VAE.forward"), (KLD, "KLD")):
        with pytest.raises(NotImplementedError) as error:
            call()
        assert course_utils.unfinished_exercise(error.value) == name


def test_a_cell_that_needs_an_earlier_result_says_which_cell_to_run(capsys):
    namespace = {"samples": {0: "grid"}, "model": object()}
    course_utils.require(namespace, "the training cell above", samples=dict)
    with pytest.raises(course_utils.NotReadyError, match="`history` is not defined yet: run the training cell"):
        course_utils.require(namespace, "the training cell above", samples=dict, history=dict)
    with pytest.raises(course_utils.NotReadyError, match="`model` is a object, not what the training cell"):
        course_utils.require(namespace, "the training cell above", model=dict)


def test_training_cells_announce_their_measured_duration(capsys):
    course_utils.announce_training("the VAE for 3 epochs", 420, "cpu")
    assert capsys.readouterr().out == ("Training the VAE for 3 epochs: about 7 minutes on a 2-core CPU, measured when "
                                       "the course was made (a busy machine is slower).\n")
    course_utils.announce_training("the GPT", 40, "cuda")
    assert "the GPT on cuda, much faster than the CPU (about 40 s on a 2-core CPU" in capsys.readouterr().out


def test_reference_weights_load_from_the_folder_and_a_model_of_other_layers_is_told_why_not(
        no_data_variables, tmp_path):
    reference = torch.nn.Sequential(torch.nn.Linear(2, 3))
    torch.save(reference.state_dict(), tmp_path / "tiny.pt")
    loaded = course_utils.load_reference(torch.nn.Sequential(torch.nn.Linear(2, 3)), "tiny.pt", root=tmp_path)
    assert torch.equal(loaded[0].weight, reference[0].weight) and not loaded.training
    with pytest.raises(course_utils.ReferenceMismatchError, match="do not fit your model.*train your model instead"):
        course_utils.load_reference(torch.nn.Sequential(torch.nn.Linear(2, 4)), "tiny.pt", root=tmp_path)


def test_missing_reference_weights_are_downloaded_from_the_published_address_or_say_where_to_get_them(
        no_data_variables, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(course_utils.DataNotFoundError, match="assignment.zip.*LOAD_REFERENCE = False"):
        course_utils.reference_file("tiny.pt")
    published = tmp_path / "published"
    published.mkdir()
    torch.save({"weight": torch.ones(1)}, published / "tiny.pt")
    monkeypatch.setenv(course_utils.REFERENCE_URL_VARIABLE, published.as_uri())
    with pytest.raises(course_utils.DataNotFoundError, match="downloads are switched off"):
        course_utils.reference_file("tiny.pt", download=False)
    assert course_utils.reference_file("tiny.pt") == Path("reference") / "tiny.pt"
    assert (tmp_path / "reference" / "tiny.pt").read_bytes() == (published / "tiny.pt").read_bytes()
