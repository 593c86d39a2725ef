"""nbinterp: live interpretability widgets for Jupyter, over nnsight."""

from .errors import NbinterpError, RemoteError, UnsupportedArchitectureError
from .loading import bundled_card, load
from .model import Model
from .run import Run

__version__ = "0.1.0"
__all__ = ["load", "bundled_card", "Model", "Run", "NbinterpError", "RemoteError", "UnsupportedArchitectureError"]

# widgets (the engine above never imports them)
from .widgets.attention import attention  # noqa: E402
from .widgets.attribution import attribute  # noqa: E402
from .widgets.ablation import ablate  # noqa: E402
from .widgets.patching import patch  # noqa: E402
from .widgets.logit_lens import logit_lens  # noqa: E402
