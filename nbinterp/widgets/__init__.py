"""Jupyter widgets over the engine. The engine never imports this package."""

from .attention import AttentionView, attention

__all__ = ["AttentionView", "attention"]
