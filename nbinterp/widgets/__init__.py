"""Jupyter widgets over the engine. The engine never imports this package."""

from .attention import AttentionView, attention
from .attribution import AttributionView, attribute
from .ablation import AblationPanel, ablate
from .patching import PatchingView, patch
from .logit_lens import LogitLensView, logit_lens

__all__ = [
    "AttentionView", "attention", "AttributionView", "attribute",
    "AblationPanel", "ablate", "PatchingView", "patch", "LogitLensView", "logit_lens",
]
