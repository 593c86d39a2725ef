"""nbinterp: live interpretability widgets for Jupyter, over nnsight.

The engine (`nbinterp.engine`), the interventions and the analyses load
without the widget layer; the widget calls below import it on first use.
"""

from nbinterp.engine.loading import bundled_card, load
from nbinterp.engine.model import Model
from nbinterp.engine.run import Run
from nbinterp.errors import NbinterpError, RemoteError, UnsupportedArchitectureError

__version__ = "0.1.0"

# call name -> the module that defines it (widgets load on first use)
_WIDGET_CALLS = {
    "attention": "nbinterp.widgets.attention",
    "attribute": "nbinterp.widgets.attribution",
    "ablate": "nbinterp.widgets.ablation",
    "patch": "nbinterp.widgets.patching",
    "logit_lens": "nbinterp.widgets.logit_lens",
    "features": "nbinterp.widgets.features",
    "probe": "nbinterp.widgets.probe",
    "why_not": "nbinterp.widgets.why_not",
    "context_use": "nbinterp.widgets.context_use",
    "bias": "nbinterp.widgets.bias",
    "load_sae": "nbinterp.representations.sae",
}

__all__ = [
    "load", "bundled_card", "Model", "Run",
    *_WIDGET_CALLS,
    "NbinterpError", "RemoteError", "UnsupportedArchitectureError",
]


def __getattr__(name: str):
    if name in _WIDGET_CALLS:
        import importlib

        module = importlib.import_module(_WIDGET_CALLS[name])
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nbinterp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
