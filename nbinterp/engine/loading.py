"""`nbinterp.load`: the bundled model, a Hugging Face id or directory, a model
object, or a remote model on NDIF through nnsight."""

from __future__ import annotations

import concurrent.futures
import json
import os
from pathlib import Path
from typing import Any

from nbinterp.engine.architectures import architecture_for
from nbinterp.errors import NbinterpError, RemoteError
from nbinterp.engine.model import Model

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled"
BUNDLED_NAME = "nbinterp-tiny"
REMOTE_TIMEOUT_S = 30.0


def load(
    model: Any = None,
    tokenizer: Any = None,
    *,
    remote: bool | str = False,
    device: str | None = None,
    dtype: Any = None,
    timeout: float = REMOTE_TIMEOUT_S,
) -> Model:
    """Load a causal language model for interpretability.

    load()                              the bundled model (offline, a few MB)
    load("openai-community/gpt2")       a Hugging Face id or a local directory
    load(hf_model, tokenizer=tok)       an already-built transformers model
    load("meta-llama/Llama-3.1-70B", remote=True)   runs on NDIF (needs NDIF_API_KEY)

    remote="local" runs every request through nnsight's remote serialisation
    locally: a check that what you do would also work on NDIF.
    """
    import nnsight

    if remote not in (False, True, "local"):
        raise NbinterpError(f"remote must be False, True or 'local', not {remote!r}")
    if remote is True:
        return _load_remote(model, timeout)
    if model is None:
        model = BUNDLED_DIR
    if isinstance(model, (str, Path)):
        hf_model, tokenizer, name = _from_pretrained(model, tokenizer, dtype)
    else:
        if tokenizer is None:
            raise NbinterpError(
                "a model object needs its tokenizer: nbinterp.load(hf_model, tokenizer=tokenizer)"
            )
        hf_model, name = model, getattr(model.config, "name_or_path", "") or type(model).__name__
    architecture_for(hf_model)  # fail with a clear message before nnsight wraps it
    if device is not None:
        hf_model = hf_model.to(device)
    hf_model.eval()
    return Model(nnsight.TransformersModel(hf_model, tokenizer=tokenizer), tokenizer, name, remote=remote)


def bundled_card() -> dict:
    """The bundled model's card as data: measured task accuracies and the planted
    circuits found in it (e.g. card["circuits"]["induction"] -> [[layer, head], ...])."""
    return json.loads((BUNDLED_DIR / "card.json").read_text())


def _from_pretrained(source: str | Path, tokenizer: Any, dtype: Any) -> tuple[Any, Any, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(source)
    name = BUNDLED_NAME if path == BUNDLED_DIR else str(source)
    local = path.is_dir()
    kwargs = {"local_files_only": True} if local else {}
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype or "auto", **kwargs)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError) as error:
        where = "directory" if local else "Hugging Face id (is the hub reachable, and the id spelled right?)"
        raise NbinterpError(f"could not load {source!r} as a {where}: {error}") from error
    return hf_model, tokenizer, name


def _load_remote(model_id: Any, timeout: float) -> Model:
    import nnsight
    from nnsight import CONFIG

    if not isinstance(model_id, str):
        raise RemoteError(
            "remote=True needs a Hugging Face model id that NDIF hosts, e.g. "
            "nbinterp.load('meta-llama/Llama-3.1-70B', remote=True); a model built here can't be sent"
        )
    if not (os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY):
        raise RemoteError(
            "remote=True needs an NDIF API key: get one at https://login.ndif.us and set the "
            "NDIF_API_KEY environment variable (or use remote=False to run locally)"
        )
    # The wrapper reads the config and tokenizer from the hub (no weights); a
    # network that drops packets would hang, so bound it.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(nnsight.TransformersModel, model_id, task="text-generation")
    try:
        nn_model = future.result(timeout=timeout)
    except concurrent.futures.TimeoutError as error:
        raise RemoteError(
            f"no answer from the Hugging Face hub within {timeout:.0f} s while preparing {model_id!r} "
            "for NDIF: check the network (remote models need internet access)"
        ) from error
    except Exception as error:  # noqa: BLE001 - any failure here means "can't reach it"
        raise RemoteError(
            f"could not prepare {model_id!r} for NDIF: {type(error).__name__}: {error}. Remote models need "
            "internet access to huggingface.co and ndif.us"
        ) from error
    finally:
        pool.shutdown(wait=False)
    return Model(nn_model, nn_model.tokenizer, model_id, remote=True)
