"""Open the bandit notebooks in JupyterLab in headless Chromium, run them and move every slider (`make browser-check`).

For each notebook (default: every ``notebooks/0[1-4]*.ipynb``, the tabular ones), on a copy under ``runs/``:

1. open it as committed and check that no raw widget text (``interactive(children=...``) or widget error shows;
2. run all cells through JupyterLab's own command, wait for the kernel, and check that no cell output is an
   error or a stderr stream (a warning nobody explained);
3. for every ipywidgets slider, press the right arrow key on it and check that the output of its ``interact``
   changes (a new figure is drawn);
4. save screenshots: as committed, after the run, and of each slider's widget after it moved.

JupyterLab runs on 127.0.0.1 with a random token and is stopped at the end, whatever happens. Chromium is the
system's (``--chromium``, default ``/usr/bin/chromium``): Playwright cannot download its own browsers here.
Exits 1 with a list of failures, 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # without these Chromium's own connections are refused on a closed network
    "--disable-component-update",
    "--disable-sync",
]
RAW_WIDGET_TEXT = ("interactive(children=", "Error displaying widget")
CELL_TIMEOUT_S = 240  # a whole notebook's run
SLIDER_TIMEOUT_S = 60  # one redraw after a slider moved

# JavaScript run in the page. JupyterLab exposes its application as window.jupyterapp (expose_app_in_browser).
CURRENT_OUTPUTS_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.model.cells;
  const found = [];
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    const outputs = cell.toJSON().outputs || [];
    found.push({index: i, count: cell.toJSON().execution_count, outputs: outputs.map(o => ({
      type: o.output_type, name: o.name || null, text: o.output_type === 'stream' ? String(o.text).slice(0, 500)
        : o.output_type === 'error' ? `${o.ename}: ${o.evalue}` : ''}))});
  }
  return found;
}"""
BUSY_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const prompts = Array.from(panel.node.querySelectorAll('.jp-InputArea-prompt')).map(p => p.textContent);
  return {status: kernel ? kernel.status : 'none', running: prompts.filter(t => t.includes('*')).length};
}"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


LAB_SETTINGS = {
    # every cell in the DOM (no windowing), so that the page's text and widgets can be checked
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # no "get notified about Jupyter news?" pop-up over the screenshots, and no fetch of the news
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
}


def _start_lab(root: Path, port: int, token: str, log_path: Path) -> subprocess.Popen:
    """JupyterLab serving ``root`` on 127.0.0.1, in its own process group so that stopping it ends its kernels.

    Its user settings live in a fresh directory next to the log (``LAB_SETTINGS``), never in the user's own.
    """
    settings = log_path.parent / "lab-settings"
    for name, values in LAB_SETTINGS.items():
        plugin_dir, file_name = name.rsplit("/", 1)
        (settings / plugin_dir).mkdir(parents=True, exist_ok=True)
        (settings / plugin_dir / file_name).write_text(json.dumps(values))
    environment = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(settings)}
    command = [
        str(Path(sys.executable).parent / "jupyter"),
        "lab",
        "--no-browser",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        "--ServerApp.allow_root=True",  # CI machines often run as root
        "--ServerApp.terminals_enabled=False",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.extension_manager=readonly",  # no queries to PyPI for extensions
        "--LabApp.news_url=",  # no news feed fetched from the internet
        "--LabServerApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = log_path.open("w")
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=environment, start_new_session=True
    )


def _wait_for_lab(port: int, token: str, process: subprocess.Popen, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {process.returncode} before it answered")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2) as answer:
                json.load(answer)
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer on port {port} within {timeout_s:.0f} s")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to JupyterLab's process group (the server and its kernels), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _open(page: Page, port: int, token: str, name: str) -> None:
    """Open one notebook in a fresh workspace (no layout restored from an earlier notebook) and wait for its kernel."""
    workspace = Path(name).stem.replace("_", "-")
    page.goto(f"http://127.0.0.1:{port}/lab/workspaces/{workspace}/tree/{name}?reset&token={token}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.content", timeout=60_000)  # fmt: skip
    page.wait_for_function(
        "() => { const p = window.jupyterapp.shell.currentWidget; return p.sessionContext && "
        "p.sessionContext.session && p.sessionContext.session.kernel && "
        "p.sessionContext.session.kernel.status === 'idle'; }",
        timeout=90_000,
    )
    page.wait_for_timeout(1500)  # widgets restored from the notebook's saved state render asynchronously


def _visible_raw_widget_text(page: Page) -> list[str]:
    text = page.locator(".jp-NotebookPanel").inner_text()
    return [marker for marker in RAW_WIDGET_TEXT if marker in text]


def _run_all(page: Page) -> float:
    started = time.monotonic()
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_timeout(1000)
    deadline = started + CELL_TIMEOUT_S
    idle_polls = 0
    while time.monotonic() < deadline:
        busy = page.evaluate(BUSY_JS)
        idle_polls = idle_polls + 1 if busy["status"] == "idle" and busy["running"] == 0 else 0
        if idle_polls >= 3:  # idle three polls in a row: not just between two cells
            return time.monotonic() - started
        page.wait_for_timeout(500)
    raise TimeoutError(f"the notebook did not finish within {CELL_TIMEOUT_S} s")


def _output_problems(page: Page) -> list[str]:
    problems = []
    for cell in page.evaluate(CURRENT_OUTPUTS_JS):
        if cell["count"] is None:
            problems.append(f"cell {cell['index']} did not run")
        for output in cell["outputs"]:
            if output["type"] == "error":
                problems.append(f"cell {cell['index']} raised {output['text']}")
            elif output["type"] == "stream" and output["name"] == "stderr":
                problems.append(f"cell {cell['index']} wrote to stderr: {output['text']!r}")
    return problems


def _widget_output(container) -> str:
    """What an interact shows: the image data of its figures (or its text, when it draws none)."""
    output = container.locator(".widget-output")
    images = output.locator("img")
    if images.count():
        return "|".join(images.nth(i).get_attribute("src") or "" for i in range(images.count()))
    return output.inner_text()


def _move_sliders(page: Page, stem: str, out: Path) -> tuple[int, list[str]]:
    """Press ArrowRight on every slider; each must change its interact's output. Returns (sliders moved, problems)."""
    problems, moved = [], 0
    interacts = page.locator(".jp-NotebookPanel .widget-interact")
    for index in range(interacts.count()):
        container = interacts.nth(index)
        container.scroll_into_view_if_needed()
        sliders = container.locator(".widget-slider .noUi-handle")
        if sliders.count() == 0:
            problems.append(f"interact {index} has no slider")
        for slider_index in range(sliders.count()):
            before = _widget_output(container)
            handle = sliders.nth(slider_index)
            handle.focus()
            handle.press("ArrowRight")
            deadline = time.monotonic() + SLIDER_TIMEOUT_S
            changed = False
            while time.monotonic() < deadline:
                page.wait_for_timeout(300)
                after = _widget_output(container)
                if after and after != before and page.evaluate(BUSY_JS)["status"] == "idle":
                    changed = True
                    break
            moved += 1
            label = container.locator(".widget-slider").nth(slider_index).inner_text().strip().replace("\n", " ")
            if not changed:
                problems.append(f"interact {index}, slider {slider_index} ({label}): output did not change")
            container.screenshot(path=str(out / f"{stem}-interact{index}-slider{slider_index}.png"))
    return moved, problems


def check_notebook(page: Page, port: int, token: str, name: str, out: Path) -> tuple[dict, list[str]]:
    stem = Path(name).stem
    problems = []
    _open(page, port, token, name)
    raw = _visible_raw_widget_text(page)
    if raw:
        problems.append(f"as committed, the notebook shows raw widget text: {raw}")
    page.screenshot(path=str(out / f"{stem}-committed.png"))
    committed = page.locator(".jp-NotebookPanel .jp-OutputArea-output:has(.widget-interact), "
                             ".jp-NotebookPanel .jp-OutputArea-output:has-text('interactive(')")  # fmt: skip
    for index in range(committed.count()):
        committed.nth(index).scroll_into_view_if_needed()
        committed.nth(index).screenshot(path=str(out / f"{stem}-committed-interact{index}.png"))
    seconds = _run_all(page)
    problems += _output_problems(page)
    page.screenshot(path=str(out / f"{stem}-executed.png"))
    sliders, slider_problems = _move_sliders(page, stem, out)
    problems += slider_problems
    if sliders == 0:
        problems.append("no slider found: the interact widgets did not render")
    page.evaluate("() => window.jupyterapp.commands.execute('kernelmenu:shutdown')")
    return {"notebook": name, "run_seconds": round(seconds, 1), "sliders_moved": sliders}, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebook files (default: notebooks/0[1-4]*.ipynb)")
    parser.add_argument("--out", default="runs/browser-check", help="screenshots, notebook copies and the log")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium binary Playwright drives")
    args = parser.parse_args(argv)
    notebooks = [Path(path) for path in args.notebooks] or sorted((ROOT / "notebooks").glob("0[1-4]*.ipynb"))
    out = Path(args.out).resolve()
    work = out / "notebooks"  # copies: JupyterLab may save what it ran, and the committed files must not change
    shutil.rmtree(out, ignore_errors=True)
    work.mkdir(parents=True)
    for notebook in notebooks:
        shutil.copy(notebook, work / notebook.name)
    port, token = _free_port(), secrets.token_hex(16)
    started = time.monotonic()
    lab = _start_lab(work, port, token, out / "jupyterlab.log")
    results, failures = [], []
    try:
        _wait_for_lab(port, token, lab)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for notebook in notebooks:
                result, problems = check_notebook(page, port, token, notebook.name, out)
                results.append(result)
                failures += [f"{notebook.name}: {problem}" for problem in problems]
                status = "ok" if not problems else f"{len(problems)} problem(s)"
                print(f"{notebook.name}: ran in {result['run_seconds']} s, {result['sliders_moved']} slider(s) moved, "
                      f"{status}", flush=True)  # fmt: skip
            browser.close()
    finally:
        _stop(lab)
    total = time.monotonic() - started
    (out / "summary.json").write_text(json.dumps({"seconds": round(total, 1), "notebooks": results}, indent=2) + "\n")
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"browser check: {len(notebooks)} notebook(s), {len(failures)} failure(s), {total:.0f} s; pictures in {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
