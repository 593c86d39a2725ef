"""Every intervention the engine builds is remote-compatible: the same requests
run through nnsight's remote="local" mode (serialised as NDIF would receive
them, user modules hidden) and give the same numbers as a local run."""

from __future__ import annotations

import threading

import pytest
import torch

import nbinterp as ni
from conftest import PROMPT, random_model

REQUESTS = {
    "capture": {},
    "ablate": {"ablate": {(1, 2): 0.0, "L0.mlp": 0.5}, "ablate_neurons": {(1, 4): 0.0}},
    "mean_ablate": {"ablate": {(0, 1): 0.0}, "ablation": "mean", "reference": ["w1 w2 w3", "w4 w5 w6 w7"]},
    "knockout": {"knockout": [(1, 0, 6, 1), (0, 3, 9, 2)]},
    "patch": {"patch_from": "w6 w17 w3 w42 w9 w5 w17 w3 w28 w11", "patch": [("resid_pre", 1, 4), ("head", 1, 0, None)]},
    "gradients": {"target": "w5", "foil": "w9", "gradients": True},
}


@pytest.fixture(scope="module", params=["gpt2", "llama", "opt"])  # OPT: its MLP tensors are reshaped in the trace
def local_and_simulated(request, tokenizer):
    hf = random_model(request.param)
    return ni.load(hf, tokenizer=tokenizer), ni.load(hf, tokenizer=tokenizer, remote="local")


@pytest.mark.parametrize("request_name", list(REQUESTS))
def test_remote_local_matches_local(local_and_simulated, request_name):
    local, simulated = local_and_simulated
    kwargs = REQUESTS[request_name]
    expected, got = local.run(PROMPT, **kwargs), simulated.run(PROMPT, **kwargs)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.attention(1), expected.attention(1), atol=1e-6, rtol=0)
    if kwargs.get("gradients"):
        torch.testing.assert_close(got.grad_attention(0), expected.grad_attention(0), atol=1e-6, rtol=0)
        torch.testing.assert_close(got.head_attribution(), expected.head_attribution(), atol=1e-6, rtol=0)


def test_lazy_capture_fetches_every_layer_in_one_forward(local_and_simulated):
    local, simulated = local_and_simulated
    run = simulated.run(PROMPT, knockout=[(1, 0, 6, 1)])
    assert not run._captured.get("qkv")  # nothing but the last logits comes back unless asked
    before = simulated.forwards
    torch.testing.assert_close(run.attention(1), local.run(PROMPT, knockout=[(1, 0, 6, 1)]).attention(1))
    assert set(run._captured["qkv"]) == set(range(simulated.n_layers))
    run.attention(0)
    assert simulated.forwards == before + 1


def test_remote_without_a_key_fails_fast_and_says_what_to_do(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(ni.RemoteError, match="NDIF_API_KEY"):
        ni.load("meta-llama/Llama-3.1-8B", remote=True)


def test_remote_without_network_says_so(monkeypatch):
    """No route to the hub (offline here): a clear error at once, no retry threads left behind."""
    import huggingface_hub.constants

    monkeypatch.setenv("NDIF_API_KEY", "test-key-not-real")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: patch the value
    with pytest.raises(ni.RemoteError, match="internet"):
        ni.load("meta-llama/Llama-3.1-8B", remote=True, timeout=30)


def test_remote_on_a_hanging_network_fails_within_the_timeout(monkeypatch):
    """A network that drops packets: the hub call never answers; load gives up after `timeout`."""
    import time

    import nnsight

    release = threading.Event()
    monkeypatch.setenv("NDIF_API_KEY", "test-key-not-real")
    monkeypatch.setattr(nnsight, "TransformersModel", lambda *args, **kwargs: release.wait(30))
    started = time.perf_counter()
    try:
        with pytest.raises(ni.RemoteError, match="within 1 s.*network"):
            ni.load("meta-llama/Llama-3.1-8B", remote=True, timeout=1)
        assert time.perf_counter() - started < 5
    finally:
        release.set()  # let the abandoned call end


def test_remote_needs_a_hub_id(tokenizer):
    with pytest.raises(ni.RemoteError, match="Hugging Face model id"):
        ni.load(random_model("gpt2"), tokenizer=tokenizer, remote=True)
