"""Exporting notebooks with nbinterp views to HTML that works offline.

nbconvert's HTML exporter shows a widget output as the live widget whenever
the notebook stores that widget's state (nbclient stores it on `--execute`,
JupyterLab when "save widget state" is on), and loads
@jupyter-widgets/html-manager from unpkg to draw it: blank offline, and the
view's picture in the same output is dropped.

`StaticViews` turns every widget output that carries a picture (each nbinterp
view's `image/png`, or the picture stored in its widget state, which is
where a notebook JupyterLab saved with widget state has it for a view shown
as a cell's result) into that picture and every progress bar (tqdm's, from a
download or a loop) into one line of text with its final count, and keeps the
stored state only of widgets left live: when every widget has a picture, the
page loads no widget manager and asks nothing outside for widgets.

The page's own scripts from cdnjs go too when nothing uses them: require.js
(only live widgets and JavaScript outputs need it) and MathJax (only math
does). A notebook of views, text and plain outputs then asks nothing from
outside at all.

The package installs it for every HTML export (`etc/jupyter/
jupyter_nbconvert_config.json`, which sets `HTMLExporter.preprocessors`), so
plain `jupyter nbconvert --to html notebook.ipynb` uses it. Other libraries'
widgets without a picture stay live as nbconvert would show them; with
`--StaticViews.keep_live_widgets=False` they become their text form too.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from nbconvert.preprocessors import Preprocessor
from traitlets import Bool

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
MODEL_REFERENCE = re.compile(r"IPY_MODEL_([0-9a-zA-Z_-]+)")
PROGRESS_MODELS = ("FloatProgressModel", "IntProgressModel")
TEXT_MODELS = ("HTMLModel", "LabelModel", "HTMLMathModel")
TAG = re.compile(r"<[^>]*>")
# where a view's picture sits in its stored widget state (widgets/_picture.py STATE_KEY;
# not imported from there: that would load torch and every view into nbconvert)
PICTURE_STATE_KEY = "_static_png"
# An empty script the page loads from itself, for page scripts nothing uses
NO_SCRIPT = "data:text/javascript,"
MATH = re.compile(r"\$|\\\(|\\\[|\\begin\{")
REQUIRE = re.compile(r"\brequire(js)?\s*[\(.\[]|\bdefine\s*\(")


class StaticViews(Preprocessor):
    """Every widget output with an `image/png` becomes that picture, every
    progress bar its final text, and every other widget its text unless
    `keep_live_widgets`; widget state that no live widget output reaches is
    removed (with none left, the page loads no widget manager at all)."""

    keep_live_widgets = Bool(
        True, help="Leave widgets that have no picture and are not progress bars live (drawn from unpkg.com, so "
                   "only online); False turns them into their text form").tag(config=True)

    def preprocess(self, nb: Any, resources: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        states = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
        live: set[str] = set()
        static = False
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                view = data.get(WIDGET_VIEW)
                if not isinstance(view, dict):
                    continue
                model_id = view.get("model_id", "")
                if "image/png" not in data:
                    stored = stored_picture(states, model_id)
                    if stored is not None:
                        data["image/png"] = stored
                progress = progress_text(states, model_id)
                if "image/png" not in data and progress is None and self.keep_live_widgets:
                    live.add(model_id)
                    continue
                del data[WIDGET_VIEW]
                output.get("metadata", {}).pop(WIDGET_VIEW, None)
                if progress is not None and "image/png" not in data:
                    data.clear()
                    data["text/plain"] = progress
                static = True
        if static:
            _keep_state_of(nb, live)
        if not live and not _uses(nb, REQUIRE, ("application/javascript", "text/html"), markdown=False):
            resources["require_js_url"] = NO_SCRIPT
        if not _uses(nb, MATH, ("text/latex", "text/markdown", "text/html"), markdown=True):
            resources["mathjax_url"] = NO_SCRIPT
        return nb, resources


def _uses(nb: Any, pattern: re.Pattern[str], mimetypes: tuple[str, ...], markdown: bool) -> bool:
    """Whether a markdown cell (if `markdown`) or an output of one of the
    `mimetypes` has text matching `pattern` (application/javascript: any)."""
    for cell in nb.cells:
        if markdown and cell.get("cell_type") == "markdown" and pattern.search(cell.get("source", "")):
            return True
        for output in cell.get("outputs", []):
            for mimetype in mimetypes:
                text = output.get("data", {}).get(mimetype)
                if text is None:
                    continue
                text = "".join(text) if isinstance(text, list) else str(text)
                if mimetype == "application/javascript" or pattern.search(text):
                    return True
    return False


def stored_picture(states: dict[str, Any], model_id: str) -> str | None:
    """The base64 PNG a view stored in its widget state, or None."""
    for buffer in states.get(model_id, {}).get("buffers", []) or []:
        if buffer.get("path") == [PICTURE_STATE_KEY] and buffer.get("encoding", "base64") == "base64":
            return buffer.get("data")
    return None


def progress_text(states: dict[str, Any], model_id: str) -> str | None:
    """One line for a stored progress bar (tqdm's box of description, bar and
    counts, or a bare bar) from its last state, or None if the model is no
    progress bar. A progress bar's own text/plain is frozen at the moment it
    was displayed (0%), its state holds the final count."""
    state = states.get(model_id, {}).get("state", {})
    parts = [state] if state.get("_model_name") in PROGRESS_MODELS else [
        states.get(child, {}).get("state", {}) for child in MODEL_REFERENCE.findall(json.dumps(state.get("children", [])))
    ]
    if not any(part.get("_model_name") in PROGRESS_MODELS for part in parts):
        return None
    words = []
    for part in parts:
        name = part.get("_model_name")
        if name in PROGRESS_MODELS:
            low, high, value = (float(part.get(key, 0) or 0) for key in ("min", "max", "value"))
            description = str(part.get("description", "") or "")
            share = (value - low) / (high - low) if high > low else 1.0
            words.append(f"{description} {share:.0%}".strip())
        elif name in TEXT_MODELS:
            words.append(html.unescape(TAG.sub("", str(part.get("value", "") or ""))).replace("\u2007", " ").strip())
    return " ".join(word for word in words if word)


def _keep_state_of(nb: Any, live: set[str]) -> None:
    """Keeps the stored state of the `live` models and of every model they
    reference (layouts, children); removes the rest."""
    widgets = nb.metadata.get("widgets", {})
    states = widgets.get(WIDGET_STATE, {}).get("state", {})
    needed, todo = set(), [m for m in live if m in states]
    while todo:
        model_id = todo.pop()
        if model_id in needed:
            continue
        needed.add(model_id)
        todo += [m for m in MODEL_REFERENCE.findall(json.dumps(states[model_id].get("state", {}))) if m in states]
    for model_id in list(states):
        if model_id not in needed:
            del states[model_id]
    if not states:
        nb.metadata.pop("widgets", None)
