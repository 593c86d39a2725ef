"""Real-browser fixtures: Debian's Chromium through Playwright, and a real
JupyterLab or Notebook 7 server on 127.0.0.1 per frontend, isolated from
the user's Jupyter config. Marked `browser`; deselect with -m "not browser"."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness import CHROMIUM

REPO = Path(__file__).resolve().parents[2]
# Notebook 7.6.5 logs this on every page load; it is not ours.
KNOWN_PAGE_ERRORS = ("reading 'schema'",)


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "browser: drives a real Chromium (needs /usr/bin/chromium)")


def pytest_collection_modifyitems(items: list[Any]) -> None:
    for item in items:
        if "tests/browser" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    if not (REPO / "nbinterp" / "static" / "attention.js").is_file():
        pytest.fail("nbinterp/static/attention.js is missing: run `npm ci && npm run build` in js/ (or pip install -e .)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page for the static harness; any uncaught page error fails the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    assert errors == []
    context.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    def __init__(self, frontend: str, root: Path, home: Path) -> None:
        self.frontend = frontend
        self.root = root
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        env = dict(os.environ)
        for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR"):
            path = home / name.lower()
            path.mkdir(parents=True, exist_ok=True)
            env[name] = str(path)
        news = home / "jupyterlab_settings_dir" / "@jupyterlab" / "apputils-extension"
        news.mkdir(parents=True, exist_ok=True)
        (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        app = "lab" if frontend == "lab" else "notebook"
        expose = "LabApp" if frontend == "lab" else "JupyterNotebookApp"
        self.log = open(home / "server.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter", app, "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
             "--port-retries=0", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
             "--allow-root", f"--{expose}.expose_app_in_browser=True"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def notebook_url(self, name: str) -> str:
        path = f"lab/tree/{name}" if self.frontend == "lab" else f"notebooks/{name}"
        return f"{self.base}/{path}?token={self.token}"

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter {self.frontend} exited: see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.base}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"jupyter {self.frontend} not ready in {timeout} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def write_notebook(path: Path, cells: list[str]) -> None:
    path.write_text(json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": c} for c in cells],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }))


@pytest.fixture(scope="module")
def jupyter_factory(tmp_path_factory: Any) -> Iterator[Any]:
    servers: list[JupyterServer] = []

    def start(frontend: str, notebook: str, cells: list[str]) -> JupyterServer:
        root = tmp_path_factory.mktemp(f"{frontend}-root")
        write_notebook(root / notebook, cells)
        server = JupyterServer(frontend, root, tmp_path_factory.mktemp(f"{frontend}-home"))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


KERNEL_READY = """() => {
  const kernel = window.jupyterapp?.shell?.currentWidget?.sessionContext?.session?.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""

EXECUTE = """async (code) => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const future = kernel.requestExecute({ code, store_history: false });
  let out = '';
  future.onIOPub = (msg) => {
    const t = msg.header.msg_type;
    if (t === 'stream') out += msg.content.text;
    else if (t === 'error') out += `ERROR ${msg.content.ename}: ${msg.content.evalue}`;
    else if (t === 'execute_result') out += msg.content.data['text/plain'];
  };
  await future.done;
  return out;
}"""

# A comm message on the widget's channel, exactly as a view's model.send or
# save_changes would put it on the kernel's websocket.
SEND_COMM = """({ commId, data }) => {
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  kernel.sendShellMessage({
    channel: 'shell', buffers: [], metadata: {}, parent_header: {},
    header: { msg_id: crypto.randomUUID(), msg_type: 'comm_msg', session: kernel.clientId,
              username: kernel.username || '', date: new Date().toISOString(), version: '5.3' },
    content: { comm_id: commId, data },
  }, false, true);
}"""


class NotebookPage:
    def __init__(self, page: Any, server: JupyterServer) -> None:
        self.page = page
        self.server = server
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def open(self, name: str) -> None:
        self.page.goto(self.server.notebook_url(name))
        self.page.wait_for_function(KERNEL_READY, timeout=60_000, polling=200)

    def run_first_cell(self, ready_selector: str, timeout_ms: int = 90_000) -> None:
        self.page.locator(".jp-Cell .jp-InputArea-editor").first.click()
        self.page.keyboard.press("Shift+Enter")
        self.page.wait_for_selector(ready_selector, timeout=timeout_ms)

    def execute(self, code: str) -> str:
        return self.page.evaluate(EXECUTE, code)

    def send_comm(self, comm_id: str, data: dict[str, Any]) -> None:
        self.page.evaluate(SEND_COMM, {"commId": comm_id, "data": data})

    def unexpected_page_errors(self) -> list[str]:
        return [e for e in self.page_errors if not any(k in e for k in KNOWN_PAGE_ERRORS)]


def open_notebook(browser: Any, jupyter_factory: Any, frontend: str, name: str, setup_cell: str,
                  ready_selector: str) -> Iterator[NotebookPage]:
    """A notebook with one setup cell, opened in `frontend` and run until
    `ready_selector` shows; on teardown no token ran script and the page threw
    nothing unexpected. For module fixtures: `yield from open_notebook(...)`."""
    server = jupyter_factory(frontend, name, [setup_cell])
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = NotebookPage(context.new_page(), server)
    page.open(name)
    page.run_first_cell(ready_selector)
    yield page
    assert page.dialogs == [], "a token ran script"
    assert page.unexpected_page_errors() == []
    context.close()


def _reexport_parent_helpers() -> None:
    """tests/conftest.py and this file both import as the module "conftest",
    and `from conftest import ...` finds whichever pytest loaded last (this
    one, as "browser" sorts before "test_*.py"). Re-export the parent's plain
    helpers (PROMPT, random_model, ...; not its fixtures) so tests in either
    folder find theirs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_nbinterp_tests_conftest", REPO / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    parent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parent)
    for name, value in vars(parent).items():
        if not name.startswith("_") and name not in globals() and not hasattr(value, "_fixture_function_marker"):
            globals()[name] = value


_reexport_parent_helpers()
