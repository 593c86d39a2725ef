"""A static page that runs a view's bundled ESM against a live Python widget
without Jupyter: the page imports the bundle from a Blob URL and calls
`render({model, el})` with a stub model whose `save_changes` and `send` call
back into Python through Playwright, so validation, observers and requests
are the real ones. ~0.2 s per case instead of seconds for a notebook."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any, Callable

from ipywidgets.widgets.widget import _remove_buffers

STATIC = Path(__file__).resolve().parents[2] / "nbinterp" / "static"
CHROMIUM = "/usr/bin/chromium"


class RecordingComm:
    """Stands in for the kernel comm: keeps what the widget would send."""

    comm_id = "harness"

    def __init__(self) -> None:
        self.outbox: list[dict[str, Any]] = []

    def send(self, data: Any = None, metadata: Any = None, buffers: Any = None) -> None:
        self.outbox.append({"data": data, "buffers": [base64.b64encode(bytes(b)).decode() for b in buffers or []]})

    def on_msg(self, callback: Any) -> None:
        pass

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass

    def drain(self) -> list[dict[str, Any]]:
        out, self.outbox = self.outbox, []
        return out


_PAGE = """<!doctype html><meta charset="utf-8"><body style="margin:0">
<div id="host" style="padding: 8px"></div>
<script type="module">
const b64 = (s) => { const raw = atob(s); const u = new Uint8Array(raw.length); for (let i = 0; i < raw.length; i++) u[i] = raw.charCodeAt(i); return new DataView(u.buffer); };
const place = (state, paths, buffers) => paths.forEach((path, i) => {
  let obj = state; for (const key of path.slice(0, -1)) obj = obj[key]; obj[path[path.length - 1]] = b64(buffers[i]);
});
const boot = __BOOT__;
const state = boot.state;
place(state, boot.buffer_paths, boot.buffers);
const handlers = new Map();
const emit = (event, ...args) => (handlers.get(event) || []).slice().forEach((cb) => cb(...args));
let pending = {};
const apply = (outbox) => {
  for (const { data, buffers } of outbox) {
    if (data.method === "update") {
      place(data.state, data.buffer_paths || [], buffers);
      for (const [k, v] of Object.entries(data.state)) { state[k] = v; emit(`change:${k}`); }
    } else if (data.method === "custom") {
      emit("msg:custom", data.content, buffers.map(b64));
    }
  }
};
window.nbiSent = [];
const model = {
  get: (k) => state[k],
  set: (k, v) => { state[k] = v; pending[k] = v; emit(`change:${k}`); },
  on: (event, cb) => handlers.set(event, [...(handlers.get(event) || []), cb]),
  off: (event, cb) => handlers.set(event, (handlers.get(event) || []).filter((f) => f !== cb)),
  save_changes: () => { const changes = pending; pending = {}; window.nbiPython({ kind: "update", state: changes }).then(apply); },
  send: (content) => { window.nbiSent.push(content); window.nbiPython({ kind: "custom", content }).then(apply); },
  widget_manager: null,
};
window.nbiModel = model;
window.nbiApply = apply;
const url = URL.createObjectURL(new Blob([boot.esm], { type: "text/javascript" }));
const mod = await import(url);
const el = document.getElementById("host");
window.nbiCleanup = await mod.default.render({ model, el });
</script>"""


def open_view(page: Any, widget: Any, bundle: str = "attention.js", timeout_ms: int = 10_000) -> RecordingComm:
    """Renders `widget` on `page`; returns the comm recording Python -> JS."""
    comm = RecordingComm()
    widget.comm = comm
    state, buffer_paths, buffers = _remove_buffers(widget.get_state())
    boot = {
        "state": state, "buffer_paths": buffer_paths,
        "buffers": [base64.b64encode(bytes(b)).decode() for b in buffers],
        "esm": (STATIC / bundle).read_text(),
    }

    def from_browser(message: dict[str, Any]) -> list[dict[str, Any]]:
        if message["kind"] == "update":
            widget.set_state(message["state"])
        else:
            widget._handle_custom_msg(message["content"], [])
        return comm.drain()

    page.expose_function("nbiPython", from_browser)
    page.set_content(_PAGE.replace("__BOOT__", json.dumps(boot).replace("</", "<\\/")))
    page.wait_for_selector("[data-drawn]", timeout=timeout_ms)
    return comm


def push_state(page: Any, comm: RecordingComm) -> None:
    """Delivers changes made on the Python side since the last call."""
    page.evaluate("(out) => window.nbiApply(out)", comm.drain())


def wait_until(page: Any, condition: Callable[[], Any], what: str, timeout_s: float = 10.0) -> Any:
    """Polls `condition` (Python side: the widget's traits, or the kernel through
    `notebook.execute`) until it is truthy, and returns its value. Between polls
    Playwright runs for a moment, which is when it delivers the page's calls into
    Python; no fixed sleep decides the outcome, the deadline only bounds a hang."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        page.wait_for_timeout(20)
