"""What the model represents: MLP neurons and sparse-autoencoder latents
(`sae.py`, `activations.py`, `directions.py`, `contexts.py`) and linear
probes with their usage test (`probes.py`, `probe_usage.py`). The views over
them are `ni.features` and `ni.probe` (nbinterp.widgets.features / .probe)."""
