"""The project's set-up files agree with each other."""

from pathlib import Path

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_mirrors_pyproject():
    """environment.yml installs exactly pyproject's dependencies and dev extra, with the same specifiers."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [item["pip"] for item in environment["dependencies"] if isinstance(item, dict)]
    assert len(pip_sections) == 1, "environment.yml must have exactly one pip: section"
    pip_requirements = set(pip_sections[0])
    assert "-e ." in pip_requirements, "environment.yml must install the package itself (-e .)"
    assert pip_requirements - {"-e ."} == expected


def test_environment_yml_python_matches_requires_python():
    """Both files ask for the same minimum Python."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert f"python{requires}" in environment["dependencies"]


def test_ci_runs_the_readme_test_command():
    """.ci/run calls `make test`, the command the README gives."""
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_every_test_the_readme_names_exists():
    """The README's pitfall table points at tests by `file::name`; each must be a test function in that file."""
    import re

    readme = (ROOT / "README.md").read_text()
    references = re.findall(r"`(tests/\w+\.py)((?:::\w+)?)`((?:, `::\w+`)*)", readme)
    assert references, "the README names no tests"
    for path, first, more in references:
        source = (ROOT / path).read_text()
        for name in [first, *re.findall(r"::\w+", more)]:
            if name:
                assert f"def {name.removeprefix('::')}(" in source, f"{path}{name}"
