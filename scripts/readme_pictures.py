"""Regenerates the README's picture: the AttentionView and the AblationPanel
on the bundled model, as a user sees them, rendered by headless Chromium.

    python scripts/readme_pictures.py      # writes docs/attention_view.png, docs/ablation_panel.png

Uses the static page of the browser tests (tests/browser/harness.py): the
real bundle and the real Python widget, without a Jupyter server.
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "browser"))

import nbinterp as ni  # noqa: E402
from harness import CHROMIUM, open_view  # noqa: E402

PROMPT = "When Mary and John went to the store , John gave a drink to"


def main() -> None:
    model = ni.load()
    card = ni.bundled_card()
    layer, head = card["circuits"]["ioi_heads"][1]["head"]
    views = {
        "attention_view.png": (ni.attention(model, PROMPT, layer=layer, head=head), "attention.js"),
        "ablation_panel.png": (ni.ablate(model, PROMPT, target="Mary", foil="John"), "ablation.js"),
    }
    out = ROOT / "docs"
    out.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        for name, (widget, bundle) in views.items():
            page = browser.new_page(viewport={"width": 1100, "height": 760}, device_scale_factor=1)
            open_view(page, widget, bundle=bundle)
            page.wait_for_timeout(300)
            page.locator(".nbi-root").first.screenshot(path=str(out / name))
            page.close()
            print("wrote", out / name)
        browser.close()


if __name__ == "__main__":
    main()
