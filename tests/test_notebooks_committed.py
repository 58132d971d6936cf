"""The committed bandit notebooks read well before they are run, and the README lists every notebook.

``pytest --nbval-lax`` (the notebooks in ``testpaths``) re-runs every notebook and fails on any error, so every
``assert`` in them, the hidden exercise solutions included, is checked there. These tests check the files as
committed: executed top to bottom in one clean run, nothing a reader cannot use, every exercise with a solution.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BANDIT_NOTEBOOKS = sorted((ROOT / "notebooks").glob("0[1-4]*.ipynb"))
RAW_WIDGET_TEXT = "interactive(children="


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _text(output: dict) -> str:
    if output["output_type"] == "stream":
        return "".join(output["text"])
    return "".join(output.get("data", {}).get("text/plain", ""))


def test_the_bandit_notebooks_are_the_expected_ones():
    """Notebooks 1-4 and the lessons split from 4 (4b-4e), which sort between 04 and 05."""
    names = [path.name for path in BANDIT_NOTEBOOKS]
    assert names[:4] == [
        "01_bradley_terry.ipynb",
        "02_kl_constrained_rl.ipynb",
        "03_from_optimum_to_dpo.ipynb",
        "04_gradient_and_variants.ipynb",
    ]
    assert [name[:3] for name in names[4:]] == ["04b", "04c", "04d", "04e"]
    assert sorted([*names, "05_the_sentiment_task.ipynb"])[-1] == "05_the_sentiment_task.ipynb"


@pytest.mark.parametrize("path", BANDIT_NOTEBOOKS, ids=lambda path: path.stem)
def test_committed_from_one_clean_run(path):
    """Every code cell ran, in order (execution counts 1, 2, 3, ...), with no error and nothing written to stderr."""
    code = [cell for cell in _cells(path) if cell["cell_type"] == "code"]
    assert [cell["execution_count"] for cell in code] == list(range(1, len(code) + 1))
    for index, cell in enumerate(code):
        for output in cell["outputs"]:
            assert output["output_type"] != "error", (index, output.get("ename"), output.get("evalue"))
            assert output.get("name") != "stderr", (index, _text(output)[:300])


@pytest.mark.parametrize("path", BANDIT_NOTEBOOKS, ids=lambda path: path.stem)
def test_no_raw_widget_text_and_no_widget_state(path):
    """No output shows ``interactive(children=...)`` (an ipywidgets view saved in a file shows as that text)."""
    notebook = json.loads(path.read_text())
    assert "widgets" not in notebook["metadata"]
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            assert "application/vnd.jupyter.widget-view+json" not in output.get("data", {})
            assert RAW_WIDGET_TEXT not in _text(output)


@pytest.mark.parametrize("path", BANDIT_NOTEBOOKS, ids=lambda path: path.stem)
def test_every_exercise_has_a_checked_solution(path):
    """Each numbered exercise has a collapsed solution cell 'Solution to exercise N' that asserts something."""
    cells = _cells(path)
    exercises_cell = next(cell for cell in cells if "## Exercises" in "".join(cell["source"]))
    exercises_text = "".join(exercises_cell["source"]).split("## Exercises", 1)[1]
    numbers = [int(number) for number in re.findall(r"^(\d+)\. ", exercises_text, flags=re.MULTILINE)]
    assert numbers == list(range(1, len(numbers) + 1)) and numbers, numbers
    solutions = {}
    for cell in cells:
        source = "".join(cell["source"])
        found = re.match(r"# Solution to exercise (\d+)\n", source)
        if found and cell["cell_type"] == "code":
            solutions[int(found.group(1))] = cell
    assert sorted(solutions) == numbers
    for number, cell in solutions.items():
        assert "assert" in "".join(cell["source"]), f"solution {number} checks nothing"
        assert cell["metadata"].get("jupyter", {}).get("source_hidden"), f"solution {number} is not collapsed"
        assert cell["execution_count"] is not None


def test_optional_deep_sections_are_marked():
    """The Fisher information section of notebook 1 (and its graph Laplacian) is marked optional."""
    cells = _cells(ROOT / "notebooks" / "01_bradley_terry.ipynb")
    markdown = [
        line for cell in cells if cell["cell_type"] == "markdown" for line in "".join(cell["source"]).splitlines()
    ]
    fisher = [line for line in markdown if line.startswith("#") and "Fisher" in line]
    assert fisher and all("Optional" in line for line in fisher), fisher


def test_readme_lists_every_notebook():
    """The README's notebook list names every file in notebooks/."""
    readme = (ROOT / "README.md").read_text()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"`{path.name}`" in readme, path.name


JUPYTERLAB_MAX_NUMBER_OUTPUTS = 50  # JupyterLab's notebook setting maxNumberOutputs: past it, "show more outputs"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda path: path.stem)
def test_every_output_shows_without_a_click(path):
    """No code cell holds more outputs than JupyterLab shows before its "show more outputs" button (progress bars
    are widget outputs and are dropped by ``tools/execute_notebooks.py``; a flood of them would hide the figures)."""
    for index, cell in enumerate(_cells(path)):
        assert len(cell.get("outputs", [])) < JUPYTERLAB_MAX_NUMBER_OUTPUTS, (index, len(cell["outputs"]))
