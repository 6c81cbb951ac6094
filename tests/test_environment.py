"""pyproject.toml (pip, used here) and environment.yml (conda, for people elsewhere) describe one environment."""
import re
import tomllib

import yaml

from autograder.course import ROOT

CONDA_NAMES = {"pytorch": "torch"}  # conda-forge's name -> PyPI's name


def name_of(requirement):
    return re.split(r"[<>=!\[ ]", requirement, maxsplit=1)[0].lower()


def test_pyproject_and_environment_yml_list_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_names = {name_of(r) for r in project["dependencies"] + sum(project["optional-dependencies"].values(), [])}
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda_names = set()
    for entry in conda:
        if isinstance(entry, dict):
            conda_names |= {name_of(r) for r in entry["pip"]}
        elif not entry.startswith(("python", "pip")):
            conda_names.add(CONDA_NAMES.get(name_of(entry), name_of(entry)))
    assert pip_names == conda_names


def test_torch_is_pinned_for_this_machine():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in dependencies and "torchvision==0.29.1" in dependencies
