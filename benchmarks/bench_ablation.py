"""AblationPanel speed: what a slider move costs.

1. Python compute per update (the panel's "run" request: validation, the
   ablated nnsight run, top-k summary) against a bare Hugging Face forward of
   the same prompt, interleaved, medians over many updates.
2. End to end in a real JupyterLab in headless Chromium: from the slider's
   release (its input + change events) to the output DOM showing the result
   for the new value, plus the next animation frame (the paint); once with
   the stock server and once with TCP_NODELAY on its kernel websocket.

For the bundled model (when built) and a GPT-2-small-sized random-init model
(12 layers, 12 heads, d_model 768, vocabulary 50,257). Targets: under 100 ms
end to end on the bundled model; compute at most 1.3x a bare forward on the
larger one.

    python benchmarks/bench_ablation.py [--updates 40] [--threads 1] [--no-browser]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROMPT = "When Mary and John went to the store , John gave a drink to"
SMALL_VOCAB = 50257

# Builds the same two models inside the Jupyter kernel; `torch_threads` is substituted.
KERNEL_SETUP = '''
import torch, transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
import nbinterp as ni
torch.set_num_threads(__THREADS__)
panels = {}
if (ni.loading.BUNDLED_DIR / "model.safetensors").is_file():
    bundled = ni.load()
    panels["bundled"] = ni.ablate(bundled, __PROMPT__, target="Mary", foil="John")
words = __PROMPT__.split()
vocab = {w: i for i, w in enumerate(dict.fromkeys(["<unk>"] + words + [f"w{i}" for i in range(__VOCAB__)]))}
vocab = dict(list(vocab.items())[:__VOCAB__])
backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
torch.manual_seed(0)
hf = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=len(vocab))).eval()
small = ni.load(hf, tokenizer=tokenizer)
panels["gpt2-small (random init)"] = ni.ablate(small, __PROMPT__, target="Mary", foil="John")
for panel in panels.values():
    display(panel)
'''


def build_models(threads: int) -> dict[str, Any]:
    """The same models, in this process."""
    namespace: dict[str, Any] = {"display": lambda *_: None}
    exec(kernel_setup(threads), namespace)  # noqa: S102 - our own code, shared with the kernel
    return namespace["panels"]


def kernel_setup(threads: int) -> str:
    return (KERNEL_SETUP.replace("__THREADS__", str(threads)).replace("__PROMPT__", repr(PROMPT))
            .replace("__VOCAB__", str(SMALL_VOCAB)))


def slider_values(n: int) -> list[dict[str, float]]:
    """Alternating single-head moves, as a user scrubbing one slider."""
    return [{"L1.H1": round(0.05 * (i % 20), 2)} for i in range(n)]


def compute_times(panel: Any, updates: int) -> tuple[float, float]:
    """(median ms per panel update, median ms per bare forward), interleaved."""
    import torch

    hf, ids = panel.model.hf, panel._input_ids
    update_ms, bare_ms = [], []
    for i, ablations in enumerate(slider_values(updates + 3)):
        start = time.perf_counter()
        panel._rpc_run({"ablations": ablations, "ablation": "zero"})
        elapsed = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        with torch.no_grad():
            hf(ids)
        bare = (time.perf_counter() - start) * 1000
        if i >= 3:  # warm-up
            update_ms.append(elapsed)
            bare_ms.append(bare)
    return statistics.median(update_ms), statistics.median(bare_ms)


MEASURE = """async ([index, value]) => {
  const root = document.querySelectorAll('.nbi-ablation')[index];
  const input = root.querySelector('input[data-component="L1.H1"]');
  const expected = value === 1 ? '{}' : JSON.stringify({ 'L1.H1': value });
  const settled = () => root.dataset.busy === 'false' && root.dataset.ablations === expected;
  const start = performance.now();
  input.value = String(value);
  input.dispatchEvent(new Event('input', { bubbles: true }));
  input.dispatchEvent(new Event('change', { bubbles: true }));
  await new Promise((resolve, reject) => {
    if (settled()) return resolve();
    const timer = setTimeout(() => { observer.disconnect(); reject(new Error('no result in 30 s')); }, 30000);
    const observer = new MutationObserver(() => {
      if (settled()) { observer.disconnect(); clearTimeout(timer); resolve(); }
    });
    observer.observe(root, { attributes: true, childList: true, subtree: true });
  });
  await new Promise((resolve) => requestAnimationFrame(() => resolve()));
  return performance.now() - start;
}"""


# jupyter_server does not set TCP_NODELAY on the kernel websocket, so small
# messages on loopback wait out Nagle + delayed ACK (~40 ms a round trip,
# measured here). This server config sets it, to show what the view costs
# apart from that.
NODELAY_CONFIG = """
from jupyter_server.services.kernels.websocket import KernelWebsocketHandler
_open = KernelWebsocketHandler.open
async def open(self, kernel_id):
    self.set_nodelay(True)
    return await _open(self, kernel_id)
KernelWebsocketHandler.open = open
"""


def browser_times(names: list[str], updates: int, threads: int, nodelay: bool = False) -> dict[str, float]:
    """Median ms from slider release to the updated output, per panel, in real JupyterLab."""
    sys.path.insert(0, str(REPO / "tests" / "browser"))
    from conftest import CHROMIUM, JupyterServer, NotebookPage, write_notebook  # noqa: E402
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        root, home = Path(tmp, "root"), Path(tmp, "home")
        root.mkdir()
        home.mkdir()
        write_notebook(root / "bench.ipynb", [kernel_setup(threads)])
        if nodelay:
            (home / "jupyter_config_dir").mkdir()  # JupyterServer points JUPYTER_CONFIG_DIR here
            (home / "jupyter_config_dir" / "jupyter_server_config.py").write_text(NODELAY_CONFIG)
        server = JupyterServer("lab", root, home)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = NotebookPage(browser.new_page(viewport={"width": 1600, "height": 1200}), server)
            page.open("bench.ipynb")
            page.run_first_cell(f".nbi-ablation >> nth={len(names) - 1}", timeout_ms=180_000)
            page.page.wait_for_function(f"document.querySelectorAll('.nbi-ablation[data-drawn]').length === {len(names)}")
            results = {}
            for index, name in enumerate(names):
                times = []
                for i, ablations in enumerate(slider_values(updates + 3)):
                    elapsed = page.page.evaluate(MEASURE, [index, ablations["L1.H1"]])
                    if i >= 3:
                        times.append(elapsed)
                results[name] = statistics.median(times)
            return results
        finally:
            browser.close()
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    panels = build_models(args.threads)
    if "bundled" not in panels:
        print("bundled model not built yet (nbinterp/bundled/model.safetensors): measuring the random-init model only\n")
    rows = {}
    for name, panel in panels.items():
        rows[name] = compute_times(panel, args.updates)
    e2e = {} if args.no_browser else browser_times(list(panels), args.updates, args.threads)
    e2e_nodelay = {} if args.no_browser else browser_times(list(panels), args.updates, args.threads, nodelay=True)

    print(f"AblationPanel, one slider move ({args.updates} updates, medians, torch threads {args.threads}, "
          f"prompt of {panels[next(iter(panels))]._input_ids.shape[1]} tokens)")
    header = (f"{'model':<28} {'layers x heads':>14} {'bare forward':>13} {'panel compute':>14} {'ratio':>6} "
              f"{'release -> output':>18} {'(websocket nodelay)':>20}")
    print(header)
    print("-" * len(header))
    for name, (update_ms, bare_ms) in rows.items():
        model = panels[name].model
        browser = f"{e2e[name]:.1f} ms" if name in e2e else "-"
        nodelay = f"{e2e_nodelay[name]:.1f} ms" if name in e2e_nodelay else "-"
        print(f"{name:<28} {f'{model.n_layers} x {model.n_heads}':>14} {bare_ms:>10.1f} ms {update_ms:>11.1f} ms "
              f"{update_ms / bare_ms:>5.2f}x {browser:>18} {nodelay:>20}")
    print("\ntargets: release -> output < 100 ms on the bundled model; compute <= 1.3x a bare forward on gpt2-small")
    print("release -> output: input + change events on the slider until the output DOM shows the new result, plus one frame;")
    print("(websocket nodelay): the same with TCP_NODELAY on jupyter_server's kernel websocket (stock server: Nagle + delayed ACK)")


if __name__ == "__main__":
    main()
