"""Activation patching: copy activations from a source prompt into a run.

The planning lives in the engine (`nbinterp.engine.patch_plan`), which
`model.run(patch_from=..., patch=[...])` uses; this is its public name here."""

from __future__ import annotations

from nbinterp.engine.patch_plan import build_patch
from nbinterp.engine.plan import PATCH_SITES

__all__ = ["PATCH_SITES", "build_patch"]
