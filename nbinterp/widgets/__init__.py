"""Jupyter widgets over the engine. The engine never imports this package."""

from .attention import AttentionView, attention
from .attribution import AttributionView, attribute

__all__ = ["AttentionView", "attention", "AttributionView", "attribute"]
