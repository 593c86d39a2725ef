"""An executed notebook exported to HTML with the README's plain command
shows every view offline: a notebook on the bundled model (a view as a
cell's result, whose picture follows it after the cell, and one passed to
display(), whose picture goes with it) goes through `jupyter nbconvert --to
html --execute` exactly as the README writes it (no preprocessor flag: the
package's installed nbconvert config adds it), and the page is opened in
Chromium from file:// with every other request refused and recorded: none
is made, and no progress widget ("Loading weights") is left on the page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, write_notebook

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
