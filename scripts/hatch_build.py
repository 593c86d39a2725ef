"""Hatch build hook: builds the widget front ends (js/ -> nbinterp/static/)
when the bundles are missing or older than their sources, so
`pip install -e .` and `python -m build` from a fresh clone ship working
widgets. Needs Node >= 18 and npm only when a build is due."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

# Every top-level js/*.ts is one view, bundled to nbinterp/static/<view>.js (as in js/build.mjs).
JS_DIR = Path(__file__).resolve().parent.parent / "js"
VIEWS = tuple(sorted(p.stem for p in JS_DIR.glob("*.ts") if not p.name.endswith(".d.ts")))
SOURCE_SUFFIXES = {".ts", ".mjs", ".json"}


def _newest_source(js: Path) -> float:
    newest = 0.0
    for path in js.rglob("*"):
        if "node_modules" in path.parts or path.suffix not in SOURCE_SUFFIXES or "test" in path.parts:
            continue
        newest = max(newest, path.stat().st_mtime)
    return newest


def bundles_stale(root: Path) -> bool:
    static = root / "nbinterp" / "static"
    bundles = [static / f"{view}.js" for view in VIEWS]
    if not all(b.is_file() for b in bundles):
        return True
    js = root / "js"
    return js.is_dir() and _newest_source(js) > min(b.stat().st_mtime for b in bundles)


def build_js(root: Path, log: Any = print) -> None:
    js = root / "js"
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "nbinterp's widget bundles (nbinterp/static/*.js) are missing or stale and npm is not "
            "installed: install Node.js >= 18 with npm, or set NBINTERP_SKIP_JS=1 to build without widgets"
        )
    lock = js / "package-lock.json"
    installed = js / "node_modules" / ".package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        log("nbinterp: npm ci in js/")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=js, check=True)
    log("nbinterp: npm run build in js/")
    subprocess.run([npm, "run", "build"], cwd=js, check=True)


class JsBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        if os.environ.get("NBINTERP_SKIP_JS") == "1":
            self.app.display_warning("nbinterp: NBINTERP_SKIP_JS=1, widget bundles not built")
        elif (root / "js" / "package.json").is_file() and bundles_stale(root):
            build_js(root, self.app.display_info)
        # The bundles are gitignored build outputs: name them so hatch ships them.
        build_data.setdefault("artifacts", []).extend(f"nbinterp/static/{view}.js" for view in VIEWS)
