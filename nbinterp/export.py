"""Exporting notebooks with nbinterp views to HTML that works offline.

nbconvert's HTML exporter shows a widget output as the live widget whenever
the notebook stores that widget's state (nbclient stores it on
`--execute`), and loads @jupyter-widgets/html-manager from unpkg to draw it:
blank offline, and the view's picture in the same output is dropped. This
preprocessor turns every widget output that carries a picture (each nbinterp
view's `image/png`) into that picture and every other widget output into its
text form (a progress bar's last text, say), and drops the stored widget
state, so the page loads no widget manager and fetches nothing for widgets:

    jupyter nbconvert --to html --execute \\
        --HTMLExporter.preprocessors=nbinterp.export.StaticViews notebook.ipynb

With `--StaticViews.keep_live_widgets=True` widgets without a picture stay
live (drawn by the html-manager from unpkg, so only online), with the state
they need.
"""

from __future__ import annotations

import json
import re
from typing import Any

from nbconvert.preprocessors import Preprocessor
from traitlets import Bool

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
MODEL_REFERENCE = re.compile(r"IPY_MODEL_([0-9a-zA-Z_-]+)")


class StaticViews(Preprocessor):
    """Every widget output with an `image/png` becomes that picture, every
    other one its text, unless `keep_live_widgets`; widget state that no live
    widget output reaches is removed (with none left, the page loads no
    widget manager at all)."""

    keep_live_widgets = Bool(False, help="Leave widgets without a picture live (needs unpkg.com)").tag(config=True)

    def preprocess(self, nb: Any, resources: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        pictured: set[str] = set()
        live: set[str] = set()
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                view = data.get(WIDGET_VIEW)
                if not isinstance(view, dict):
                    continue
                if "image/png" in data or not self.keep_live_widgets:
                    del data[WIDGET_VIEW]
                    output.get("metadata", {}).pop(WIDGET_VIEW, None)
                    pictured.add(view.get("model_id", ""))
                else:
                    live.add(view.get("model_id", ""))
        if pictured:
            _keep_state_of(nb, live)
        return nb, resources


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
