"""Re-execute notebooks top to bottom in place, keeping only what a reader can use before running them.

    python tools/execute_notebooks.py notebooks/01_bradley_terry.ipynb ...   (`make notebooks` runs the bandit ones)

Each notebook runs in a fresh kernel from its own directory, as ``pytest --nbval-lax`` runs it. Then:

- outputs that only a live kernel can show are dropped: an ipywidgets view saved in a file displays as the raw text
  ``interactive(children=(...))`` in JupyterLab and on GitHub (the widget's state is not restored), so the output of an
  ``interact`` cell is removed, and so is the widget state in the notebook's metadata; every such cell is preceded by a
  static figure drawn for the widget's default values;
- execution timestamps are not recorded, so that a re-run changes a notebook only where its outputs change.

A cell that raises stops the run with the error, and the notebook on disk is left as it was.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def strip_widget_outputs(notebook: nbformat.NotebookNode) -> int:
    """Drop every output that shows a widget, and the saved widget state; return how many outputs went."""
    dropped = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept = [output for output in cell.outputs if WIDGET_VIEW not in output.get("data", {})]
        dropped += len(cell.outputs) - len(kept)
        cell.outputs = kept
    notebook.metadata.pop("widgets", None)
    return dropped


def execute(path: Path, timeout_s: int) -> None:
    notebook = nbformat.read(path, as_version=4)
    started = time.monotonic()
    client = NotebookClient(
        notebook, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.record_timing = False
    client.execute()
    dropped = strip_widget_outputs(notebook)
    nbformat.write(notebook, path)
    print(f"{path}: executed in {time.monotonic() - started:.0f} s; {dropped} widget output(s) dropped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds allowed to one cell")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        execute(path, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
