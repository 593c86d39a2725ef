"""nbinterp: live interpretability widgets for Jupyter, over nnsight.

The engine (`nbinterp.engine`), the interventions and the analyses load
without the widget layer; the widget calls below import it on first use.
"""

from nbinterp.engine.loading import bundled_card, load
from nbinterp.engine.model import Model
from nbinterp.engine.run import Run
from nbinterp.errors import NbinterpError, RemoteError, UnsupportedArchitectureError

__version__ = "0.1.0"

# call name -> module of nbinterp.widgets that defines it
_WIDGET_CALLS = {
    "attention": "attention",
    "attribute": "attribution",
    "ablate": "ablation",
    "patch": "patching",
    "logit_lens": "logit_lens",
}

__all__ = [
    "load", "bundled_card", "Model", "Run",
    *_WIDGET_CALLS,
    "NbinterpError", "RemoteError", "UnsupportedArchitectureError",
]


def __getattr__(name: str):
    if name in _WIDGET_CALLS:
        import importlib

        module = importlib.import_module(f"nbinterp.widgets.{_WIDGET_CALLS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nbinterp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
