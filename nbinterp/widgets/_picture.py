"""Each view's static picture (a PNG of `to_figure()`), kept off the path to
the first paint.

A view shown as a cell's result goes out at once without its picture, as an
`execute_result` that carries a display id; once the cell has finished (the
kernel is still busy, so every client still listens) the picture is drawn and
sent as an `update_display_data` for that id. A notebook executed by nbclient
or nbconvert records the update in the output, so an exported notebook has the
picture. JupyterLab and Notebook 7 track display ids of `display_data` only,
so they ignore the update and the live view is not rebuilt under the user.

The picture also goes into the widget's model, as the state key
`_static_png` (a binary buffer, outside the view's traits), so a notebook
JupyterLab saves with its widget state carries the picture of a view shown
as a cell's result too; nbinterp.export puts it back into the output.

A view passed to `display(...)` (a `display_data`, whose id the frontends do
track) gets its picture drawn before it is sent, as does any view outside an
IPython kernel or with NBINTERP_EAGER_PICTURE=1 in the kernel's environment.
"""

from __future__ import annotations

import base64
import logging
import os
import time
import uuid
import weakref
from typing import Any

log = logging.getLogger("nbinterp.widgets.picture")

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
EAGER_ENV = "NBINTERP_EAGER_PICTURE"
STATE_KEY = "_static_png"  # the picture in a widget's stored state (nbinterp/export.py reads it)

# model id -> view whose bundle left without a picture, until its message is sent
_unsent: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
# (view, display id) to draw once the cell has finished
_after_cell: list[tuple["weakref.ref[Any]", str]] = []
_hooked_shells: "weakref.WeakSet[Any]" = weakref.WeakSet()


def picture_png(view: Any) -> bytes:
    """The view's picture, timed (debug log "nbinterp.widgets.picture")."""
    started = time.perf_counter()
    png = view.static_png()
    log.debug("picture of %s drawn in %.3f s", view.model_id, time.perf_counter() - started)
    return png


def defer_picture(view: Any) -> bool:
    """True if `view`'s picture will follow its display message (see the
    module docstring); False means the caller draws it now."""
    if os.environ.get(EAGER_ENV, "") not in ("", "0"):
        return False
    shell = _kernel_shell()
    if shell is None:
        return False
    if shell not in _hooked_shells:
        shell.displayhook.register_hook(_on_execute_result)
        shell.display_pub.register_hook(_on_display_data)
        shell.events.register("post_run_cell", _draw_after_cell)
        _hooked_shells.add(shell)
    _unsent[view.model_id] = view
    return True


def _kernel_shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    hooks_available = all(hasattr(getattr(shell, name, None), "register_hook") for name in ("displayhook", "display_pub"))
    return shell if hooks_available and hasattr(shell, "events") else None


def _model_id(msg: dict[str, Any]) -> str | None:
    view = msg.get("content", {}).get("data", {}).get(WIDGET_VIEW)
    return view.get("model_id") if isinstance(view, dict) else None


def _on_execute_result(msg: dict[str, Any]) -> dict[str, Any]:
    """A view as the cell's result: tag it with a display id; picture later."""
    view = _unsent.pop(_model_id(msg) or "", None)
    if view is not None:
        display_id = uuid.uuid4().hex
        msg["content"]["transient"] = {"display_id": display_id}
        _after_cell.append((weakref.ref(view), display_id))
    return msg


def _on_display_data(msg: dict[str, Any]) -> dict[str, Any]:
    """A view passed to display(): the frontends would rebuild it on an
    update, so its picture goes in now."""
    view = _unsent.pop(_model_id(msg) or "", None)
    if view is not None:
        _add_picture(view, msg["content"]["data"])
    return msg


def _draw_after_cell(*_result: Any) -> None:
    from IPython.display import update_display

    pending = list(_after_cell)
    _after_cell.clear()
    _unsent.clear()  # bundles made but never sent (a direct _repr_mimebundle_ call)
    for ref, display_id in pending:
        view = ref()
        if view is None:
            continue
        data, metadata = view.live_bundle()
        if _add_picture(view, data):
            update_display(data, raw=True, metadata=metadata, display_id=display_id)
            _store_in_model(view, base64.b64decode(data["image/png"]))


def _store_in_model(view: Any, png: bytes) -> None:
    """Puts the picture into the browser's copy of the widget model: an
    "update" message of the widget protocol with one binary buffer, so the
    frontend's saved widget state holds it (JupyterLab ignores the display
    update of a cell's result, see the module docstring)."""
    comm = getattr(view, "comm", None)
    if comm is None:
        return
    try:
        comm.send(data={"method": "update", "state": {}, "buffer_paths": [[STATE_KEY]]}, buffers=[png])
    except Exception:
        log.exception("nbinterp: the picture could not be stored in the widget's state")


def _add_picture(view: Any, data: dict[str, Any]) -> bool:
    try:
        data["image/png"] = base64.b64encode(picture_png(view)).decode("ascii")
        return True
    except Exception:
        log.exception("nbinterp: no static picture for this view")
        return False
