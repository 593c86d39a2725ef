"""Features of a model: MLP neurons and sparse-autoencoder latents, their
activations, steering, and top-activating contexts over a corpus.

`nbinterp.features(model, prompt, layer=2)` is the FeatureView
(`nbinterp.widgets.features.features`). Once this package is imported,
Python binds the name `nbinterp.features` to it, so the package itself
answers that call: `ni.features(...)` works whichever was imported first.
"""

import sys
import types


class _FeaturesPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from nbinterp.widgets.features import features

        return features(*args, **kwargs)


sys.modules[__name__].__class__ = _FeaturesPackage
