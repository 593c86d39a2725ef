"""AttentionView against bertviz `model_view` and CircuitsVis
`attention_heads` (all layers) on the same 12 x 12 random-init GPT-2.

For each tool and prompt length T, one fresh headless Chromium loads the
page the tool produces from a local HTTP server on 127.0.0.1 (bertviz's CDN
require.js / jQuery / d3 answered from npm copies through a Playwright
route, anything else from outside refused; CircuitsVis with its inlined
bundle; nbinterp's bundle plus its widget state and binary buffers as a
kernel would send them, static PNG included). Printed per tool
and T: Python time to build what is sent, bytes sent before first paint,
time to first paint (navigation start -> the view's drawn condition -> next
animation frame), and peak memory (PSS) of all browser processes.

Drawn conditions: nbinterp `[data-drawn]` (thumbnails and the large head
painted); bertviz the first attention `line` in its svg (it draws every
thumbnail in one synchronous pass); CircuitsVis L*H+1 canvases (every head
thumbnail and the zoomed head).

bertviz and CircuitsVis are installed with `pip --no-deps --target` into a
cache folder (they would otherwise pull their own torch), never into the
test environment:  python benchmarks/bench_attention_view.py --setup
Then:               python benchmarks/bench_attention_view.py [--lengths 64 128] [--cap 120]
Takes ~10 min on 2 cores (most of it waiting out the other tools' caps).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

CACHE = Path.home() / ".cache" / "nbinterp-bench"
PY_DEPS = CACHE / "python"
NPM_DIR = CACHE / "npm"
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ORIGIN = "http://bench.invalid"
LAYERS = HEADS = 12


def setup() -> None:
    PY_DEPS.mkdir(parents=True, exist_ok=True)
    # importlib-metadata 8.5 is the last without a lazy_importer dependency.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(PY_DEPS),
                    "bertviz==1.4.1", "circuitsvis==1.43.3", "importlib-metadata==8.5.0", "zipp"], check=True)
    NPM_DIR.mkdir(parents=True, exist_ok=True)
    # jQuery 2.0.0 (bertviz's pin) is not on npm; 2.2.4 has the same API.
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NPM_DIR),
                    "requirejs@2.3.6", "jquery@2.2.4", "d3@5.7.0"], check=True)


def build_model(max_tokens: int) -> Any:
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    import nbinterp as ni

    vocab = {f"t{i}": i for i in range(max_tokens)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="t0")
    torch.manual_seed(0)
    config = tf.GPT2Config(n_layer=LAYERS, n_head=HEADS, n_embd=768, n_positions=max(1024, max_tokens), vocab_size=max_tokens)
    return ni.load(tf.GPT2LMHeadModel(copy.deepcopy(config)).eval(), tokenizer=tokenizer)


# ------------------------------------------------------------------ pages
def nbinterp_page(run: Any) -> tuple[dict[str, bytes], str]:
    from ipywidgets.widgets.widget import _remove_buffers

    from nbinterp.widgets import AttentionView
    from nbinterp.widgets._base import figure_png

    view = AttentionView(run)
    png = figure_png(view.to_figure())  # the display message carries it too
    state, paths, buffers = _remove_buffers(view.get_state())
    files = {
        "/index.html": _NBINTERP_HTML.encode(),
        "/attention.js": (REPO / "nbinterp" / "static" / "attention.js").read_bytes(),
        "/state.json": json.dumps({"state": state, "buffer_paths": paths}).encode(),
        "/fallback.png": png,
    }
    files.update({f"/buffer/{i}": bytes(b) for i, b in enumerate(buffers)})
    return files, "document.querySelector('[data-drawn]')"


_NBINTERP_HTML = """<!doctype html><meta charset="utf-8"><body><div id="host"></div><script type="module">
const [boot, mod] = await Promise.all([fetch('/state.json').then((r) => r.json()), import('/attention.js'), fetch('/fallback.png').then((r) => r.arrayBuffer())]);
const buffers = await Promise.all(boot.buffer_paths.map((_, i) => fetch('/buffer/' + i).then((r) => r.arrayBuffer())));
boot.buffer_paths.forEach((path, i) => { let o = boot.state; for (const k of path.slice(0, -1)) o = o[k]; o[path[path.length - 1]] = new DataView(buffers[i]); });
const state = boot.state;
const model = { get: (k) => state[k], set: (k, v) => { state[k] = v; }, on() {}, off() {}, save_changes() {}, send() {} };
mod.default.render({ model, el: document.getElementById('host') });
</script>"""


def bertviz_page(run: Any, n_layers: int) -> tuple[dict[str, bytes], str]:
    from bertviz import model_view

    attention = tuple(run.attention(layer)[None] for layer in range(n_layers))
    html = model_view(attention, list(run.tokens), html_action="return").data
    npm = NPM_DIR / "node_modules"
    files = {
        "/index.html": ("<!doctype html><meta charset='utf-8'><body>" + html).encode(),
        # fetched from cdnjs by the page; answered from npm copies (see bertviz_cdn)
        "/cdn/require.min.js": (npm / "requirejs" / "require.js").read_bytes(),
        "/cdn/d3.min.js": (npm / "d3" / "dist" / "d3.min.js").read_bytes(),
        "/cdn/jquery.min.js": (npm / "jquery" / "dist" / "jquery.min.js").read_bytes(),
    }
    return files, "document.querySelector('svg line')"


def bertviz_cdn(url: str) -> str | None:
    for name in ("require.min", "d3.min", "jquery.min"):
        if "cdnjs.cloudflare.com" in url and f"/{name}" in url:
            return f"/cdn/{name}.js"
    return None


def circuitsvis_page(run: Any, n_layers: int) -> tuple[dict[str, bytes], str]:
    import torch
    from circuitsvis.attention import attention_heads

    attention = torch.cat([run.attention(layer) for layer in range(n_layers)])
    names = [f"L{l}H{h}" for l in range(n_layers) for h in range(run.model.n_heads)]
    html = attention_heads(attention=attention, tokens=list(run.tokens), attention_head_names=names).local_src
    expected = attention.shape[0] + 1
    return {"/index.html": ("<!doctype html><meta charset='utf-8'><body>" + html).encode()}, f"document.querySelectorAll('canvas').length >= {expected}"


# ------------------------------------------------------------ measurement
class PeakMemory:
    """Samples the summed PSS (shared pages split between the processes that
    map them, so shared libraries are not counted once per process) of every
    Chromium process under this one."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for child in self.me.children(recursive=True):
                try:
                    if "chrom" in child.name():
                        total += child.memory_full_info().pss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.1)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


class LocalServer:
    """Serves a page's files from memory on 127.0.0.1, counting bytes sent,
    as a Jupyter server would serve them (no base64 through the driver)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.sent = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = files.get(self.path.split("?")[0])
                if body is None:
                    self.send_error(404)
                    return
                ctype = "text/html" if self.path.endswith(".html") else "text/javascript" if self.path.endswith(".js") else "application/octet-stream"
                self.send_response(200)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                server.sent += len(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def measure(playwright: Any, files: dict[str, bytes], drawn: str, cap_s: float, cdn: Callable[[str], str | None] | None = None) -> dict[str, Any]:
    blocked: list[str] = []
    local = LocalServer(files)

    def outside(route: Any) -> None:
        # Nothing may come from the internet: CDN URLs get local npm copies.
        path = cdn(route.request.url) if cdn else None
        if path in files:
            local.sent += len(files[path])
            route.fulfill(status=200, body=files[path], headers={"content-type": "text/javascript"})
        else:
            blocked.append(route.request.url)
            route.abort()

    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
    result: dict[str, Any] = {"paint_s": None}
    try:
        with PeakMemory() as memory:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.add_init_script(f"""(() => {{
              const check = () => {{
                let ok = false; try {{ ok = !!({drawn}); }} catch (e) {{}}
                if (ok) requestAnimationFrame(() => {{ window.__drawnAt = performance.now(); }});
                else requestAnimationFrame(check);
              }};
              requestAnimationFrame(check);
            }})()""")
            page.route(re.compile(r"^(?!http://127\.0\.0\.1)"), outside)
            started = time.monotonic()
            try:
                page.goto(f"{local.url}/index.html", wait_until="commit", timeout=cap_s * 1000)
                left = max(1.0, cap_s - (time.monotonic() - started))
                page.wait_for_function("() => window.__drawnAt !== undefined", timeout=left * 1000, polling=100)
                result["paint_s"] = page.evaluate("() => window.__drawnAt") / 1000
            except Exception:
                # A renderer stuck in a long script also blocks browser.close():
                # end this browser's own processes (by pid) first.
                for child in memory.me.children(recursive=True):
                    if "chrom" in child.name():
                        child.kill()
            result["bytes"] = local.sent
        result["memory_mb"] = memory.peak / 2**20
        result["blocked"] = blocked
    finally:
        try:
            browser.close()
        except Exception:
            pass
        local.close()
    return result


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true", help="install bertviz/CircuitsVis and the CDN libraries into the cache")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--tools", nargs="+", default=["nbinterp", "bertviz", "circuitsvis"])
    parser.add_argument("--cap", type=float, default=120.0, help="seconds to wait for a first paint")
    args = parser.parse_args()
    if args.setup:
        setup()
        return
    sys.path.insert(0, str(PY_DEPS))
    from playwright.sync_api import sync_playwright

    model = build_model(max(args.lengths))
    builders = {
        "nbinterp": lambda run: nbinterp_page(run),
        "bertviz": lambda run: bertviz_page(run, model.n_layers),
        "circuitsvis": lambda run: circuitsvis_page(run, model.n_layers),
    }
    rows: list[tuple[str, int, str, str, str, str]] = []
    gave_up: dict[str, int] = {}
    with sync_playwright() as playwright:
        for n_tokens in args.lengths:
            prompt = " ".join(f"t{(i * 7919) % max(args.lengths)}" for i in range(n_tokens))
            run = model.run(prompt, capture=("qkv",))
            for layer in range(model.n_layers):
                run.attention(layer)  # shared by every tool: not part of anyone's time
            for tool in args.tools:
                if tool in gave_up:
                    rows.append((tool, n_tokens, "-", "-", f"skipped (not drawn at T={gave_up[tool]})", "-"))
                    continue
                started = time.perf_counter()
                files, drawn = builders[tool](run)
                python_s = time.perf_counter() - started
                r = measure(playwright, files, drawn, args.cap, bertviz_cdn if tool == "bertviz" else None)
                if r["paint_s"] is None:
                    gave_up[tool] = n_tokens
                paint = f"{r['paint_s']:.2f} s" if r["paint_s"] is not None else f"not drawn in {args.cap:.0f} s"
                rows.append((tool, n_tokens, f"{python_s:.2f} s", fmt_bytes(r["bytes"]), paint, f"{r['memory_mb']:.0f} MB"))
                print(f"  {tool:12s} T={n_tokens:5d}  python {rows[-1][2]:>8s}  sent {rows[-1][3]:>9s}  first paint {paint:>18s}  "
                      f"peak browser memory {rows[-1][5]:>8s}" + (f"  blocked {r['blocked']}" if r["blocked"] else ""), flush=True)
                del files
    print(f"\n12 layers x 12 heads, random-init GPT-2 (d_model 768), headless Chromium on this machine, cap {args.cap:.0f} s\n")
    print("| tool | T | Python build | bytes before first paint | time to first paint | peak browser memory (PSS) |")
    print("|---|---|---|---|---|---|")
    for tool, n, py, sent, paint, mem in sorted(rows, key=lambda r: (r[1], args.tools.index(r[0]))):
        print(f"| {tool} | {n} | {py} | {sent} | {paint} | {mem} |")


if __name__ == "__main__":
    main()
