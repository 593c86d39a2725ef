"""An executed notebook exported to HTML with the README's plain command
shows every view offline: a notebook on the bundled model (a view as a
cell's result, whose picture follows it after the cell, and one passed to
display(), whose picture goes with it) goes through `jupyter nbconvert --to
html --execute` exactly as the README writes it (no preprocessor flag: the
package's installed nbconvert config adds it), and the page is opened in
Chromium from file:// with every other request refused and recorded: none
is made, and no progress widget ("Loading weights") is left on the page.

The same for a notebook saved from real JupyterLab with "save widget state"
on: JupyterLab keeps a cell's result without its picture (it ignores the
display update), so the picture comes from the widget state."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, NotebookPage, write_notebook

PROMPT = "When Mary and John went to the store , John gave a drink to"
CELLS = [
    f"import nbinterp as ni\nmodel = ni.load()\nprompt = {PROMPT!r}",
    "ni.attention(model, prompt, layer=1, head=1)",
    "lens = ni.logit_lens(model, prompt, target='Mary')\ndisplay(lens)",
]
VIEW_CELLS = (1, 2)


def readme_export_command() -> list[str]:
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^(jupyter nbconvert --to html --execute [^\n`]*\.ipynb)\s*$", readme, re.M)
    assert commands, "README.md gives no `jupyter nbconvert --to html --execute ... NOTEBOOK.ipynb` line"
    return commands[0].split()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: Any) -> Path:
    root = tmp_path_factory.mktemp("export")
    write_notebook(root / "views.ipynb", CELLS)
    command = readme_export_command()
    command = [sys.executable, "-m", *command[:-1], "views.ipynb"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[name] = str(root / name.lower())
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    html = root / "views.html"
    assert html.is_file(), done.stderr[-3000:]
    return html


def test_every_view_shows_its_picture_offline(exported: Path, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    refused: list[str] = []
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    def only_files(route: Any) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    page.route("**/*", only_files)
    page.goto(exported.as_uri(), wait_until="load")
    shown = page.evaluate("""(cells) => {
      const all = document.querySelectorAll('.jp-Cell.jp-CodeCell');
      return cells.map((i) => {
        const imgs = [...all[i].querySelectorAll('.jp-OutputArea-output img')];
        return imgs.map((img) => {
          const box = img.getBoundingClientRect();
          const canvas = document.createElement('canvas');
          canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
          const ctx = canvas.getContext('2d');
          ctx.drawImage(img, 0, 0);
          const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
          const colours = new Set();
          for (let p = 0; p < data.length; p += 4) colours.add((data[p] << 16) | (data[p + 1] << 8) | data[p + 2]);
          return { complete: img.complete, natural: [img.naturalWidth, img.naturalHeight],
                   shown: [box.width, box.height], colours: colours.size };
        });
      });
    }""", list(VIEW_CELLS))
    placeholders = page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()
    page_text = page.inner_text("body")
    progress_widgets = page.locator(".widget-progress, progress, .progress").count()
    context.close()

    for cell, images in zip(VIEW_CELLS, shown):
        assert len(images) == 1, f"cell {cell}: {len(images)} pictures, want 1"
        image = images[0]
        assert image["complete"] and min(image["natural"]) >= 200 and min(image["shown"]) >= 150, (cell, image)
        assert image["colours"] >= 50, f"cell {cell}: the picture is nearly blank ({image['colours']} colours)"
    assert placeholders == 0, "a live-widget placeholder is left in the page (blank offline)"
    assert refused == [], f"the page asked outside for {refused}"
    assert "Loading weights" not in page_text and progress_widgets == 0, "a progress widget is left on the page"
    assert errors == []


def export_offline(notebook: Path, execute: bool) -> Path:
    """`jupyter nbconvert --to html [--execute] NOTEBOOK` as a user types it, in
    a clean Jupyter config (only the environment's, which nbinterp installs)."""
    root = notebook.parent
    command = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", *(["--execute"] if execute else []),
               notebook.name]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[name] = str(root / f"export-{name.lower()}")
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return notebook.with_suffix(".html")


SAVED_CELL = f"import nbinterp as ni\nmodel = ni.load()\nni.attention(model, {PROMPT!r}, layer=1, head=1)"
SAVE_STATE = Path("@jupyter-widgets") / "jupyterlab-manager" / "plugin.jupyterlab-settings"


def test_a_notebook_saved_from_jupyterlab_with_widget_state_exports_its_pictures(
        browser: Any, jupyter_factory: Any) -> None:
    server = jupyter_factory("lab", "saved.ipynb", [SAVED_CELL])
    settings = Path(server.log.name).parent / "jupyterlab_settings_dir" / SAVE_STATE
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"saveState": True}))  # read when the page loads, below
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = NotebookPage(context.new_page(), server)
    page.open("saved.ipynb")
    page.run_first_cell(".nbi-attention[data-drawn]")
    saved_path = server.root / "saved.ipynb"
    deadline = time.monotonic() + 60
    while True:  # the picture reaches the widget model after the cell; save until the state has it
        page.page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        time.sleep(1.0)
        saved = json.loads(saved_path.read_text())
        states = saved.get("metadata", {}).get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
        pictured = [m for m in states.get("state", {}).values()
                    if any(b.get("path") == ["_static_png"] for b in m.get("buffers", []))]
        if pictured or time.monotonic() > deadline:
            break
    assert page.unexpected_page_errors() == []
    context.close()
    assert len(pictured) == 1, "JupyterLab saved no picture in the widget state"
    outputs = [o for o in saved["cells"][0]["outputs"] if o["output_type"] == "execute_result"]
    assert len(outputs) == 1 and "image/png" not in outputs[0]["data"]  # why the state has to carry it

    html = export_offline(saved_path, execute=False)
    view = browser.new_context().new_page()
    refused: list[str] = []
    view.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file://")
               else (refused.append(route.request.url), route.abort()))
    view.goto(html.as_uri(), wait_until="load")
    images = view.evaluate("""() => [...document.querySelectorAll('.jp-OutputArea-output img')].map(
      (img) => ({ complete: img.complete, natural: [img.naturalWidth, img.naturalHeight] }))""")
    placeholders = view.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()
    view.context.close()
    assert len(images) == 1 and images[0]["complete"] and min(images[0]["natural"]) >= 200, images
    assert placeholders == 0 and refused == [], refused
