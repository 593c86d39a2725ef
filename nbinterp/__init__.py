"""nbinterp: live interpretability widgets for Jupyter, over nnsight."""

from .errors import NbinterpError, RemoteError, UnsupportedArchitectureError
from .loading import load
from .model import Model
from .run import Run

__version__ = "0.1.0"
__all__ = ["load", "Model", "Run", "NbinterpError", "RemoteError", "UnsupportedArchitectureError"]
