"""AttentionView first paint in a real JupyterLab: where the time goes
between Shift+Enter and the first drawn heatmap.

A random-init GPT-2-small-sized model (12 layers x 12 heads, d_model 768,
vocabulary 50,257) in the kernel, T=512 token ids, `ni.attention(model, ids)`
as the cell's result, in headless Chromium. Each run is timestamped on one
clock (the kernel's time.time() and the page's performance.timeOrigin +
performance.now()):

    Shift+Enter          keydown in the page
    computed             Python: ni.attention returned (run + thumbnails + widget state)
    comm received        the page got the widget's comm_open (its state and buffers)
    display received     the page got the output message naming the widget
    module loading       anywidget made the Blob URL of the view's ESM
    render started       the view's root element entered the DOM
    drawn                the view set data-drawn (data decoded, canvases drawn; the
                         view draws before attaching its root, so usually = render)
    painted              the next animation frame after that
    picture drawn        Python: the static PNG finished (see nbinterp/widgets/_picture.py)
    picture received     the page got the PNG (update_display_data; lazy only)

Two modes, interleaved in one JupyterLab: "eager" (NBINTERP_EAGER_PICTURE=1:
the PNG is drawn inside the display hook, before anything is sent: the old
behaviour) and "lazy" (the default: the PNG follows after the cell). Lazy
runs also check that the live view was not rebuilt when the picture came.
Target: Shift+Enter -> painted <= computed + 0.3 s.

    python benchmarks/bench_first_paint.py [--runs 3] [--tokens 512] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

KERNEL_SETUP = '''
import json, logging, os, time
import torch, transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
import nbinterp as ni
torch.set_num_threads(__THREADS__)
vocab = {f"w{i}": i for i in range(50257)}
backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0")
torch.manual_seed(0)
hf = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=50257)).eval()
model = ni.load(hf, tokenizer=tokenizer)
ids = torch.randint(0, 50257, (__TOKENS__,))
marks = {}

class PictureTimes(logging.Handler):
    def emit(self, record):
        marks["picture_drawn"] = record.created
        marks["picture_seconds"] = record.args[-1]

picture_log = logging.getLogger("nbinterp.widgets.picture")
picture_log.setLevel(logging.DEBUG)
picture_log.addHandler(PictureTimes())
picture_log.propagate = False
warm = ni.attention(model, ids)  # imports, caches and the browser's module, once
warm
'''

MEASURE_CELL = '''os.environ["NBINTERP_EAGER_PICTURE"] = "__EAGER__"
marks.clear(); marks["start"] = time.time()
view = ni.attention(model, ids)
marks["computed"] = time.time()
view'''

# Installed once per page: timestamps of what the page sees, reset per run.
INSTRUMENT = """() => {
  const now = () => performance.timeOrigin + performance.now();
  const fp = window.__fp = { runs: 0 };
  const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
  const first = (name) => { if (fp.cur && !(name in fp.cur)) fp.cur[name] = now(); };
  kernel.anyMessage.connect((_, { msg, direction }) => {
    if (direction !== 'recv') return;
    const type = msg.header.msg_type;
    const c = msg.content || {};
    if (type === 'comm_open' && c.target_name === 'jupyter.widget' && c.data?.state?._model_name === 'AnyModel') first('comm');
    if ((type === 'execute_result' || type === 'display_data') && c.data?.['application/vnd.jupyter.widget-view+json']) {
      first('display');
      if (fp.cur) fp.cur.displayHadPicture = 'image/png' in c.data;
    }
    if (type === 'update_display_data') first('picture_received');
    if (type === 'status' && c.execution_state === 'idle') first('idle');
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && e.shiftKey) { fp.cur = { shift_enter: now() }; fp.runs += 1; }
  }, true);
  const create = URL.createObjectURL.bind(URL);
  URL.createObjectURL = (blob) => { first('module'); return create(blob); };
  const markDrawn = () => {
    if ('drawn' in fp.cur) return;
    first('drawn');
    requestAnimationFrame(() => requestAnimationFrame(() => first('painted')));
  };
  new MutationObserver((records) => {
    for (const r of records) {
      for (const n of r.addedNodes) {
        if (n.nodeType === 1 && (n.matches('.nbi-attention') || n.querySelector?.('.nbi-attention'))) {
          const root = n.matches('.nbi-attention') ? n : n.querySelector('.nbi-attention');
          if (fp.cur && !fp.cur.root) {
            first('render'); fp.cur.root = root;
            if (root.dataset.drawn) markDrawn();
          }
        }
      }
      if (r.type === 'attributes' && fp.cur && r.target === fp.cur.root) markDrawn();
    }
  }).observe(document.body, { childList: true, subtree: true, attributes: true, attributeFilter: ['data-drawn'] });
}"""

# After a run: is the view drawn first still the one (and only one) in its output?
VIEW_KEPT = """() => {
  const root = window.__fp.cur.root;
  const output = root.closest('.jp-OutputArea');
  return { connected: root.isConnected, views: output.querySelectorAll('.nbi-attention').length };
}"""

STEPS = [
    ("computed", "start"), ("comm", "computed"), ("display", "comm"), ("module", "display"),
    ("render", "module"), ("drawn", "render"), ("painted", "drawn"),
]


def run_once(page: Any, cell_index: int) -> dict[str, Any]:
    p = page.page
    p.locator(".jp-Cell .jp-InputArea-editor").nth(cell_index).click()
    p.keyboard.press("Shift+Enter")
    p.wait_for_function("() => window.__fp.cur && 'painted' in window.__fp.cur && 'idle' in window.__fp.cur",
                        timeout=300_000, polling=50)
    browser = p.evaluate("() => { const { root, ...t } = window.__fp.cur; return t; }")
    kept = p.evaluate(VIEW_KEPT)
    python = json.loads(page.execute("print(json.dumps(marks))"))
    return {**browser, **python, "kept": kept}


def describe(run: dict[str, Any]) -> dict[str, float]:
    """Seconds from Shift+Enter to each mark."""
    t0 = run["shift_enter"] / 1000
    at = {name: (run[name] / 1000 if name not in ("start", "computed", "picture_drawn") else run[name]) - t0
          for name in ("start", "computed", "comm", "display", "module", "render", "drawn", "painted",
                       "picture_drawn", "picture_received") if name in run}
    return at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (interleaved)")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "tests" / "browser"))
    from conftest import CHROMIUM, JupyterServer, NotebookPage, write_notebook  # noqa: E402
    from playwright.sync_api import sync_playwright

    setup = KERNEL_SETUP.replace("__THREADS__", str(args.threads)).replace("__TOKENS__", str(args.tokens))
    cells = [setup, MEASURE_CELL.replace("__EAGER__", "0"), MEASURE_CELL.replace("__EAGER__", "1")]
    results: dict[str, list[dict[str, Any]]] = {"lazy": [], "eager": []}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        root, home = Path(tmp, "root"), Path(tmp, "home")
        root.mkdir()
        home.mkdir()
        write_notebook(root / "bench.ipynb", cells)
        server = JupyterServer("lab", root, home)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = NotebookPage(browser.new_page(viewport={"width": 1600, "height": 1200}), server)
            page.open("bench.ipynb")
            page.run_first_cell(".nbi-attention[data-drawn]", timeout_ms=300_000)
            page.execute("None")  # queued behind the warm-up cell: its picture has been sent
            page.page.evaluate(INSTRUMENT)
            for i in range(args.runs):
                for mode, cell in (("lazy", 1), ("eager", 2)) if i % 2 == 0 else (("eager", 2), ("lazy", 1)):
                    run = run_once(page, cell)
                    results[mode].append(run)
                    at = describe(run)
                    print(f"{mode:5s} run {i + 1}: " + "  ".join(f"{k} {v:.3f}" for k, v in at.items())
                          + f"  picture in display: {run.get('displayHadPicture')}  view kept: {run['kept']}", flush=True)
        finally:
            browser.close()
            server.stop()

    print(f"\nT={args.tokens}, 12 layers x 12 heads, torch threads {args.threads}; median s after Shift+Enter "
          f"({args.runs} runs each, interleaved)")
    names = ["computed", "comm", "display", "module", "render", "drawn", "painted", "picture_drawn", "picture_received"]
    print(f"{'mark':18s}{'eager (old)':>14s}{'lazy (new)':>14s}")
    for name in names:
        row = []
        for mode in ("eager", "lazy"):
            values = [describe(r).get(name) for r in results[mode]]
            values = [v for v in values if v is not None]
            row.append(f"{statistics.median(values):14.3f}" if values else f"{'-':>14s}")
        print(f"{name:18s}{row[0]}{row[1]}")
    for mode in ("eager", "lazy"):
        over = [describe(r)["painted"] - describe(r)["computed"] for r in results[mode]]
        pictures = [r["picture_seconds"] for r in results[mode] if "picture_seconds" in r]
        print(f"{mode}: first paint - computed = {statistics.median(over):.3f} s (target <= 0.3 s); "
              f"PNG draw {statistics.median(pictures):.3f} s")
    rebuilt = [r["kept"] for r in results["lazy"] if not (r["kept"]["connected"] and r["kept"]["views"] == 1)]
    print("lazy: live view kept when the picture arrived" if not rebuilt else f"lazy: view REBUILT: {rebuilt}")


if __name__ == "__main__":
    main()
